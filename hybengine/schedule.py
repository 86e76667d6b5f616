"""The learning-rate schedule, shared by the training loop and the batched fine-tune runner."""
from __future__ import annotations

from .config import Config


def learning_rate(cfg: Config, step: int) -> float:
    """Linear warm-up over optim.warmup_steps, then constant; `step` counts from 1."""
    return cfg.optim.lr * min(1.0, step / max(1, cfg.optim.warmup_steps))
