"""A ZeRO-2 run of 2 gloo CPU ranks resumed on 1 and on 4 ranks (hybengine/runtime/reshard.py), through the
real `deepspeed` launcher and DeepSpeed's universal checkpoint. The 1-rank resumes run as one process
without the launcher (train.backend=deepspeed sets up its own world of one, hybengine/runtime/distributed.py):
the launcher would add two more python starts (its runner and its per-node launcher) to a run of seconds."""
import json
import re
import shutil

import pytest
from test_deepspeed import _free_port, _launcher

from hybengine.runtime.checkpoint import _deepspeed_globals, safe_load

from tiny_run import run_cli, tiny_overrides

pytestmark = pytest.mark.slow
deepspeed = pytest.importorskip("deepspeed")

K, N = 2, 4  # stopped after step K (its snapshot), resumed to step N
RUN = {"train.engine": "deepspeed", "train.deepspeed_config": "configs/deepspeed/zero2.json", "data.crop": 16,
       "train.log_every": 1, "train.ckpt_every": K, "train.keep_last": 2, "train.threads": 1}


def _launch(ranks: int, out, resume=None, **extra):
    train = ["hybengine/train.py", *tiny_overrides(out, steps=N, **{**RUN, **extra}),
             *(["--resume", str(resume)] if resume else [])]
    if ranks == 1:
        r = run_cli(train, env={"MASTER_PORT": str(_free_port())}, timeout=600)
    else:
        r = run_cli([_launcher(), "--num_gpus", str(ranks), "--master_port", str(_free_port()), *train], timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return r.stdout + r.stderr


def _losses(out) -> dict[int, float]:
    return {rec["step"]: rec["loss"] for rec in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def _moment_sum(snap) -> tuple[int, float]:
    """Adam step and sum of exp_avg**2 over the ZeRO partitions of a snapshot, read from its files."""
    total, steps = 0.0, set()
    for file in sorted(snap.glob("zero_pp_rank_*_optim_states.pt")):
        zero = safe_load(file, _deepspeed_globals())["optimizer_state_dict"]
        base = zero.get("base_optimizer_state") or zero["optimizer_state_dict"]  # ZeRO-1/2, ZeRO-3
        base = base["state"]
        for state in base.values():
            steps.add(int(state["step"]))
            total += float(state["exp_avg"].double().square().sum())
    assert len(steps) == 1, steps
    return steps.pop(), total


@pytest.mark.parametrize(("stage", "resize"), [(2, ((1, 4), (4, 1))), (3, ((1, 4),))], ids=["zero2", "zero3"])
def test_two_ranks_resume_on_one_and_on_four(tmp_path, stage, resize):
    """The uninterrupted 2-rank run writes snapshots at K and N; copies of its folder cut back to the
    step-K snapshot are resumed on 1 and on 4 ranks to N. What holds:
    - global batch: 2 ranks x 2 images = 1 x 4 = 4 x 1, said in the run log;
    - optimizer state: the resumed ranks' Adam step and sum of exp_avg**2 (all partitions) equal the
      step-K snapshot's, read from its 2 partition files, and their fp32 weights' sum of squares equals
      that of the snapshot's full weights (fp32, only summation order differs: rel 1e-5);
    - data position: the resumed run starts at item K*4 of the one global stream and ends at N*4,
      so no item is repeated or skipped (the items and their augmentation are those of the 2-rank run);
    - loss curve: the losses of steps K+1..N are within 25% of the 2-rank run's. Not equal: each rank
      draws its own noise levels and noise (per-rank generators), which is the spread of a tiny run's
      per-step loss; a jump back to a fresh model's loss would exceed it.
    ZeRO-3 (which partitions the weights too; no EMA) is resumed on 1 rank only, to keep the suite short."""
    extra = {"train.deepspeed_config": f"configs/deepspeed/zero{stage}.json",
             **({"train.ema_halflife_steps": 0} if stage == 3 else {})}
    ref = tmp_path / "two"
    _launch(2, ref, **extra)
    ref_losses = _losses(ref)
    snap_k = ref / "checkpoints" / f"step_{K:08d}"
    adam_step, moments = _moment_sum(snap_k)
    assert adam_step == K and moments > 0
    weights_sq = sum(float(v.double().square().sum()) for v in safe_load(snap_k / "weights.pt")["model"].values())

    for ranks, batch in resize:
        out = tmp_path / f"on{ranks}"
        shutil.copytree(ref, out)
        shutil.rmtree(out / "checkpoints" / f"step_{N:08d}")
        (out / "checkpoints" / "latest").write_text(snap_k.name + "\n")
        log = _launch(ranks, out, resume=out, **extra)
        flat = " ".join(log.split())  # rich wraps long lines
        assert f"world size 2 -> {ranks}, per-rank batch 2 -> {batch}, accumulation 1 -> 1, global batch 4" in flat
        assert f"data position carried: item {K * 4} of the global stream" in flat
        m = re.search(r"optimizer state carried: Adam step (\d+), sum of exp_avg\^2 (\S+), of fp32 weights\^2 (\S+)",
                      flat)
        assert m, log[-4000:]
        assert int(m[1]) == K and float(m[2]) == pytest.approx(moments, rel=1e-5)
        assert float(m[3]) == pytest.approx(weights_sq, rel=1e-5)
        assert not list((out / "checkpoints").glob("universal_*")), "the conversion is left behind"
        final = out / "checkpoints" / f"step_{N:08d}"
        assert len(list(final.glob("rank*_state.pt"))) == ranks
        loader = safe_load(final / "rank0_state.pt")["loader"]
        assert loader["batch"] * batch * ranks == N * 4  # items consumed: N global batches, none twice
        assert _moment_sum(final)[0] == N  # the Adam step count went on from K
        losses = _losses(out)
        assert sorted(losses) == list(range(1, N + 1))
        for step in range(K + 1, N + 1):
            assert losses[step] == pytest.approx(ref_losses[step], rel=0.25), (ranks, losses, ref_losses)
        print(f"ZeRO-{stage} on {ranks} rank(s): losses {[round(losses[s], 4) for s in range(K + 1, N + 1)]}, "
              f"2 ranks {[round(ref_losses[s], 4) for s in range(K + 1, N + 1)]}")


def test_global_batch_and_data_position_rescale():
    from hybengine.runtime.reshard import rescale_batch, rescale_loader_state

    assert rescale_batch(2, 1, 2, 1) == (4, 1)
    assert rescale_batch(2, 1, 2, 4) == (1, 1)
    assert rescale_batch(2, 3, 2, 3) == (2, 2)  # 4 images a micro-step do not split over 3: accumulation does
    with pytest.raises(ValueError, match="global batch of 4 images .* which 3 ranks cannot share evenly"):
        rescale_batch(2, 1, 2, 3)
    assert rescale_loader_state({"epoch": 1, "batch": 6}, 4, 2) == {"epoch": 1, "batch": 12}
    with pytest.raises(ValueError, match="item 12 of the global stream"):
        rescale_loader_state({"epoch": 0, "batch": 3}, 4, 8)
