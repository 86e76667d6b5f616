"""The shared learning-rate schedule: warm-up, then constant or cosine decay to min_lr_ratio."""
import math

import pytest

from hybengine.config import load_config
from hybengine.schedule import learning_rate


def test_warmup_then_constant():
    cfg = load_config(None, ["optim.lr=0.01", "optim.warmup_steps=4", "optim.decay=constant", "train.steps=20"])
    assert [learning_rate(cfg, s) for s in (1, 2, 4, 5, 20)] == pytest.approx([0.0025, 0.005, 0.01, 0.01, 0.01])


def test_warmup_then_cosine():
    cfg = load_config(None, ["optim.lr=0.01", "optim.warmup_steps=4", "optim.decay=cosine",
                             "optim.min_lr_ratio=0.1", "train.steps=24"])
    assert learning_rate(cfg, 2) == pytest.approx(0.005)
    assert learning_rate(cfg, 4) == pytest.approx(0.01)
    assert learning_rate(cfg, 14) == pytest.approx(0.01 * (0.1 + 0.9 * 0.5))  # half way: cos(pi/2) = 0
    assert learning_rate(cfg, 24) == pytest.approx(0.001)  # the floor at the last step
    lrs = [learning_rate(cfg, s) for s in range(4, 25)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    assert not math.isnan(learning_rate(cfg, 30))  # past the end: stays at the floor
    assert learning_rate(cfg, 30) == pytest.approx(0.001)


def test_finetune_steps_grow_with_the_budget(tmp_path):
    from hybengine.data.simulated import PairSpec, SceneParams, write_pair
    from hybengine.finetune.runner import prepare_finetune

    write_pair(PairSpec(root=str(tmp_path), source_train=1, source_test=1, target_train=6, target_test=1,
                        scene=SceneParams(size=16, cell_radius=(3.0, 5.0), empty_fraction=0.0)))
    steps = []
    for budget in (1, 5):
        cfg = load_config(None, [f"data.root={tmp_path / 'target'}", "train.steps=10",
                                 "finetune.steps_per_label=3", f"finetune.budget={budget}"])
        run_cfg, _ = prepare_finetune(cfg)
        steps.append(run_cfg.train.steps)
    assert steps == [13, 25]
