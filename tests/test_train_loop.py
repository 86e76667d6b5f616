import json

import pytest
import torch

from hybengine.config import ConfigError, load_config
from hybengine.training_loop import run_training

from tiny_run import tiny_overrides

pytestmark = pytest.mark.slow


def test_bf16_accumulation_channels_last(tmp_path):
    cfg = load_config(None, tiny_overrides(tmp_path, steps=2, **{
        "train.precision": "bf16", "train.grad_accum": 2, "model.channels_last": "true", "train.log_every": 1}))
    result = run_training(cfg, console_logging=False)
    assert result.step == 2
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2] and all(r["peak_mem_mb"] > 0 for r in recs)
    assert result.net.conv_in.weight.dtype == torch.float32  # autocast keeps fp32 master weights
    assert not torch.equal(result.ema_net.conv_in.weight, result.net.conv_in.weight)


def test_crop_must_fit_the_network(tmp_path):
    """Refused by the config check itself (so --dry-run shows it), before a run starts."""
    with pytest.raises(ConfigError, match="data.crop=33 must be a multiple of 2"):
        load_config(None, tiny_overrides(tmp_path, **{"data.crop": 33}))
    assert not any(tmp_path.iterdir())


def test_pretraining_runs_on_the_dali_loader(tmp_path):
    pytest.importorskip("nvidia.dali")
    cfg = load_config(None, tiny_overrides(tmp_path, steps=2, **{"data.loader": "dali", "train.log_every": 1}))
    result = run_training(cfg, console_logging=False)
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert result.step == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in recs)
