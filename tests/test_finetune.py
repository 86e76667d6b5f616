import json

import pytest

from hybengine.config import load_config
from hybengine.data import DatasetError
from hybengine.finetune.runner import run_finetune
from hybengine.training_loop import run_training

from tiny_run import DEMO_TARGET, tiny_overrides

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pre")
    run_training(load_config(None, tiny_overrides(out, steps=3)), console_logging=False)
    return out


def _ft_cfg(out, **extra):
    over = tiny_overrides(out, steps=2, **{"data.root": str(DEMO_TARGET), **extra})
    return load_config(None, over)


def test_finetune_from_checkpoint_writes_metrics(pretrained, tmp_path):
    rec = run_finetune(_ft_cfg(tmp_path, **{"finetune.checkpoint": str(pretrained), "finetune.budget": 2,
                                            "finetune.seed": 1}), console_logging=False)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["budget"] == 2 and len(saved["labeled"]) == 2 and saved["init"] == str(pretrained)
    assert len(saved["dice"]) == 3 and len(saved["per_image"]) == 24  # 3 test frames x 8 tiles
    assert all(0.0 <= d <= 1.0 for d in saved["dice"]) and rec["mean_fg_dice"] == saved["mean_fg_dice"]


def test_finetune_checks_architecture_and_budget(pretrained, tmp_path):
    with pytest.raises(ValueError, match="data.num_classes"):
        run_finetune(_ft_cfg(tmp_path, **{"finetune.checkpoint": str(pretrained), "data.num_classes": 4}),
                     console_logging=False)
    with pytest.raises(DatasetError, match="budget 99"):
        run_finetune(_ft_cfg(tmp_path, **{"finetune.budget": 99}), console_logging=False)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        run_finetune(_ft_cfg(tmp_path, **{"finetune.checkpoint": str(tmp_path / "nowhere")}),
                     console_logging=False)
