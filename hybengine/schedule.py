"""The learning-rate schedule, shared by the training loop and the batched fine-tune runner, so every
start of a fine-tune sweep (hybrid, supervised, denoise, scratch, ...) trains under the same one.

    warm-up:  lr(s) = lr * s / W                                  for s <= W  (W = optim.warmup_steps)
    constant: lr(s) = lr                                          after warm-up
    cosine:   lr(s) = lr * (r + (1 - r) * (1 + cos(pi * t)) / 2)  t = (s - W) / (S - W), r = optim.min_lr_ratio

`step` counts from 1; S = train.steps (a fine-tune's steps already include finetune.steps_per_label
* budget: hybengine/finetune/runner.py prepare_finetune).
"""
from __future__ import annotations

import math

from .config import Config


def learning_rate(cfg: Config, step: int) -> float:
    o, total = cfg.optim, cfg.train.steps
    warm = min(1.0, step / max(1, o.warmup_steps))
    if o.decay == "constant" or step <= o.warmup_steps:
        return o.lr * warm
    t = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))
