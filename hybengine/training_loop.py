"""The training loop: pretraining (hybrid / supervised / denoise) and fine-tuning share it.

One flat function in sections: set-up / resume / per micro-batch (forward, finite check, backward,
optimizer step) / EMA / maintenance (metrics once per `log_every`) / snapshot.
"""
from __future__ import annotations

import logging
import math
import random
import resource
import shutil
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import ops
from .config import Config, config_diff, config_from_dict, dumps, flatten, to_dict
from .data import build_train_loader
from .objective import HybridObjective
from .runtime import cpu_malloc, faults
from .runtime.atomic import atomic_write_text
from .runtime.backends import DeepSpeedBackend, PlainBackend, load_deepspeed_json, make_optimizer
from .runtime.checkpoint import CheckpointManager, check_snapshot_files, find_snapshot, read_snapshot_config
from .runtime.distributed import DistInfo, setup
from .runtime.ema import EMA
from .runtime.run_log import MetricsLog, setup_logging
from .schedule import learning_rate
from .unet import UNet, build_unet

log = logging.getLogger("hybengine.train")


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class LoopHooks:
    """Where benchmarks and tools plug into the loop instead of patching it (all optional).

    wrap_loader: takes the training loader and returns the iterable the loop draws batches from
                 (benchmarks/lockstep.py: batches wait for their turn);
    phase:       a context manager around each phase of a step, named "forward", "backward",
                 "optimizer" or "ema" (benchmarks/cpu_step_phases.py times them);
    on_step:     called with the step number after every optimizer step."""

    wrap_loader: Callable[[Iterable], Iterable] | None = None
    phase: Callable[[str], AbstractContextManager] | None = None
    on_step: Callable[[int], None] | None = None


@dataclass
class TrainResult:
    net: UNet  # the trained network (raw weights)
    ema_net: UNet | None  # a copy holding the EMA weights (None when EMA is off)
    step: int
    out_dir: Path
    ops: dict[str, str]

    @property
    def best_net(self) -> UNet:
        return self.ema_net if self.ema_net is not None else self.net


def _rng_state(gen: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
             "objective": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    gen.set_state(state["objective"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _make_backend(cfg: Config, net: UNet, dist: DistInfo):
    t, o = cfg.train, cfg.optim
    optimizer = make_optimizer(net, o.lr, (o.beta1, o.beta2), o.weight_decay)
    if not dist.use_deepspeed:
        return PlainBackend(net, optimizer, t.precision, t.grad_accum, o.grad_clip, dist.device)
    ds = load_deepspeed_json(t.deepspeed_config, t.batch_size, t.grad_accum, t.precision, o.grad_clip,
                             dist.world_size)
    if ds.get("zero_optimization", {}).get("stage", 0) == 3 and t.ema_halflife_steps > 0:
        raise ValueError("ZeRO-3 partitions the weights, which the EMA needs whole: "
                         "set train.ema_halflife_steps=0 or use configs/deepspeed/zero2.json")
    return DeepSpeedBackend(net, optimizer, ds)


def run_training(cfg: Config, *, resume: str | None = None, init_weights: dict | None = None,
                 console_logging: bool = True, hooks: LoopHooks | None = None) -> TrainResult:
    """Trains per `cfg`; `init_weights` (a state dict) starts from pretrained weights (fine-tuning).
    A fresh run into a folder that already holds a run is refused (RunFolderError); a caller that owns
    the folder and means to start it over calls `clear_run_files` first."""
    # ---- set-up -------------------------------------------------------------------------------
    t = cfg.train
    hooks = hooks or LoopHooks()
    phase = hooks.phase or (lambda name: nullcontext())
    dist = setup(t.engine)
    out_dir = Path(t.out_dir)
    # Nothing is written or loaded before these checks pass: a refused run leaves the folder as it was
    # (run.log, opened next, records the attempt; config.yaml and checkpoints/ come after the data scan).
    snap = _check_run_folder(cfg, out_dir, resume)
    if console_logging:
        setup_logging(out_dir, dist.rank)
    if t.threads:
        torch.set_num_threads(t.threads)
    malloc_state = cpu_malloc.apply(t.cpu_malloc, dist.device.type)
    torch.manual_seed(t.seed * 1000 + dist.rank)
    np.random.seed(t.seed * 1000 + dist.rank)
    random.seed(t.seed * 1000 + dist.rank)
    chosen_ops = ops.configure(cfg.kernels, dist.device)

    net = build_unet(cfg.model, cfg.data.image_channels, cfg.data.num_classes).to(dist.device)
    if cfg.data.crop % net.downsample_factor:
        raise ValueError(f"data.crop={cfg.data.crop} must be a multiple of {net.downsample_factor} "
                         f"(2 ** (levels - 1) for model.channel_mult={net.cfg.channel_mult})")
    loader = build_train_loader(cfg.data, t.batch_size, t.seed, dist.rank, dist.world_size)
    if init_weights is not None:
        net.load_state_dict(init_weights)
    if cfg.model.channels_last and dist.use_deepspeed:
        # DeepSpeed broadcasts and flattens parameters as contiguous bytes; keep NCHW weights and
        # feed channels-last inputs, which convolutions follow.
        log.info("model.channels_last under DeepSpeed: channels-last activations, NCHW weights")
    elif cfg.model.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if cfg.model.compile:
        # Compile the forward body only: module hooks (DeepSpeed's timers, ZeRO-3 gathers) stay eager,
        # the U-Net itself must trace as one graph with the fused ops inside; state_dict keys unchanged.
        net.forward = torch.compile(net.forward, fullgraph=True)
    backend = _make_backend(cfg, net, dist)
    ema = EMA(net, t.ema_halflife_steps) if t.ema_halflife_steps > 0 else None
    objective = HybridObjective(cfg.objective, cfg.data.ignore_index)
    gen = torch.Generator(dist.device).manual_seed(t.seed * 1000 + dist.rank + 1)
    if dist.is_main:  # only now, with data, model and back-end built: a failed start leaves no run behind
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.yaml", dumps(cfg))
    ckpt = CheckpointManager(out_dir / "checkpoints", dist, t.keep_last)
    log.info("engine %s, %d rank(s) on %s, precision %s, ops %s, malloc %s, %.2f M parameters", backend.name,
             dist.world_size, dist.device, t.precision, chosen_ops, malloc_state,
             sum(p.numel() for p in net.parameters()) / 1e6)

    # ---- resume -------------------------------------------------------------------------------
    step = 0
    if resume:
        rank_state, weights = ckpt.load(snap, backend)  # the config was checked before set-up
        step = rank_state["step"]
        _set_rng_state(rank_state["rng"], gen)
        loader.load_state_dict(rank_state["loader"])
        if ema is not None and weights["ema"] is not None:
            ema.load_state_dict(weights["ema"])

    forward_net = backend.module
    in_dtype = backend.input_dtype
    batch_images = t.batch_size * dist.world_size * t.grad_accum

    def snapshot() -> None:
        rank_state = {"step": step, "rng": _rng_state(gen), "loader": loader.state_dict()}
        weights = {"model": backend.full_state_dict(), "config": to_dict(cfg), "step": step,
                   "ema": ema.state_dict() if ema is not None else None} if dist.is_main else {}
        path = ckpt.save(step, backend, rank_state, weights)
        log.info("saved %s", path)

    metrics = MetricsLog(out_dir / "metrics.jsonl" if dist.is_main else None, t.steps, step,
                         t.progress and dist.is_main)
    sums = torch.zeros(3, device=dist.device)  # (loss, denoise, mask) summed over logged micro-batches
    n_sum, bad_run, micro_index = 0, 0, 0
    t_last, step_last = time.perf_counter(), step
    it = iter(hooks.wrap_loader(loader) if hooks.wrap_loader else loader)
    try:
        while step < t.steps:
            # ---- one micro-batch: forward, finite check, backward -----------------------------
            x, y = next(it)
            x = x.to(dist.device, non_blocking=True).to(in_dtype)
            y = y.to(dist.device, non_blocking=True)
            if cfg.model.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with phase("forward"), backend.autocast():
                denoise, mask = objective(forward_net, x, y, gen)
            loss = (denoise + mask).mean()
            if micro_index in faults.NAN_AT_BATCHES:
                loss = loss * float("nan")
            micro_index += 1
            if t.check_finite and not bool(torch.isfinite(loss)):  # host sync: waits for this forward
                bad_run += 1
                log.warning("non-finite loss at step %d (micro-batch %d); batch skipped (%d in a row)",
                            step + 1, micro_index - 1, bad_run)
                if bad_run >= t.max_bad_steps:
                    raise NonFiniteLossError(
                        f"{bad_run} non-finite losses in a row at step {step + 1}; stopping. The last good "
                        f"checkpoint under {out_dir / 'checkpoints'} is intact: lower optim.lr or check the data")
                continue
            bad_run = 0
            backend.set_lr(learning_rate(cfg, step + 1))
            with phase("backward"):
                backend.backward(loss)
            sums += torch.stack([loss.detach(), denoise.detach().mean(), mask.detach().mean()]).float()
            n_sum += 1
            with phase("optimizer"):
                stepped = backend.micro_step()
            if not stepped:
                continue
            step += 1

            # ---- EMA ---------------------------------------------------------------------------
            if ema is not None:
                with phase("ema"):
                    ema.update(net)
            if hooks.on_step is not None:
                hooks.on_step(step)

            # ---- maintenance: metrics once per log_every steps (the one routine host sync) -----
            if step % t.log_every == 0 or step == t.steps:
                now = time.perf_counter()
                means = (sums / max(n_sum, 1)).tolist()  # host sync
                ips = (step - step_last) * batch_images / max(now - t_last, 1e-9)
                if not all(math.isfinite(v) for v in means):
                    log.warning("non-finite running mean at step %d", step)
                metrics.write({"step": step, "loss": means[0], "denoise": means[1], "mask": means[2],
                               "images_per_s": ips, "lr": learning_rate(cfg, step),
                               "peak_mem_mb": _peak_mem_mb(dist.device)})
                sums.zero_()
                n_sum, t_last, step_last = 0, now, step

            faults.maybe_kill(faults.KILL_AT_STEP, step)
            # ---- snapshot ----------------------------------------------------------------------
            if (t.ckpt_every and step % t.ckpt_every == 0) or step == t.steps:
                snapshot()
    finally:
        metrics.close()

    ema_net = None
    if ema is not None:
        ema_net = build_unet(cfg.model, cfg.data.image_channels, cfg.data.num_classes).to(dist.device)
        ema.copy_to(ema_net)
    return TrainResult(net, ema_net, step, out_dir, chosen_ops)


def _peak_mem_mb(device: torch.device) -> float:
    """Peak device memory (CUDA allocator) or peak resident set of this process (CPU), MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class RunFolderError(ValueError):
    """train.out_dir cannot take this run (it is a file, or holds another run and this is not a resume)."""


_RUN_FILES = ("config.yaml", "metrics.jsonl", "run.log", "checkpoints")  # what a run writes in its folder


def _run_held(out_dir: Path) -> list[str]:
    """What in out_dir marks a run worth keeping: its config, a non-empty metrics log, snapshots
    (a run.log alone, or an empty checkpoints/ folder, is a start that failed)."""
    held = [name for name in ("config.yaml", "metrics.jsonl") if (out_dir / name).is_file()
            and (out_dir / name).stat().st_size > 0]
    if (out_dir / "checkpoints").is_dir() and any((out_dir / "checkpoints").glob("step_*")):
        held.append("checkpoints/")
    return held


def _check_run_folder(cfg: Config, out_dir: Path, resume: str | None) -> Path | None:
    """Before anything is written or loaded: out_dir can take the run, and a resume continues the same
    run (config compared first, so a changed architecture never reaches load_state_dict). Returns the
    snapshot folder to resume from (None for a fresh run)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise RunFolderError(f"train.out_dir={str(out_dir)!r} is a file, not a folder; name a run folder")
    held = _run_held(out_dir)
    if not resume:
        if held:
            resumable = "" if "checkpoints/" in held else " (it has no snapshot yet, so nothing to resume)"
            raise RunFolderError(
                f"train.out_dir={str(out_dir)!r} already holds a run ({', '.join(held)}){resumable}; continue "
                f"it with --resume {out_dir}, or start over deliberately by deleting that folder (or choose "
                "another train.out_dir)")
        return None
    snap = find_snapshot(resume)
    if held and out_dir.resolve() not in snap.resolve().parents:
        raise RunFolderError(f"train.out_dir={str(out_dir)!r} holds another run ({', '.join(held)}) than the "
                             f"snapshot {snap} being resumed; resume into its own run folder or a new one")
    _check_resume_config(cfg, read_snapshot_config(snap))
    check_snapshot_files(snap)  # every file readable the safe way, before any loader (DeepSpeed's) runs
    return snap


def clear_run_files(out_dir: Path) -> None:
    """Deletes what a run wrote into out_dir (config, metrics, log, snapshots), nothing else."""
    for name in _RUN_FILES:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


_RESUME_FREE = {"train.steps", "train.ckpt_every", "train.keep_last", "train.log_every", "train.progress",
                "train.out_dir", "train.threads", "train.cpu_malloc", "train.max_bad_steps", "data.num_workers",
                "data.loader"}  # both loaders yield identical batches (tests/test_data_dali.py)


def _check_resume_config(cfg: Config, saved: dict) -> None:
    """A resumed run must train the same thing; only bookkeeping keys may change."""
    then = config_from_dict(saved)
    changed = config_diff(cfg, then, _RESUME_FREE)
    if changed:
        now_f, then_f = flatten(to_dict(cfg)), flatten(to_dict(then))
        detail = ", ".join(f"{k}: {then_f.get(k)!r} -> {now_f.get(k)!r}" for k in changed)
        raise ValueError(f"--resume with a different config would not continue the same run ({detail}); "
                         "resume with the saved config (it is in the run folder's config.yaml)")
