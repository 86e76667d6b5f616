"""Take a trained model out of the engine: safetensors weights, a torch.export program, ONNX.

    hybengine export RUN [--out RUN/export] [--weights ema|raw] [--tile T] [--onnx]

Writes into --out (default `<RUN>/export`; a folder that already holds an export is refused):

    model.safetensors  the U-Net's float32 weights; metadata "config" = the run's resolved config (JSON)
                       and "weights" = ema|raw. `load_safetensors` rebuilds the net; any safetensors
                       reader gets the tensors.
    segment.pt2        `torch.export` program of the segmentation function at the prediction noise level
                       (objective.sigma_clean): normalised images (B, I, T, T) float32 -> class
                       probabilities (B, K, T, T), B free, T = the tile (default the training crop, the
                       size the tiled predictor feeds). `torch.export.load(path).module()(x)` runs it,
                       without hybengine: the graph holds plain ATen ops (the reference op bodies).
    segment.onnx       the same function as ONNX (--onnx; needs `pip install hybengine[onnx]`).
    export.json        the contract (input, output, normalisation, tile, sigma) and, per artefact, the
                       largest difference of its output from the engine's own prediction on a random
                       batch, which must stay within TOLERANCE or the export fails.

Inputs are normalised as training normalised them (data.normalize, recorded in export.json:
"percentile" maps each image's 0.5/99.5 percentiles to -1/1 and clips to +-1.5; "dtype" maps the
dtype's range to -1/1; hybengine/data/image_io.py). Whole images: tile them as hybengine/inference.py does.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from . import ops
from .cli import add_debug, guarded
from .config import Config, config_from_dict, to_dict
from .inference import Prediction, batch_probs, load_model
from .objective import predict_logits
from .runtime.atomic import atomic_write_text
from .unet import UNet, build_unet

TOLERANCE = 1e-4  # max |p_export - p_engine| over the probabilities: float32 graphs of the same math
ONNX_OPSET = 18


class Segmenter(torch.nn.Module):
    """The segmentation function a user runs: normalised images (B, I, H, W) -> softmax probabilities
    (B, K, H, W) at the fixed clean noise level; H, W multiples of the U-Net's downsample factor."""

    def __init__(self, net: UNet, sigma_clean: float, sigma_data: float):
        super().__init__()
        self.net, self.sigma_clean, self.sigma_data = net, sigma_clean, sigma_data

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return predict_logits(self.net, x, self.sigma_clean, self.sigma_data).float().softmax(dim=1)


def save_safetensors(net: UNet, cfg: Config, weights: str, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().float().contiguous().cpu() for k, v in net.state_dict().items()}
    save_file(state, str(path), metadata={"config": json.dumps(to_dict(cfg)), "weights": weights,
                                          "format": "hybengine-unet"})


def load_safetensors(path: str | Path, device: torch.device | str = "cpu") -> tuple[UNet, Config]:
    """(net in eval mode, its Config) from a model.safetensors that `export` wrote."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "config" not in meta:
        raise ValueError(f"{path}: no 'config' in its safetensors metadata; was it written by `hybengine export`?")
    cfg = config_from_dict(json.loads(meta["config"]))
    net = build_unet(cfg.model, cfg.data.image_channels, cfg.data.num_classes)
    net.load_state_dict(load_file(str(path)))
    return net.to(device).eval(), cfg


def _max_diff(a: torch.Tensor, b: torch.Tensor, what: str) -> float:
    diff = float((a.float() - b.float()).abs().max())
    if not diff <= TOLERANCE:
        raise RuntimeError(f"{what} differs from the engine's prediction by {diff:.3g} > {TOLERANCE}")
    return diff


def export_run(run: str, out: str | Path | None = None, weights: str = "ema", tile: int = 0,
               onnx: bool = False) -> dict:
    """Writes the export folder (module docstring) and returns what export.json records."""
    out = Path(out) if out else Path(run) / "export"
    if (out / "export.json").exists():
        raise ValueError(f"{out} already holds an export; remove it or pass --out NEW_FOLDER")
    out.mkdir(parents=True, exist_ok=True)
    net, cfg = load_model(run, weights, torch.device("cpu"))
    tile = tile or cfg.data.crop
    if tile % net.downsample_factor:
        raise ValueError(f"--tile {tile} must be a multiple of {net.downsample_factor}")
    o = cfg.objective
    x = torch.randn(2, cfg.data.image_channels, tile, tile, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the engine's own prediction, with the ops this machine runs
        expected = batch_probs(net, x, o.sigma_clean, o.sigma_data, Prediction("tiled", tile, 0.0, 2, False, "fp32"))
    record: dict = {
        "run": str(run), "weights": weights, "tolerance": TOLERANCE,
        "input": {"shape": ["B", cfg.data.image_channels, tile, tile], "dtype": "float32",
                  "normalize": cfg.data.normalize},
        "output": {"shape": ["B", cfg.data.num_classes, tile, tile], "dtype": "float32",
                   "what": "softmax class probabilities"},
        "sigma_clean": o.sigma_clean, "sigma_data": o.sigma_data, "files": {},
    }

    save_safetensors(net, cfg, weights, out / "model.safetensors")
    reloaded, _ = load_safetensors(out / "model.safetensors")
    with torch.no_grad():
        record["files"]["model.safetensors"] = {"max_abs_diff": _max_diff(
            Segmenter(reloaded, o.sigma_clean, o.sigma_data)(x), expected, "model.safetensors")}

    # The programs trace the reference ops (plain ATen): they run without hybengine's custom ops.
    plain = build_unet(cfg.model, cfg.data.image_channels, cfg.data.num_classes, ops.REFERENCE)
    plain.load_state_dict(net.state_dict())
    segmenter = Segmenter(plain.eval(), o.sigma_clean, o.sigma_data).eval()
    with torch.no_grad():
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.export.export(segmenter, (x,), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, out / "segment.pt2")
    with torch.no_grad():
        got = torch.export.load(out / "segment.pt2").module()(x)
    record["files"]["segment.pt2"] = {"max_abs_diff": _max_diff(got, expected, "segment.pt2")}

    if onnx:
        record["files"]["segment.onnx"] = {"max_abs_diff": _export_onnx(program, x, expected, out / "segment.onnx")}
    atomic_write_text(out / "export.json", json.dumps(record, indent=2))
    return record


def _export_onnx(program: torch.export.ExportedProgram, x: torch.Tensor, expected: torch.Tensor, path: Path) -> float:
    """segment.onnx translated from the exported program (torch's dynamo exporter), checked with onnxruntime."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ValueError("--onnx needs onnx, onnxscript and onnxruntime: pip install 'hybengine[onnx]'") from e
    torch.onnx.export(program, (x,), str(path), input_names=["x"], output_names=["probs"],
                      opset_version=ONNX_OPSET, dynamo=True, external_data=False, verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
    return _max_diff(got, expected, "segment.onnx")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder or snapshot folder")
    p.add_argument("--out", help="export folder (default: RUN/export)")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema")
    p.add_argument("--tile", type=int, default=0, help="spatial size of the exported programs (default: data.crop)")
    p.add_argument("--onnx", action="store_true", help="also write segment.onnx (needs hybengine[onnx])")
    add_debug(p)
    args = p.parse_args(argv)

    def run() -> None:
        record = export_run(args.run, args.out, args.weights, args.tile, args.onnx)
        for name, check in record["files"].items():
            print(f"wrote {name}: max |difference| from the engine {check['max_abs_diff']:.2e} (<= {TOLERANCE})")

    return guarded("export", args.debug, run)


if __name__ == "__main__":
    sys.exit(main())

