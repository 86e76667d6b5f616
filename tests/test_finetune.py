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


def test_finetune_resume_after_kill_is_exact(pretrained, tmp_path):  # issue 26 item 2, issue 28
    """A fine-tune killed at step 4 (snapshot at 3), continued with `finetune --resume RUN` alone, ends with
    the weights and result of an uninterrupted one, bit for bit."""
    import shutil
    import signal

    import torch

    from hybengine.finetune import __main__ as finetune_main
    from hybengine.runtime.checkpoint import load_weights

    from tiny_run import run_cli

    target = tmp_path / "target"  # 4 train and 1 test frame of the demo target: a fast evaluation
    for split, n in (("train", 4), ("test", 1)):
        for sub in ("images", "masks"):
            (target / split / sub).mkdir(parents=True)
        for img in sorted((DEMO_TARGET / split / "images").iterdir())[:n]:
            shutil.copy(img, target / split / "images" / img.name)
            shutil.copy(DEMO_TARGET / split / "masks" / img.name, target / split / "masks" / img.name)
    extra = {"data.root": str(target), "finetune.checkpoint": str(pretrained), "finetune.budget": 2,
             "finetune.steps_per_label": 1,  # train.steps 4 + 1 * 2 = 6: the resume must not grow it again
             "train.threads": 2}  # the subprocess and this one round alike whatever count this worker has
    threads_before = torch.get_num_threads()
    straight = run_finetune(load_config(None, tiny_overrides(tmp_path / "straight", steps=4, **extra)),
                            console_logging=False)
    killed = run_cli(["-m", "hybengine.finetune", *tiny_overrides(tmp_path / "ft", steps=4, **extra)],
                     env={"HYBENGINE_KILL_AT_STEP": "4"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (tmp_path / "ft" / "result.json").exists()
    assert finetune_main.main(["--resume", str(tmp_path / "ft")]) == 0
    a, b = load_weights(tmp_path / "straight"), load_weights(tmp_path / "ft")
    assert a["step"] == b["step"] == 6
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"
    resumed = json.loads((tmp_path / "ft" / "result.json").read_text())
    assert resumed["dice"] == straight["dice"] and resumed["steps"] == 6
    assert torch.get_num_threads() == threads_before  # train.threads held for each run only


def test_evaluation_holds_train_threads(pretrained, tmp_path, monkeypatch):
    """The test-split prediction runs at train.threads as the training did (two sweep shards on two cores
    with torch's default count each oversubscribed the 2-core dev host: a zero-shot took 7-50 s instead of
    about 3 s; docs/results/scratch_assay_guarded/logs)."""
    import torch

    from hybengine.finetune import runner
    seen = []
    predict = runner.predict_probs

    def counting(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return predict(*args, **kwargs)
    monkeypatch.setattr(runner, "predict_probs", counting)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_finetune(_ft_cfg(tmp_path, **{"finetune.checkpoint": str(pretrained), "finetune.budget": 0,
                                          "train.threads": 1}), console_logging=False)
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2  # the caller's count back
    finally:
        torch.set_num_threads(before)
