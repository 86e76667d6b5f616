"""Process-group set-up: a plain single process, or ranks started by the `deepspeed` launcher.

On CPU the ranks talk through gloo; on CUDA through NCCL. Nothing here knows about diffusion.
"""
from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

log = logging.getLogger("hybengine.runtime")


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    use_deepspeed: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_deepspeed() -> bool:
    """The deepspeed launcher (and torchrun) export LOCAL_RANK and WORLD_SIZE to every rank."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def pick_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(backend: str) -> DistInfo:
    """backend (train.backend): auto | plain | deepspeed (auto = deepspeed when started by its launcher)."""
    use_ds = backend == "deepspeed" or (backend == "auto" and launched_by_deepspeed())
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = pick_device(local_rank)
    if not use_ds:
        if launched_by_deepspeed() and int(os.environ["WORLD_SIZE"]) > 1:
            raise RuntimeError("train.backend=plain cannot run several ranks; use train.backend=deepspeed or auto")
        return DistInfo(0, 1, 0, device, False)
    try:
        import deepspeed
    except ImportError as e:
        raise RuntimeError(
            "train.backend asks for DeepSpeed but it is not installed: pip install 'hybengine[deepspeed]' "
            "or set train.backend=plain"
        ) from e
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"),
                       ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29517")):
        os.environ.setdefault(key, value)  # a single process without the launcher
    if device.type == "cpu":
        _skip_shm_comm_build(deepspeed)
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo", verbose=False)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, True)


def _skip_shm_comm_build(deepspeed) -> None:
    """On CPU ranks DeepSpeed's comm backend JIT-compiles its shared-memory op (deepspeed_shm_comm) in
    every fresh environment: 48 s on the 2-core dev host. That op serves only inference_all_reduce, the
    all-reduce of tensor-parallel inference; training's collectives go through gloo either way. So
    training marks the op unavailable in DeepSpeed's table of compatible ops, which DeepSpeed keeps
    as one dict for this purpose, and its backend then leaves the op unbuilt."""
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name and core count (for results rows)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        model = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "CPU"
    return f"{model} ({os.cpu_count()} cores)"
