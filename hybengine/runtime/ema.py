"""Exponential moving average of the weights, with a half-life counted in optimizer steps.

    decay = 0.5 ** (1 / halflife);   ema <- decay * ema + (1 - decay) * param      (fp32)

A step whose update the optimizer skipped (non-finite loss) passes its device flag `skip` (1.0):
the weight of the new value becomes (1 - decay) * (1 - skip), decided on the device, no host read.
"""
from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, halflife_steps: float):
        self.decay = 0.5 ** (1.0 / halflife_steps) if halflife_steps > 0 else 0.0
        self.names = [n for n, _ in model.named_parameters()]
        self.shadow = [p.detach().float().clone() for p in model.parameters()]

    @torch.no_grad()
    def update(self, model: nn.Module, skip: torch.Tensor | None = None) -> None:
        params = [p.detach().float() for p in model.parameters()]
        if skip is None:
            torch._foreach_lerp_(self.shadow, params, 1.0 - self.decay)
            return
        # ema += w * (param - ema) with a 0-d device weight: foreach lerp would take a tensor weight
        # only per tensor (its slow path on CUDA); mul by a 0-d tensor keeps the fused route
        weight = (1.0 - skip.float()) * (1.0 - self.decay)
        delta = torch._foreach_sub(params, self.shadow)
        torch._foreach_mul_(delta, weight)
        torch._foreach_add_(self.shadow, delta)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.shadow, strict=True))

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.names) ^ set(state)
        if missing:
            raise ValueError(f"EMA state does not match the model: differing names {sorted(missing)[:5]}")
        for i, name in enumerate(self.names):
            self.shadow[i].copy_(state[name])

    def copy_to(self, model: nn.Module) -> nn.Module:
        """Writes the averaged weights into `model` (cast to its parameter dtypes)."""
        with torch.no_grad():
            for p, s in zip(model.parameters(), self.shadow, strict=True):
                p.copy_(s)
        return model
