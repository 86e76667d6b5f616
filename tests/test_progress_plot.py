"""Every run draws its curves into progress.png; TensorBoard events only where asked for and installed."""
import importlib.util

import pytest
from PIL import Image

from hybengine.config import load_config
from hybengine.runtime.progress_plot import read_records, render
from hybengine.training_loop import run_training

from tiny_run import tiny_overrides


def test_run_folder_holds_progress_png(tmp_path):
    pytest.importorskip("matplotlib")
    on = {"train.tensorboard": "true", "train.plot": "true"}
    run_training(load_config(None, tiny_overrides(tmp_path, steps=4, **on)), console_logging=False)
    with Image.open(tmp_path / "progress.png") as im:
        assert im.format == "PNG" and im.size == (1200, 320)  # three panels: loss terms, images/s, lr
    assert [r["step"] for r in read_records(tmp_path / "metrics.jsonl")] == [2, 4]
    events = list((tmp_path / "tensorboard").glob("events.*"))
    assert bool(events) == (importlib.util.find_spec("tensorboard") is not None)
    run_training(load_config(None, tiny_overrides(tmp_path / "off", steps=2)), console_logging=False)
    assert (tmp_path / "off" / "metrics.jsonl").is_file() and not (tmp_path / "off" / "progress.png").exists()


def test_validation_dice_gets_a_panel_and_torn_lines_are_skipped(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [{"step": s, "loss": 1 / s, "mask": 1 / s, "images_per_s": 10.0, "lr": 1e-3, "val_dice": s / 10}
            for s in (1, 2, 3)]
    png = render(rows, "fine-tune")
    (tmp_path / "p.png").write_bytes(png)
    with Image.open(tmp_path / "p.png") as im:
        assert im.size == (1600, 320)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')
    assert read_records(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 0.5}]
    assert render([], "empty") is None
