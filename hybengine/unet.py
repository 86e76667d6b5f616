"""Noise-conditioned U-Net in the ADM/EDM style with a joint image + mask head.

    F = UNet(c_in * x_n, c_noise)          x_n: (B, I, H, W), c_noise: (B,)  ->  F: (B, I+K, H, W)

Residual blocks are GroupNorm-SiLU -> conv -> GroupNorm-modulation-SiLU -> conv, the modulation
(per-sample scale and shift) coming from the noise embedding. Every norm-(modulation)-SiLU goes
through `GroupNormSiLU`, which calls `ops.group_norm_silu` of the `Ops` the net was built with
(hybengine/ops.py): where the fused kernel plugs in; `UpsampleConv` likewise calls `ops.upsample_conv`.
Every block keeps that `Ops` as a plain attribute, so torch.compile traces through it and two nets
built with different ops never see each other's. The network knows nothing of the noise schedule
(see objective.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig, apply_model_preset
from .ops import REFERENCE, Ops


class GroupNormSiLU(nn.Module):
    """GroupNorm + affine + optional per-sample modulation + SiLU, through `ops.group_norm_silu`."""

    def __init__(self, channels: int, groups: int, ops: Ops, eps: float = 1e-5):
        super().__init__()
        self.groups, self.eps, self.ops = groups, eps, ops
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, scale=None, shift=None) -> torch.Tensor:
        return self.ops.group_norm_silu(x, self.weight, self.bias, self.groups, self.eps, scale, shift)


class NoiseEmbedding(nn.Module):
    """c_noise (B,) -> sinusoidal features -> MLP -> (B, emb_dim).

    `model.noise_embedding` picks what the sinusoids read (config.py):
      edm:   angles = c_noise * freqs             EDM's `EDMPrecond`: c_noise = ln(sigma)/4 fed as it is,
                                                  so nearby sigmas give nearby features;
      x1000: angles = 1000 * c_noise * freqs      the integer-DDPM-timestep scale this engine once applied
                                                  to ln(sigma)/4; its top frequencies turn by radians for
                                                  a 1 % change of sigma. Kept only to reproduce old runs.
    """

    SCALE = {"edm": 1.0, "x1000": 1000.0}

    def __init__(self, channels: int, emb_dim: int, form: str = "edm"):
        super().__init__()
        half = channels // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs * self.SCALE[form], persistent=False)
        self.mlp = nn.Sequential(
            nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim), nn.SiLU()
        )

    def features(self, c_noise: torch.Tensor) -> torch.Tensor:
        """The sinusoidal features (B, channels) before the MLP."""
        angles = c_noise.float()[:, None] * self.freqs[None, :]
        return torch.cat([angles.cos(), angles.sin()], dim=1)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        feats = self.features(c_noise)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))  # bf16 modules (DeepSpeed bf16) get bf16


def check_checkpoint_embedding(saved_config: dict, source: str) -> None:
    """Refuses a checkpoint saved before `model.noise_embedding` existed: its weights were trained on the
    x1000 embedding, and loading them under the EDM one (the default its config would now get) would
    condition every layer on features it never saw. Raises ValueError naming the file and the choices."""
    model = saved_config.get("model", {}) if isinstance(saved_config, dict) else {}
    if "noise_embedding" not in model:
        raise ValueError(
            f"{source}: this checkpoint predates model.noise_embedding (it was trained with ln(sigma)/4 "
            "scaled by 1000 before the sinusoids, not EDM's form); pretrain it again with this version, "
            "or, to reproduce the old run, pretrain with model.noise_embedding=x1000")


class ResBlock(nn.Module):
    """x -> GN-SiLU -> conv -> GN-mod(emb)-SiLU -> dropout -> conv, plus a (1x1) skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float, ops: Ops):
        super().__init__()
        self.norm0 = GroupNormSiLU(c_in, groups, ops)
        self.conv0 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.affine = nn.Linear(emb_dim, 2 * c_out)  # -> (scale, shift) per sample and channel
        self.norm1 = GroupNormSiLU(c_out, groups, ops)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv1.weight)  # each block starts as the identity (ADM)
        nn.init.zeros_(self.conv1.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(self.norm0(x))
        scale, shift = self.affine(emb).to(h.dtype).chunk(2, dim=1)
        h = self.conv1(self.dropout(self.norm1(h, scale, shift)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over pixels, used at low resolution only."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(-1, -2).unbind(1)  # (B, HW, C)
        h = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


class UNet(nn.Module):
    """ADM/EDM-style U-Net: levels of ResBlocks (+ attention), down/up sampling, skip concatenation.
    `ops`: what its GroupNorm-SiLU and upsample convs run (hybengine.ops.resolve_ops)."""

    def __init__(self, cfg: ModelConfig, image_channels: int, num_classes: int, ops: Ops = REFERENCE):
        super().__init__()
        cfg = apply_model_preset(cfg)
        self.cfg, self.image_channels, self.num_classes, self.ops = cfg, image_channels, num_classes, ops
        ch, g = cfg.channels, cfg.groups
        emb_dim = 4 * ch
        self.levels = len(cfg.channel_mult)
        self.embed = NoiseEmbedding(ch, emb_dim, cfg.noise_embedding)
        self.conv_in = nn.Conv2d(image_channels, ch, 3, padding=1)

        # Each encoder stage's output is kept for the decoder; each decoder ResBlock consumes one.
        self.down = nn.ModuleList()  # stages: EmbSequential(ResBlock[, AttnBlock]) or a stride-2 conv
        skips, c = [ch], ch
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.down.append(self._stage(c, ch * mult, level, emb_dim))
                c = ch * mult
                skips.append(c)
            if level < self.levels - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)

        mid = [ResBlock(c, c, emb_dim, g, cfg.dropout, ops)] + ([AttnBlock(c, g)] if cfg.attn_levels else [])
        self.mid = EmbSequential(*mid, ResBlock(c, c, emb_dim, g, cfg.dropout, ops))

        self.up = nn.ModuleList()  # stages: EmbSequential(ResBlock[, AttnBlock]) or Upsample
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(self._stage(c + skips.pop(), ch * mult, level, emb_dim))
                c = ch * mult
            if level > 0:
                self.up.append(Upsample(c, ops))
        assert not skips, "every encoder activation must be consumed by the decoder"

        self.norm_out = GroupNormSiLU(c, g, ops)
        self.conv_out = nn.Conv2d(c, image_channels + num_classes, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def downsample_factor(self) -> int:
        """Inputs must have H and W divisible by this."""
        return 2 ** (self.levels - 1)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        """x: (B, I, H, W) preconditioned input c_in * x_n; c_noise: (B,). Returns F (B, I+K, H, W)."""
        emb = self.embed(c_noise)
        h = self.conv_in(x.to(self.conv_in.weight.dtype))
        hs = [h]
        for stage in self.down:
            h = stage(h, emb) if isinstance(stage, EmbSequential) else stage(h)
            hs.append(h)
        h = self.mid(h, emb)
        for stage in self.up:
            if isinstance(stage, EmbSequential):
                h = stage(torch.cat([h, hs.pop()], dim=1), emb)
            else:
                h = stage(h)
        return self.conv_out(self.norm_out(h))

    def _stage(self, c_in: int, c_out: int, level: int, emb_dim: int) -> EmbSequential:
        blocks = [ResBlock(c_in, c_out, emb_dim, self.cfg.groups, self.cfg.dropout, self.ops)]
        if level in self.cfg.attn_levels:
            blocks.append(AttnBlock(c_out, self.cfg.groups))
        return EmbSequential(*blocks)


class EmbSequential(nn.Sequential):
    """A sequence whose ResBlocks also receive the noise embedding."""

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for block in self:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        return h


class UpsampleConv(nn.Conv2d):
    """A 3x3 conv (padding 1) applied to the nearest 2x upsample of its input, through
    `ops.upsample_conv` (sub-pixel form or reference). Its own forward reads its weights, so module
    hooks (DeepSpeed ZeRO-3's parameter gathering among them) see a normal conv."""

    def __init__(self, channels: int, ops: Ops):
        super().__init__(channels, channels, 3, padding=1)
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.ops.upsample_conv(x, self.weight, self.bias)


class Upsample(nn.Module):
    def __init__(self, channels: int, ops: Ops):
        super().__init__()
        self.conv = UpsampleConv(channels, ops)  # state-dict keys as a plain Conv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def build_unet(cfg: ModelConfig, image_channels: int, num_classes: int, ops: Ops = REFERENCE) -> UNet:
    """The U-Net of `cfg`, running `ops` (default: the references)."""
    return UNet(cfg, image_channels, num_classes, ops)
