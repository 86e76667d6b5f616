"""The seeds of a training run, one place for the loop and the batched runner.

    seed_all(seed, rank)          torch, numpy and python generators <- seed * 1000 + rank
    objective_generator(...)      the objective's own generator (sigma, noise) <- seed * 1000 + rank + 1

A batched member seeds exactly as the run it stands for would (rank 0), so its start weights and noise
are that run's (hybengine/finetune/batched.py).
"""
from __future__ import annotations

import random

import numpy as np
import torch


def run_seed(seed: int, rank: int = 0) -> int:
    return seed * 1000 + rank


def seed_all(seed: int, rank: int = 0) -> None:
    """Seeds torch, numpy and python's global generators for `train.seed` on `rank`."""
    s = run_seed(seed, rank)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def objective_generator(seed: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator the objective draws sigma and the noise from (apart from the global ones)."""
    return torch.Generator(device).manual_seed(run_seed(seed, rank) + 1)
