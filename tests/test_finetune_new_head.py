"""Fine-tuning to another label set: finetune.new_head keeps the body and the image rows of the output
conv and starts a new mask head; without it a checkpoint of another K is refused, naming the option."""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from hybengine.config import load_config
from hybengine.finetune.runner import prepare_finetune, run_finetune
from hybengine.finetune.sweep import SweepError, plan_sweep
from hybengine.runtime.checkpoint import load_weights
from hybengine.training_loop import run_training

from tiny_run import DEMO_TARGET, tiny_overrides

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pretrained_k3(tmp_path_factory):
    out = tmp_path_factory.mktemp("pre_k3")
    run_training(load_config(None, tiny_overrides(out, steps=3)), console_logging=False)
    return out


@pytest.fixture(scope="module")
def target_k2(tmp_path_factory):
    """The first demo target tiles with nucleus merged into cell body: a 2-class folder (0, 1)."""
    root = tmp_path_factory.mktemp("k2")
    for split, n in (("train", 4), ("test", 3)):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True)
        for img in sorted((DEMO_TARGET / split / "images").iterdir())[:n]:
            shutil.copy(img, root / split / "images" / img.name)
            mask = np.array(Image.open(DEMO_TARGET / split / "masks" / img.name))
            Image.fromarray(np.minimum(mask, 1).astype(np.uint8)).save(root / split / "masks" / img.name)
    return root


def _cfg(out, root, checkpoint, **extra):
    return load_config(None, tiny_overrides(out, steps=2, **{"data.root": str(root), "data.num_classes": 2,
                                                             "finetune.checkpoint": str(checkpoint), **extra}))


def test_other_label_set_is_refused_naming_the_option(pretrained_k3, target_k2, tmp_path):
    with pytest.raises(ValueError, match=r"data.num_classes=2 .* trained with 3; set finetune.new_head=true"):
        run_finetune(_cfg(tmp_path, target_k2, pretrained_k3), console_logging=False)
    sweep = {"sweep.budgets": "[1]", "sweep.seeds": "[0]", "sweep.inits": f"[hybrid={pretrained_k3}]",
             "sweep.out_dir": str(tmp_path / "sweep")}
    with pytest.raises(SweepError, match="finetune.new_head=true"):
        plan_sweep(_cfg(tmp_path, target_k2, pretrained_k3, **sweep))
    runs, _ = plan_sweep(_cfg(tmp_path, target_k2, pretrained_k3, **sweep, **{"finetune.new_head": "true"}))
    assert len(runs) == 1


def test_new_head_keeps_body_and_image_rows_and_scores(pretrained_k3, target_k2, tmp_path):
    cfg = _cfg(tmp_path, target_k2, pretrained_k3, **{"finetune.new_head": "true", "finetune.budget": 2})
    _, state = prepare_finetune(cfg)
    saved = load_weights(pretrained_k3)["ema"]
    assert state.keys() == saved.keys()
    for name, value in saved.items():
        if not name.startswith("conv_out."):
            assert torch.equal(state[name], value), name
    for name in ("conv_out.weight", "conv_out.bias"):
        assert state[name].shape[0] == 1 + 2 and saved[name].shape[0] == 1 + 3
        assert torch.equal(state[name][:1], saved[name][:1])  # the denoising (image) row is kept
        assert not state[name][1:].any()  # the mask rows start as a fresh U-Net's (zero-initialised)
    assert saved["conv_out.weight"][1:].abs().sum() > 0  # ...which the pretrained ones were not

    rec = run_finetune(cfg, console_logging=False)
    assert len(rec["dice"]) == 2 and all(0.0 <= d <= 1.0 for d in rec["dice"])
    assert len(rec["per_image"]) == 3 and 0.0 <= rec["mean_fg_dice"] <= 1.0


def test_new_head_start_weights_fit_the_batched_runner(pretrained_k3, target_k2, tmp_path):
    from hybengine.finetune.batched import _start_weights

    run_cfg, init = prepare_finetune(_cfg(tmp_path, target_k2, pretrained_k3, **{"finetune.new_head": "true"}))
    start = _start_weights(run_cfg, init, torch.device("cpu"))
    assert start["conv_out.weight"].shape[0] == 1 + 2 and torch.equal(start["conv_out.weight"], init["conv_out.weight"])
