"""Unlabeled images end to end (issue 27): validate counts them, both loaders mix them in at a set share
with an all-ignore mask (the has-mask flag), resume restarts the mixed stream, a fine-tune that keeps the
denoising term on the target's images reads exactly its budget's masks, and budget 0 is a plain prediction."""
import dataclasses
import json

import numpy as np
import pytest
import torch
import yaml

from hybengine.config import load_config
from hybengine.console import validate_main
from hybengine.data import DatasetError, build_train_loader, labeled_subset
from hybengine.data.noise import folder_sigma
from hybengine.data.simulated import PairSpec, SceneParams, write_pair
from hybengine.data.unlabeled import scan_unlabeled
from hybengine.finetune.runner import evaluate, pretrained_init, run_finetune
from hybengine.objective import has_mask
from hybengine.training_loop import run_training
from hybengine.unet import build_unet

from tiny_run import tiny_overrides


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair") / "data"
    scene = SceneParams(size=16, cells_min=1, cells_max=2, empty_fraction=0.0, cell_radius=(3.0, 5.0))
    write_pair(PairSpec(root=str(root), source_train=6, source_test=2, target_train=6, target_test=2, scene=scene))
    return root


def _over(out, root, **extra):
    return tiny_overrides(out, steps=3, **{"data.root": str(root), "data.crop": 16, "train.ckpt_every": 0,
                                           "train.batch_size": 4, **extra})


def test_loader_mixes_unlabeled_images_at_their_share_and_resumes(pair, tmp_path, capsys):
    target = pair / "target" / "train"
    cfg = load_config(None, _over(tmp_path, pair / "source", **{"data.unlabeled": f"[{target}]",
                                                              "data.unlabeled_share": 0.5}))
    assert validate_main([str(pair / "source"), f"data.unlabeled=[{target}]", "data.unlabeled_share=0.5"]) == 0
    assert "unlabeled images: 6" in capsys.readouterr().out
    loader = build_train_loader(cfg.data, 4, seed=0)
    batches = [next(loader) for _ in range(5)]
    for x, y in batches:
        assert has_mask(y, 255).tolist() == [True, True, False, False]
        assert x.shape == (4, 1, 16, 16)
    # without augmentation a 16-pixel crop is the whole image: the unlabeled samples are the target's images
    plain = dataclasses.replace(cfg.data, augment=False)
    targets = [torch.from_numpy(im) for im in scan_unlabeled(plain).images]
    x, _ = next(build_train_loader(plain, 4, seed=0))
    assert all(any(torch.equal(x[i], t) for t in targets) for i in (2, 3))
    assert not any(torch.equal(x[i], t) for t in targets for i in (0, 1))
    state = loader.state_dict()
    after = [next(loader) for _ in range(2)]
    again = build_train_loader(cfg.data, 4, seed=0)
    again.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(after, [next(again) for _ in range(2)], strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    with pytest.raises(DatasetError, match="unlabeled_share=0.1"):
        build_train_loader(dataclasses.replace(cfg.data, unlabeled_share=0.1), 4, seed=0)


def test_dali_loader_mixes_them_as_the_torch_loader(pair, tmp_path):
    """The same mixed batches from the DALI CPU pipeline as from the torch loader (tests/test_data_dali.py
    covers the pipeline's cases: resume, few-label augmentation, files it cannot read)."""
    pytest.importorskip("nvidia.dali")
    from hybengine.data.dali_pipeline import DaliTrainLoader

    target = pair / "target" / "train"
    cfg = load_config(None, _over(tmp_path, pair / "source", **{"data.unlabeled": f"[{target}]",
                                                              "data.unlabeled_share": 0.5})).data
    torch_loader = build_train_loader(dataclasses.replace(cfg, loader="torch"), 4, seed=2)
    dali_loader = build_train_loader(dataclasses.replace(cfg, loader="dali"), 4, seed=2)
    assert isinstance(dali_loader, DaliTrainLoader)
    for _ in range(4):
        (x, y), (dx, dy) = next(torch_loader), next(dali_loader)
        assert has_mask(dy, 255).tolist() == [True, True, False, False]
        assert torch.equal(x, dx) and torch.equal(y, dy)


def test_unlabeled_split_and_bad_folders_are_reported(pair, tmp_path, capsys):
    root = tmp_path / "data"
    import shutil
    shutil.copytree(pair / "source" / "train", root / "train")
    shutil.copytree(pair / "source" / "test", root / "test")
    shutil.copytree(pair / "target" / "train" / "images", root / "unlabeled" / "images")
    (root / "unlabeled" / "images" / "notes.txt").write_text("x")
    assert validate_main([str(root)]) == 1
    assert "notes.txt: unsupported image extension" in capsys.readouterr().out
    (root / "unlabeled" / "images" / "notes.txt").unlink()
    assert validate_main([str(root)]) == 0
    assert "unlabeled images: 6" in capsys.readouterr().out


@pytest.fixture(scope="module")
def pretrained(pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("pre")
    run_training(load_config(None, _over(out, pair / "source")), console_logging=False)
    return out


@pytest.mark.parametrize("distill", [0.0, 1.0])
def test_finetune_keeping_the_denoising_term_reads_exactly_its_budget_of_masks(pair, pretrained, tmp_path, distill):
    """Every target train mask outside the budget's subset is replaced by a file no reader accepts: a
    fine-tune that read one would fail. It trains on the images: the denoising term is non-zero, or with
    finetune.distill they keep the start's predictions (no denoising term, every sample at sigma_clean)."""
    import shutil
    target = tmp_path / "target"
    shutil.copytree(pair / "target", target)
    pool = sorted(p.stem for p in (target / "train" / "images").iterdir())
    subset = labeled_subset(pool, 2, 1, "any", distinct=True)
    for stem in set(pool) - set(subset):
        (target / "train" / "masks" / f"{stem}.png").write_bytes(b"not a png")
    out = tmp_path / "ft"
    cfg = load_config(None, _over(out, target, **{"finetune.checkpoint": str(pretrained), "finetune.budget": 2,
                                                  "finetune.seed": 1, "finetune.subset_policy": "any",
                                                  "finetune.distinct_subsets": "true",
                                                  "finetune.unlabeled_share": 0.5, "finetune.distill": distill}))
    rec = run_finetune(cfg, console_logging=False, pool=pool)
    assert sorted(rec["labeled"]) == sorted(subset)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged and all((r["denoise"] > 0) == (distill == 0) and r["mask"] > 0 for r in logged if "denoise" in r)


def test_budget_zero_is_a_plain_prediction_with_the_start(pair, pretrained, tmp_path):
    cfg = load_config(None, _over(tmp_path / "z", pair / "target", **{"finetune.checkpoint": str(pretrained),
                                                                       "finetune.budget": 0}))
    rec = run_finetune(cfg, console_logging=False, pool=[])
    assert rec["budget"] == 0 and rec["labeled"] == [] and rec["steps"] == 0
    run_cfg, state = pretrained_init(cfg)
    net = build_unet(run_cfg.model, 1, 3)
    net.load_state_dict(state)
    plain = evaluate(net, run_cfg, "test")
    assert rec["dice"] == plain["dice"] and rec["per_image"] == plain["per_image"]
    assert np.isfinite(rec["mean_fg_dice"])
    # finetune.sigma=estimate: the prediction sigma is the target train images' measured noise level
    est = load_config(None, _over(tmp_path / "e", pair / "target", **{
        "finetune.checkpoint": str(pretrained), "finetune.budget": 0, "finetune.sigma": "estimate"}))
    rec_e = run_finetune(est, console_logging=False, pool=[])
    saved = yaml.safe_load((tmp_path / "e" / "config.yaml").read_text())["objective"]
    assert saved["sigma_clean"] == pytest.approx(folder_sigma(pair / "target", "train", run_cfg.data))
    assert saved["sigma_clean"] > 0.02 and saved["clean_input_noise"] is False
    at_sigma = dataclasses.replace(run_cfg, objective=dataclasses.replace(
        run_cfg.objective, sigma_clean=saved["sigma_clean"], clean_input_noise=False))
    assert rec_e["dice"] == evaluate(net, at_sigma, "test")["dice"]
    with pytest.raises(ValueError, match="budget=0 needs finetune.checkpoint"):
        run_finetune(load_config(None, _over(tmp_path / "s", pair / "target", **{"finetune.budget": 0})),
                     console_logging=False, pool=[])


def test_sweep_runs_budget_zero_for_pretrained_starts_only(pair, pretrained, tmp_path):
    """sweep.budgets with 0: each pretrained start is scored as it is (no step), scratch is not; a rerun
    finds every run done."""
    from hybengine.finetune.sweep import run_sweep

    cfg = load_config(None, _over(tmp_path / "unused", pair / "target", **{
        "sweep.budgets": "[0,1]", "sweep.seeds": "[0]", "sweep.inits": f"[pre={pretrained},scratch]",
        "sweep.out_dir": str(tmp_path / "sweep"), "sweep.runner": "sequential", "train.steps": 2}))
    run_sweep(cfg, console_logging=False)
    done = sorted(p.parent.name for p in (tmp_path / "sweep" / "runs").glob("*/result.json"))
    assert done == ["pre_b0_s0", "pre_b1_s0", "scratch_b1_s0"]
    zero = json.loads((tmp_path / "sweep" / "runs" / "pre_b0_s0" / "result.json").read_text())
    assert zero["steps"] == 0 and zero["labeled"] == []
    assert "| 0 label" in (tmp_path / "sweep" / "table.md").read_text()
    stamp = (tmp_path / "sweep" / "runs" / "pre_b0_s0" / "result.json").stat().st_mtime_ns
    run_sweep(cfg, console_logging=False)  # resume: nothing redone
    assert (tmp_path / "sweep" / "runs" / "pre_b0_s0" / "result.json").stat().st_mtime_ns == stamp


def test_distillation_is_wired_to_the_start_and_refused_without_unlabeled_images(pair, pretrained, tmp_path):
    """The same fine-tune with two distill weights logs the same first mask term (the net is its start: KL 0)
    and other later ones (the teacher's KL is in the loss);
    distill without unlabeled samples, and in a batched group, is refused by name."""
    from hybengine.config import ConfigError
    from hybengine.finetune.batched import check_batchable
    from hybengine.finetune.runner import prepare_finetune

    masks = []
    for w in (1.0, 50.0):
        out = tmp_path / f"d{w}"
        cfg = load_config(None, _over(out, pair / "target", **{
            "finetune.checkpoint": str(pretrained), "finetune.budget": 1, "finetune.unlabeled_share": 0.5,
            "finetune.distill": w, "train.log_every": 1}))
        run_finetune(cfg, console_logging=False)
        masks.append([json.loads(line)["mask"] for line in (out / "metrics.jsonl").read_text().splitlines()
                      if "mask" in line])
    assert masks[0][0] == masks[1][0]  # step 1: the net is still its start, so the KL term is 0
    assert masks[0][-1] != masks[1][-1]
    with pytest.raises(ConfigError, match="finetune.distill=1.0 acts on the unlabeled target images"):
        load_config(None, ["finetune.distill=1.0"])
    with pytest.raises(ValueError, match="finetune.distill must be 0"):
        check_batchable([prepare_finetune(cfg)[0]])


@pytest.mark.parametrize("distill", [0.0, 1.0])
def test_a_saved_finetune_config_prepares_to_itself(pair, pretrained, tmp_path, distill):
    """`finetune --resume` prepares the saved config again (command_config -> prepare_finetune): the
    target images must not be added twice, or the resume is refused as another run. A distill run from
    scratch has no start to keep: it is prepared vanilla, in one place."""
    from hybengine.config import dumps
    from hybengine.finetune.runner import command_config, prepare_finetune

    over = {"finetune.checkpoint": str(pretrained), "finetune.budget": 1, "finetune.unlabeled_share": 0.5,
            "finetune.distill": distill}
    run_cfg, _ = prepare_finetune(load_config(None, _over(tmp_path / "a", pair / "target", **over)))
    again, _ = prepare_finetune(command_config(run_cfg))
    assert dumps(again) == dumps(run_cfg) and len(run_cfg.data.unlabeled) == 1
    if distill:
        scratch, _ = prepare_finetune(load_config(None, _over(tmp_path / "b", pair / "target",
                                                              **{**over, "finetune.checkpoint": ""})))
        assert scratch.data.unlabeled == [] and (scratch.finetune.distill, scratch.finetune.unlabeled_share) == (0, 0)
        with pytest.raises(ValueError, match="set finetune.distill=0 with finetune.new_head"):
            prepare_finetune(load_config(None, _over(tmp_path / "c", pair / "target", **{
                **over, "data.num_classes": 4, "finetune.new_head": "true"})))
