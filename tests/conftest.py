"""Shared test set-up.

Without CUDA, run the Triton kernels through the interpreter: the variable must be set before
triton (and so `hybengine.kernels`) is imported, which conftest.py is, before any test module.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
