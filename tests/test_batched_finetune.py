"""Batched fine-tunes (stacked weights, vmap) against the same runs done one by one; the auto choice."""
import dataclasses

import pytest
import torch
from test_sweep import small_target

from hybengine.config import load_config
from hybengine.finetune import sweep as sweep_mod
from hybengine.finetune.batched import NonFiniteMembersError, _clip_per_member, check_batchable, run_batched
from hybengine.finetune.runner import evaluate, prepare_finetune
from hybengine.finetune.sweep import choose_runner
from hybengine.training_loop import run_training

from tiny_run import tiny_overrides


def test_clip_per_member_matches_clip_grad_norm():
    g = torch.Generator().manual_seed(0)
    stacked = [torch.randn(3, 4, 5, generator=g, requires_grad=True),
               torch.randn(3, 7, generator=g, requires_grad=True)]
    for p in stacked:
        p.grad = torch.randn(p.shape, generator=g) * torch.tensor([0.01, 1.0, 10.0]).view(-1, *[1] * (p.dim() - 1))
    expect = []
    for r in range(3):
        grads = [p.grad[r].clone() for p in stacked]
        params = [torch.zeros_like(x, requires_grad=True) for x in grads]
        for q, gr in zip(params, grads, strict=True):
            q.grad = gr
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        expect.append([q.grad for q in params])
    _clip_per_member(stacked, 1.0)
    for r in range(3):
        for p, e in zip(stacked, expect[r], strict=True):
            torch.testing.assert_close(p.grad[r], e)
    assert stacked[0].grad[0].norm() < 0.1  # member 0 was under the limit: untouched, not scaled up


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    root = tmp_path_factory.mktemp("batched")
    run_training(load_config(None, tiny_overrides(root / "pre", steps=2)), console_logging=False)
    target = small_target(root / "target")
    out = []
    for i, (ckpt, budget, seed) in enumerate([("", 1, 0), (str(root / "pre"), 2, 1), ("", 3, 2)]):
        over = tiny_overrides(root / f"m{i}", steps=4, **{
            "data.root": str(target), "finetune.checkpoint": ckpt, "finetune.budget": budget,
            "finetune.seed": seed, "train.ckpt_every": 0})
        out.append(prepare_finetune(load_config(None, over)))
    return out


@pytest.fixture
def full_fp32():
    """On a GPU, convolutions default to TF32; equality within fp32 tolerance needs full fp32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.slow
def test_batched_equals_one_by_one(members, full_fp32):
    one_by_one = [run_training(c, init_weights=w, console_logging=False).best_net for c, w in members]
    batched = run_batched(members)
    for c, a, b in zip([c for c, _ in members], one_by_one, batched, strict=True):
        sa, sb = a.state_dict(), b.net.state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            torch.testing.assert_close(sb[k], sa[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
        ma, mb = evaluate(a, c, "test"), evaluate(b.net, c, "test")
        assert mb["dice"] == pytest.approx(ma["dice"], abs=1e-3)
    # training moved the weights (a comparison of untouched weights would prove nothing)
    w0 = members[1][1]
    assert max((one_by_one[1].state_dict()[k].cpu() - w0[k]).abs().max().item() for k in w0) > 1e-4


def test_only_like_runs_batch_together(members):
    c0, _ = members[0]
    check_batchable([c for c, _ in members])
    longer = dataclasses.replace(c0, train=dataclasses.replace(c0.train, steps=5))
    with pytest.raises(ValueError, match="differ in more than"):
        check_batchable([c0, longer])
    accum = dataclasses.replace(c0, train=dataclasses.replace(c0.train, grad_accum=2))
    with pytest.raises(ValueError, match="grad_accum"):
        check_batchable([accum])


def test_auto_choice_by_measurement(members, tmp_path, monkeypatch):
    c0, _ = members[0]
    device = torch.device("cpu")
    assert choose_runner("sequential", c0, 12, device) == ("sequential", "sweep.runner=sequential")
    assert choose_runner("auto", c0, 1, device)[0] == "sequential"
    for times, expect in (((1.0, 1.5), "batched"), ((1.0, 1.7), "sequential")):  # R=2: 1.33x vs 1.18x
        monkeypatch.setattr(sweep_mod, "time_steps", lambda *a, t=times, **k: t)
        runner, reason = choose_runner("auto", c0, 2, device, tmp_path / f"{expect}.json")
        assert runner == expect and "ms batched" in reason and (tmp_path / f"{expect}.json").is_file()
    monkeypatch.setattr(sweep_mod, "time_steps", lambda *a, **k: pytest.fail("should reuse runner.json"))
    runner, reason = choose_runner("auto", c0, 2, device, tmp_path / "batched.json")
    assert runner == "batched" and "measured earlier" in reason
    # runs the batched runner refuses are not timed: sequential, and the reason names why
    hybrid = dataclasses.replace(c0, objective=dataclasses.replace(c0.objective, mode="hybrid"))
    runner, reason = choose_runner("auto", hybrid, 2, device, tmp_path / "refused.json")
    assert runner == "sequential" and "objective.mode must be supervised" in reason


def test_real_measurement_runs(members):
    c0, _ = members[0]
    seq, bat = sweep_mod.time_steps(c0, 2, torch.device("cpu"), repeats=1)
    assert seq > 0 and bat > 0


def test_a_non_finite_member_stops_the_group(members, tmp_path):
    """A member whose loss is not finite is flagged on the device, read with the metrics, and stops the
    group naming it and the step (the sweep then reruns the group in the loop, under the loop's rule)."""
    (c0, w0), (c1, w1) = members[0], members[1]
    short = lambda c, name: dataclasses.replace(c, train=dataclasses.replace(
        c.train, steps=2, log_every=2, out_dir=str(tmp_path / name)))
    broken = {k: v.clone() for k, v in w1.items()}
    broken["conv_in.weight"].fill_(float("nan"))
    with pytest.raises(NonFiniteMembersError) as err:
        run_batched([(short(c0, "a"), w0), (short(c1, "b"), broken)])
    assert (err.value.members, err.value.step) == ([1], 1)
