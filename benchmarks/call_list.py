"""The U-Net's real GroupNorm-SiLU calls: the unit of measure of the kernel benches and checks.

`real_calls` builds the U-Net of a preset on the meta device (shapes only, no memory, no compute),
runs one forward at a batch and crop with a forward hook on every `unet.GroupNormSiLU`, and returns
one `GNCall` per call, in call order. Defaults are the training set-up of configs/engine/cuda.yaml:
base preset, batch 32, 128x128, bf16, channels-last, `model.groups` as configured (8 by default).
A benchmark helper (the kernel benches, checks, traffic counts and AOT compiles import it), not part
of the package.

    python benchmarks/call_list.py [--preset base --batch 32 --crop 128]   # one line per distinct call
"""
from __future__ import annotations

import argparse
import dataclasses
from collections import Counter

import repo_imports  # noqa: F401  (before hybengine: works without an install)
import torch

from hybengine import unet
from hybengine.config import Config, ModelConfig, apply_model_preset, load_config


@dataclasses.dataclass(frozen=True)
class GNCall:
    n: int
    c: int
    h: int
    w: int
    groups: int
    channels_last: bool
    dtype: str  # "bfloat16", "float16", "float32"
    modulated: bool  # scale/shift given (ResBlocks' second norm)

    @property
    def elements(self) -> int:
        return self.n * self.c * self.h * self.w

    @property
    def layout(self) -> str:
        return "channels_last" if self.channels_last else "nchw"

    def with_batch(self, n: int) -> GNCall:
        return dataclasses.replace(self, n=n)

    def with_layout(self, channels_last: bool) -> GNCall:
        return dataclasses.replace(self, channels_last=channels_last)


def real_calls(
    preset: str = "base",
    batch: int = 32,
    crop: int = 128,
    dtype: torch.dtype = torch.bfloat16,
    channels_last: bool = True,
    cfg: Config | None = None,  # data/model fields (groups, widths) from here; default: typed defaults
) -> list[GNCall]:
    """Every GroupNorm-SiLU call of one forward of the preset's U-Net, in order (repeats kept)."""

    cfg = cfg or Config()
    model_cfg = dataclasses.replace(cfg.model, preset=preset) if cfg.model.preset != preset else cfg.model
    shapes = _hooked_forward(model_cfg, cfg, batch, crop, dtype, channels_last, "meta")
    # meta convolutions drop channels-last, so each call's layout comes from a real CPU forward of the
    # same net at batch 1 and the smallest crop (a layout does not depend on batch or crop), in float64,
    # which the fused ops always run on their math path (fast also where Triton runs in the interpreter)
    small = _hooked_forward(model_cfg, cfg, 1, 2 * _downsample(model_cfg), torch.float64, channels_last, "cpu")
    if [(c.c, c.groups, c.modulated) for c in shapes] != [(c.c, c.groups, c.modulated) for c in small]:
        raise RuntimeError("call_list: the meta and CPU forwards made different GroupNorm-SiLU calls")
    return [dataclasses.replace(c, channels_last=s.channels_last) for c, s in zip(shapes, small, strict=True)]


def _downsample(model_cfg: ModelConfig) -> int:
    return 2 ** (len(apply_model_preset(model_cfg).channel_mult) - 1)


def _hooked_forward(model_cfg, cfg, batch, crop, dtype, channels_last, device) -> list[GNCall]:
    torch.manual_seed(0)
    with torch.device(device):
        net = unet.build_unet(model_cfg, cfg.data.image_channels, cfg.data.num_classes).to(dtype)
        x = torch.randn(batch, cfg.data.image_channels, crop, crop, dtype=dtype)
        c_noise = torch.zeros(batch, dtype=torch.float32)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    calls: list[GNCall] = []

    def hook(module, args, kwargs, _out):
        t = args[0]
        scale = args[1] if len(args) > 1 else kwargs.get("scale")
        n, c, h, w = t.shape
        cl = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
        calls.append(GNCall(n, c, h, w, module.groups, cl, str(t.dtype).removeprefix("torch."), scale is not None))

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in net.modules()
               if isinstance(m, unet.GroupNormSiLU)]
    try:
        with torch.no_grad():
            net(x, c_noise)
    finally:
        for h in handles:
            h.remove()
    return calls


def summary(calls: list[GNCall]) -> str:
    """One line per distinct call (count x shape), then totals."""
    counts = Counter(calls)
    total = sum(c.elements for c in calls)
    lines = [f"{k:>3} x N={c.n} C={c.c} H={c.h} W={c.w} G={c.groups} CG={c.c // c.groups} {c.layout} {c.dtype}"
             f"{' mod' if c.modulated else ''}  ({k * c.elements / total:.1%} of elements)"
             for c, k in counts.items()]
    lines.append(f"{len(calls)} calls, {len(counts)} distinct, {total / 1e6:.1f} M elements per forward")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="YAML config whose model/data fields to use")
    p.add_argument("--preset", default="base")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--nchw", action="store_true", help="NCHW instead of channels-last")
    a = p.parse_args(argv)
    cfg = load_config(a.config) if a.config else Config(model=ModelConfig())
    print(summary(real_calls(a.preset, a.batch, a.crop, getattr(torch, a.dtype), not a.nchw, cfg)))


if __name__ == "__main__":
    main()
