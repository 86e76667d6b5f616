"""Optimizer back-ends behind one small interface: a plain torch loop, or a DeepSpeed ZeRO engine.

    backend.module          the module to call forward on
    backend.backward(loss)  one micro-batch's backward (accumulation handled inside)
    backend.micro_step(found_inf)   returns True when this micro-batch closed an optimizer step;
                            found_inf (a device flag, 1.0: skip) skips that step's update on the device
    backend.skips_on_device True when found_inf skips without a host read (the plain back-end with a
                            fused AdamW); DeepSpeed has no such path: the loop reads its flag at once
    backend.save(dir) / backend.load(dir)   model + optimizer state (each rank its own shards)
    backend.load_universal(dir)   DeepSpeed only: a universal checkpoint, partitioned anew for the ranks
                            running now (hybengine/runtime/reshard.py)
    backend.optimizer_summary()   (Adam step, sum of exp_avg**2, sum of fp32 weights**2, over all ranks): what
                            the run log reports
                            after a resume on another number of ranks
"""
from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_torch_save

log = logging.getLogger("hybengine.runtime")


HEAD = ("conv_out.",)  # the U-Net's output conv: the mask (and image) head; every other weight is the body


def param_groups(named: list[tuple[str, nn.Parameter]], body_lr_scale: float) -> list[dict]:
    """The optimizer's parameter groups: one, or (body_lr_scale != 1) the head at the scheduled lr and the
    body at body_lr_scale times it (discriminative fine-tuning: a pretrained body moves slowly, 0 freezes
    it). Each group carries its `lr_scale`, which `set_lr` multiplies in at every step."""
    if body_lr_scale == 1:
        return [{"params": [p for _, p in named], "lr_scale": 1.0}]
    head = [p for n, p in named if n.startswith(HEAD)]
    body = [p for n, p in named if not n.startswith(HEAD)]
    if not head:
        raise ValueError(f"optim.body_lr_scale={body_lr_scale}: the model has no {HEAD[0]}* weights to train "
                         "at the full lr")
    return [{"params": head, "lr_scale": 1.0}, {"params": body, "lr_scale": float(body_lr_scale)}]


def make_optimizer(named: list[tuple[str, nn.Parameter]], lr: float, betas: tuple[float, float],
                   weight_decay: float, body_lr_scale: float = 1.0):
    """AdamW over `named` ((name, parameter) pairs, grouped by `param_groups`), torch's fused kernel on
    every device: its `found_inf` argument skips a step whose loss
    was not finite without a host read (CPU and CUDA alike). On CPU the optimizer probe measured it
    well ahead of torch's default (the per-tensor loop) and of foreach (docs/lab/cpu-bound.md,
    "the optimizer question"; benchmarks/results/optimizer.csv). On CUDA the fused kernel
    replaces torch's default (foreach), which the older GPU rows in benchmarks/results/train.csv
    ran with. A resumed run repeats an uninterrupted one bit for bit (tests/test_train_faults.py,
    tests/test_deepspeed.py): the implementation flags travel in the optimizer state, so a
    checkpoint continues with the one it was written with (one written with foreach skips a bad
    step through a host read: `PlainBackend.micro_step`)."""
    return torch.optim.AdamW(param_groups(named, body_lr_scale), lr=lr, betas=betas, weight_decay=weight_decay,
                             fused=True)


def set_group_lr(optimizer, lr: float) -> None:
    """The scheduled lr into every group, times the group's `lr_scale` (`param_groups`)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def _fused(optimizer) -> bool:
    return all(group.get("fused") for group in optimizer.param_groups)


class PlainBackend:
    """Single process: autocast for bf16, gradient accumulation, global-norm clipping."""

    name = "plain"
    skips_on_device = True

    def __init__(self, model: nn.Module, optimizer, precision: str, grad_accum: int, grad_clip: float,
                 device: torch.device):
        self.module, self.optimizer = model, optimizer
        self.grad_accum, self.grad_clip = grad_accum, grad_clip
        self.micro = 0
        self._autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                          else nullcontext())

    def autocast(self):
        return self._autocast

    @property
    def input_dtype(self) -> torch.dtype:
        return torch.float32

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum).backward()

    def micro_step(self, found_inf: torch.Tensor | None = None) -> bool:
        """found_inf: float32 device flag, 1.0 when a micro-batch of this step had a non-finite loss;
        the fused AdamW then leaves weights, moments and its step count as they were."""
        self.micro += 1
        if self.micro % self.grad_accum:
            return False
        if self.grad_clip > 0:  # NaN gradients make a NaN norm: harmless, the step is skipped
            nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip, foreach=True)
        if found_inf is None:
            self.optimizer.step()
        elif _fused(self.optimizer):
            self.optimizer.found_inf = found_inf  # read by the fused kernel on the device
            self.optimizer.step()
            del self.optimizer.found_inf
        elif not bool(found_inf):  # a checkpoint written with foreach: host read, then skip
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def set_lr(self, lr: float) -> None:
        set_group_lr(self.optimizer, lr)

    def save(self, directory: Path) -> None:
        atomic_torch_save({"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                           "micro": self.micro}, directory / "plain_state.pt")

    def load(self, directory: Path) -> None:
        state = torch.load(directory / "plain_state.pt", map_location="cpu", weights_only=True)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.micro = state["micro"]

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu() for k, v in self.module.state_dict().items()}

    def optimizer_summary(self) -> tuple[int, float, float]:
        return _adam_summary([p for g in self.optimizer.param_groups for p in g["params"]], self.optimizer.state)


def _adam_summary(params: list[torch.Tensor], states: dict) -> tuple[int, float, float]:
    """(step count, sum of exp_avg**2, sum of the fp32 weights**2) over fp32 parameters and their Adam state
    on this rank (under ZeRO: this rank's fp32 partitions, their padding zeros)."""
    step, moment, weight = 0, 0.0, 0.0
    for p in params:
        weight += float(p.detach().double().square().sum())
        state = states.get(p, {})
        if "exp_avg" in state:
            step = max(step, int(state["step"]))
            moment += float(state["exp_avg"].double().square().sum())
    return step, moment, weight


def load_deepspeed_json(path: str, batch_size: int, grad_accum: int, precision: str,
                        grad_clip: float, world_size: int) -> dict:
    """Reads the ZeRO JSON and sets the keys our config owns (batch, accumulation, precision, clip)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"train.deepspeed_config: '{path}' does not exist (see configs/deepspeed/)")
    try:
        ds = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"train.deepspeed_config: '{path}' is not valid JSON: {e}") from e
    if "optimizer" in ds:
        raise ValueError(f"{path}: remove the 'optimizer' section; hybengine passes its own AdamW "
                         "(a JSON optimizer triggers a C++ build and bypasses optim.* settings)")
    owned = {
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": batch_size * grad_accum * world_size,
        "gradient_clipping": grad_clip,
    }
    for key, value in owned.items():
        if key in ds and ds[key] != value:
            log.warning("%s: %s=%s replaced by %s from the hybengine config", path, key, ds[key], value)
        ds[key] = value
    ds["bf16"] = {"enabled": precision == "bf16"}
    ds.pop("fp16", None)  # fp16 is refused on CPU and not what the engine trains in
    ds.setdefault("steps_per_print", 10**9)
    return ds


class DeepSpeedBackend:
    """A DeepSpeed engine (ZeRO stage from the JSON) wrapping the model and a torch AdamW."""

    name = "deepspeed"
    skips_on_device = False  # its ZeRO optimizer has no found_inf input: the loop drops bad batches

    def __init__(self, model: nn.Module, optimizer, ds_config: dict):
        import deepspeed

        self.stage = int(ds_config.get("zero_optimization", {}).get("stage", 0))
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=ds_config, dist_init_required=False
        )
        self.module = self.engine
        self.bf16 = bool(ds_config["bf16"]["enabled"])

    def autocast(self):
        return nullcontext()  # DeepSpeed bf16 keeps the module itself in bf16

    @property
    def input_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.bf16 else torch.float32

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def micro_step(self, found_inf: torch.Tensor | None = None) -> bool:
        assert found_inf is None, "DeepSpeed: the loop drops non-finite batches before backward"
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        return boundary

    def set_lr(self, lr: float) -> None:
        set_group_lr(self.engine.optimizer, lr)

    def save(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory.parent), tag=directory.name, save_latest=False)

    def load(self, directory: Path) -> None:
        load_path, _ = self.engine.load_checkpoint(str(directory.parent), tag=directory.name,
                                                   load_lr_scheduler_states=False)
        if load_path is None:
            raise FileNotFoundError(f"DeepSpeed found no checkpoint in {directory}")

    def load_universal(self, directory: Path) -> None:
        """A universal checkpoint (reshard.convert_to_universal): fp32 weights, Adam moments and step of
        each parameter, cut into this run's partitions by DeepSpeed's universal loader."""
        config = self.engine._config  # the loader's switch; the JSON cannot know at start-up
        config.load_universal_checkpoint = True
        try:
            load_path, _ = self.engine.load_checkpoint(str(directory.parent), tag=directory.name,
                                                       load_lr_scheduler_states=False)
        finally:
            config.load_universal_checkpoint = False
        if load_path is None:
            raise FileNotFoundError(f"DeepSpeed found no universal checkpoint in {directory}")

    def optimizer_summary(self) -> tuple[int, float, float]:
        """Collective: the Adam step, the sums of exp_avg**2 and of fp32 weights**2 over every rank's partition."""
        import torch.distributed as tdist

        zero = self.engine.optimizer  # its fp32 partitions: ZeRO-3 empties the base optimizer's groups between steps
        flat = getattr(zero, "fp32_partitioned_groups_flat", None) or zero.single_partition_of_fp32_groups
        t = torch.tensor(_adam_summary(list(flat), zero.optimizer.state), dtype=torch.float64)
        tdist.all_reduce(t)
        return int(t[0].item()) // tdist.get_world_size(), float(t[1].item()), float(t[2].item())

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        if self.stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(self.engine.module.parameters()), modifier_rank=None):
                return {k: v.detach().float().cpu().clone() for k, v in self.engine.module.state_dict().items()}
        return {k: v.detach().float().cpu() for k, v in self.engine.module.state_dict().items()}
