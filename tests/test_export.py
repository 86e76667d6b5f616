"""hybengine export: safetensors weights, a torch.export program and (where installed) ONNX, each checked
against the engine's own prediction within export.TOLERANCE, and reloaded here without the engine's ops."""
import importlib.util
import json

import pytest
import torch

from hybengine import export as export_cli
from hybengine.config import load_config
from hybengine.export import TOLERANCE, load_safetensors
from hybengine.inference import Prediction, batch_probs, load_model
from hybengine.training_loop import run_training

from tiny_run import tiny_overrides


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    run_training(load_config(None, tiny_overrides(out, steps=2)), console_logging=False)
    return out


ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))  # the dev extra has them


def test_export_round_trips_and_never_overwrites(run, tmp_path, capsys):
    """One export (with ONNX where the extra is installed), then each artefact read back here."""
    out = tmp_path / "exp"
    assert export_cli.main([str(run), "--out", str(out), *(["--onnx"] if ONNX else [])]) == 0
    assert "segment.pt2" in capsys.readouterr().out
    record = json.loads((out / "export.json").read_text())
    assert set(record["files"]) == {"model.safetensors", "segment.pt2", *(["segment.onnx"] if ONNX else [])}
    assert all(f["max_abs_diff"] <= TOLERANCE for f in record["files"].values())
    # reloaded on our side too: the program at another batch size, the weights bit-exact
    net, cfg = load_model(str(run))
    o = cfg.objective
    x = torch.randn(3, 1, 32, 32)
    program = torch.export.load(out / "segment.pt2")
    with torch.no_grad():
        expected = batch_probs(net, x, o.sigma_clean, o.sigma_data, Prediction("tiled", 32, 0.0, 3, False, "fp32"))
        torch.testing.assert_close(program.module()(x), expected, atol=TOLERANCE, rtol=0)
    assert "hybengine" not in str(program.graph)  # plain ATen ops: none of the engine's custom ops
    reloaded, cfg2 = load_safetensors(out / "model.safetensors")
    assert cfg2 == cfg
    for k, v in net.state_dict().items():
        assert torch.equal(reloaded.state_dict()[k], v), k
    if ONNX:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out / "segment.onnx"), providers=["CPUExecutionProvider"])
        torch.testing.assert_close(torch.from_numpy(session.run(None, {"x": x.numpy()})[0]), expected,
                                   atol=TOLERANCE, rtol=0)
    assert export_cli.main([str(run), "--out", str(out)]) == 2
    assert "already holds an export" in capsys.readouterr().err
