"""The training loop: pretraining (hybrid / supervised / denoise) and fine-tuning share it.

One flat function in sections: set-up / resume / per micro-batch (forward, finite flag, backward,
optimizer step) / EMA / maintenance (metrics once per `log_every`) / snapshot.

No host read in a step. A non-finite loss sets a flag on the device; the optimizer step of that
micro-batch is skipped on the device (the fused AdamW's `found_inf`) and the EMA update with it.
The flags are read at `log_every` steps and at snapshots only: there the run logs each non-finite
micro-batch, and stops once `train.max_bad_steps` of them came in a row. What deferred reads change
(against reading every flag before backward): a bad micro-batch still runs its backward and its
step is counted (the update is skipped, not redone with the next batch), so with grad_accum > 1 one
bad micro-batch skips its whole step; the stop comes at the first read after the limit is reached,
up to `log_every` steps later (no weights change in between: those steps are all skipped); a
snapshot due at a skipped step waits for the next step that updates (the last step writes anyway).
DeepSpeed's optimizer has no `found_inf` path: there the flag is read at once and a bad batch is
dropped before backward, as before.
"""
from __future__ import annotations

import logging
import math
import random
import resource
import signal
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import ops
from .config import Config, compare_saved, dumps, to_dict
from .data import build_train_loader
from .objective import HybridObjective
from .runtime import cpu_malloc, faults, reshard
from .runtime.atomic import atomic_write_text
from .runtime.backends import DeepSpeedBackend, PlainBackend, load_deepspeed_json, make_optimizer
from .runtime.checkpoint import CheckpointManager
from .runtime.cpu_threads import torch_threads
from .runtime.distributed import DistInfo, setup
from .runtime.ema import EMA
from .runtime.run_folder import RunInterrupted, check_run_folder
from .runtime.run_log import MetricsLog, setup_logging
from .runtime.seeding import objective_generator, seed_all
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
    optimizer = make_optimizer(list(net.named_parameters()), o.lr, (o.beta1, o.beta2), o.weight_decay,
                               o.body_lr_scale)
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
    The run-folder rules (hybengine/runtime/run_folder.py) apply: a fresh run into a folder that already
    holds a run is refused (RunFolderError); a caller that owns the folder and means to start it over
    calls `clear_run_files` first. `resume`: a run or snapshot folder; a run folder with no complete
    snapshot starts over from step 0."""
    with torch_threads(cfg.train.threads):  # train.threads for this run only (hybengine/runtime/cpu_threads.py)
        return _train(cfg, resume, init_weights, console_logging, hooks)


def _train(cfg: Config, resume: str | None, init_weights: dict | None, console_logging: bool,
           hooks: LoopHooks | None) -> TrainResult:
    # ---- set-up -------------------------------------------------------------------------------
    t = cfg.train
    hooks = hooks or LoopHooks()
    phase = hooks.phase or (lambda name: nullcontext())
    dist = setup(t.backend)
    out_dir = Path(t.out_dir)
    # Nothing is written or loaded before these checks pass: a refused run leaves the folder as it was
    # (run.log, opened next, records the attempt; config.yaml and checkpoints/ come after the data scan).
    snap, notes = check_run_folder(out_dir, resume, lambda saved: compare_saved(cfg, saved))
    if console_logging:
        setup_logging(out_dir, dist.rank)
    if snap is not None and dist.use_deepspeed:  # a snapshot of another number of ranks: same global batch
        cfg, resized = reshard.fit_world_size(cfg, snap, dist.world_size)
        t = cfg.train
        notes = [*notes, *([resized] if resized else [])]
    for note in notes:
        log.info("%s", note)
    malloc_state = cpu_malloc.apply(t.cpu_malloc, dist.device.type)
    seed_all(t.seed, dist.rank)
    run_ops = ops.resolve_ops(cfg.kernels, dist.device)
    ops.log_ops(run_ops)

    net = build_unet(cfg.model, cfg.data.image_channels, cfg.data.num_classes, run_ops).to(dist.device)
    if cfg.data.crop % net.downsample_factor:
        raise ValueError(f"data.crop={cfg.data.crop} must be a multiple of {net.downsample_factor} "
                         f"(2 ** (levels - 1) for model.channel_mult={net.cfg.channel_mult})")
    loader = build_train_loader(cfg.data, t.batch_size, t.seed, dist.rank, dist.world_size, device=dist.device)
    if init_weights is not None:
        net.load_state_dict(init_weights)
    if cfg.model.channels_last and dist.use_deepspeed:
        # DeepSpeed broadcasts and flattens parameters as contiguous bytes; keep NCHW weights and
        # feed channels-last inputs, which convolutions follow.
        log.info("model.channels_last under DeepSpeed: channels-last activations, NCHW weights")
    elif cfg.model.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if cfg.model.compile and not cfg.model.compile_step:
        # Compile the forward body only: module hooks (DeepSpeed's timers, ZeRO-3 gathers) stay eager,
        # the U-Net itself must trace as one graph with the fused ops inside; state_dict keys unchanged.
        net.forward = torch.compile(net.forward, fullgraph=True, mode=_compile_mode(cfg, dist.device))
    backend = _make_backend(cfg, net, dist)
    ema = EMA(net, t.ema_halflife_steps) if t.ema_halflife_steps > 0 else None
    objective = HybridObjective(cfg.objective, cfg.data.ignore_index, run_ops,
                                *_teacher(cfg, init_weights, run_ops, dist.device))
    gen = objective_generator(t.seed, dist.rank, dist.device)
    if dist.is_main:  # only now, with data, model and back-end built: a failed start leaves no run behind
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.yaml", dumps(cfg))
    ckpt = CheckpointManager(out_dir / "checkpoints", dist, t.keep_last)
    log.info("backend %s, %d rank(s) on %s, precision %s, ops %s, malloc %s, %.2f M parameters", backend.name,
             dist.world_size, dist.device, t.precision, run_ops.chosen(), malloc_state,
             sum(p.numel() for p in net.parameters()) / 1e6)

    # ---- resume -------------------------------------------------------------------------------
    step = 0
    if snap is not None:
        rank_state, weights = ckpt.load(snap, backend)  # the config was checked before set-up
        step = rank_state["step"]
        if rank_state["rng"] is not None:  # None: a rank the saved run did not have keeps its seeds
            _set_rng_state(rank_state["rng"], gen)
        loader.load_state_dict(reshard.fit_loader_state(rank_state, weights["config"]["train"]["batch_size"],
                                                        t.batch_size, dist.world_size))
        if rank_state["saved_world_size"] != dist.world_size:
            adam_step, moment, weight = backend.optimizer_summary()
            log.info("optimizer state carried: Adam step %d, sum of exp_avg^2 %.6e, of fp32 weights^2 %.6e",
                     adam_step, moment, weight)
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
                         t.progress and dist.is_main, plot=t.plot)
    forward_loss = _forward_loss(cfg, objective, forward_net, backend, dist.device)
    finite = _FiniteWatch(t.max_bad_steps, out_dir / "checkpoints") if t.check_finite else None
    sums = torch.zeros(4, device=dist.device)  # (loss, denoise, mask) summed over good micro-batches, their count
    step_bad = None  # device flag: a non-finite loss among this optimizer step's micro-batches
    micro_index, snapshot_due = 0, False
    t_last, step_last = time.perf_counter(), step
    it = iter(hooks.wrap_loader(loader) if hooks.wrap_loader else loader)
    try:
        while step < t.steps:
            # ---- one micro-batch: forward, finite flag, backward (no host read) ---------------
            if t.cuda_graphs and dist.device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs may be reused
            x, y = next(it)
            x = x.to(dist.device, non_blocking=True).to(in_dtype)
            y = y.to(dist.device, non_blocking=True).long()  # uint8 on the wire to a GPU (data/loader.py)
            if cfg.model.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with phase("forward"), backend.autocast():
                # the noise is drawn here, in objective.__call__'s order: a generator cannot enter a
                # compiled region (model.compile_step)
                sigma = objective.sample_sigma(x.shape[0], x.device, gen)
                n = torch.randn(x.shape, device=x.device, generator=gen, dtype=x.dtype)
                loss, terms = forward_loss(x, y, sigma, n)
            if micro_index in faults.NAN_AT_BATCHES:
                loss = loss * float("nan")
            record = torch.cat([terms, terms.new_ones(1)])  # (loss, denoise, mask, count)
            if finite is not None:
                bad = finite.flag(loss, step + 1, micro_index)
                if not backend.skips_on_device:
                    if finite.read():  # DeepSpeed: host read now, the batch dropped before backward
                        micro_index += 1
                        continue
                else:
                    step_bad = bad if step_bad is None else step_bad | bad
                    record = torch.where(bad, torch.zeros_like(record), record)
            micro_index += 1
            backend.set_lr(learning_rate(cfg, step + 1))
            with phase("backward"):
                backend.backward(loss)
            sums += record
            with phase("optimizer"):
                skip = step_bad.float() if step_bad is not None else None
                stepped = backend.micro_step(skip)
            if not stepped:
                continue
            step += 1
            step_bad = None

            # ---- EMA (gated on the same flag) --------------------------------------------------
            if ema is not None:
                with phase("ema"):
                    ema.update(net, skip)
            if hooks.on_step is not None:
                hooks.on_step(step)

            # ---- maintenance: flags and metrics once per log_every steps (the routine host reads) --
            if step % t.log_every == 0 or step == t.steps:
                if finite is not None:
                    finite.read()  # warnings for non-finite losses; stops at max_bad_steps in a row
                now = time.perf_counter()
                total = sums.tolist()  # host read
                means = [v / max(total[3], 1.0) for v in total[:3]]
                ips = (step - step_last) * batch_images / max(now - t_last, 1e-9)
                if not all(math.isfinite(v) for v in means):
                    log.warning("non-finite running mean at step %d", step)
                metrics.write({"step": step, "loss": means[0], "denoise": means[1], "mask": means[2],
                               "images_per_s": ips, "lr": learning_rate(cfg, step),
                               "peak_mem_mb": _peak_mem_mb(dist.device)})
                sums.zero_()
                t_last, step_last = now, step

            faults.maybe_kill(faults.KILL_AT_STEP, step)
            faults.maybe_kill(faults.INTERRUPT_AT_STEP, step, signal.SIGINT)
            # ---- snapshot (after a step that updated: a skipped one defers it; the last writes) --
            snapshot_due = snapshot_due or bool(t.ckpt_every and step % t.ckpt_every == 0) or step == t.steps
            if snapshot_due:
                if finite is not None and finite.read() and step < t.steps:
                    log.info("snapshot of step %d deferred: its update was skipped", step)
                    continue
                snapshot()
                snapshot_due = False
    except KeyboardInterrupt:
        raise RunInterrupted(step, ckpt.root) from None
    finally:
        metrics.close()

    ema_net = None
    if ema is not None:
        ema_net = build_unet(cfg.model, cfg.data.image_channels, cfg.data.num_classes, run_ops).to(dist.device)
        ema.copy_to(ema_net)
    return TrainResult(net, ema_net, step, out_dir, run_ops.chosen())


def _teacher(cfg: Config, init_weights: dict | None, run_ops, device: torch.device) -> tuple[UNet | None, float]:
    """(teacher, weight) of finetune.distill: a frozen copy of the start weights, or (None, 0) when off."""
    if cfg.finetune.distill <= 0:
        return None, 0.0
    if init_weights is None:  # a fine-tune from scratch has it set to 0 (finetune/runner.py with_target_images)
        raise ValueError(f"finetune.distill={cfg.finetune.distill} needs start weights to keep: set "
                         "finetune.checkpoint, or finetune.distill=0")
    teacher = build_unet(cfg.model, cfg.data.image_channels, cfg.data.num_classes, run_ops).to(device)
    teacher.load_state_dict(init_weights)
    if cfg.model.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    return teacher.eval().requires_grad_(False), cfg.finetune.distill


def _compile_mode(cfg: Config, device: torch.device) -> str | None:
    """torch.compile's mode: CUDA graphs (reduce-overhead) when train.cuda_graphs asks on a GPU."""
    if cfg.train.cuda_graphs and device.type != "cuda":
        log.info("train.cuda_graphs ignored: no CUDA device")
    return "reduce-overhead" if cfg.train.cuda_graphs and device.type == "cuda" else None


def _forward_loss(cfg: Config, objective: HybridObjective, forward_net, backend, device: torch.device):
    """f(x, y, sigma, n) -> (loss, (loss, denoise, mask) fp32 means): the step's math up to the loss;
    compiled as one region with model.compile_step (its backward compiled with it by AOTAutograd)."""
    def forward_loss(x, y, sigma, n):
        denoise, mask = objective.terms(forward_net, x, y, sigma, n)
        loss = (denoise + mask).mean()
        return loss, torch.stack([loss.detach(), denoise.detach().mean(), mask.detach().mean()]).float()

    if not cfg.model.compile_step:
        return forward_loss
    if backend.name != "plain":
        raise ValueError(f"model.compile_step=true needs the plain backend (this run uses {backend.name}): "
                         "set model.compile_step=false or train.backend=plain")
    return torch.compile(forward_loss, fullgraph=True, mode=_compile_mode(cfg, device))


class _FiniteWatch:
    """Non-finite losses: flagged on the device per micro-batch, read on the host only in `read`.

    flag(loss, step, micro) -> bool device flag (True: non-finite), kept for the next read;
    read() -> whether the last step read had a non-finite micro-batch; logs each one, and raises
    NonFiniteLossError once `max_bad` came in a row (counted in micro-batch order across reads)."""

    def __init__(self, max_bad: int, ckpt_dir: Path):
        self.max_bad, self.ckpt_dir = max_bad, ckpt_dir
        self.pending: list[tuple[int, int, torch.Tensor]] = []  # (step, micro-batch, flag)
        self.in_a_row, self.first_bad_step, self.last_skipped = 0, 0, False

    def flag(self, loss: torch.Tensor, step: int, micro: int) -> torch.Tensor:
        bad = ~torch.isfinite(loss.detach())
        self.pending.append((step, micro, bad))
        return bad

    def read(self) -> bool:
        if not self.pending:
            return self.last_skipped
        flags = torch.stack([bad for _, _, bad in self.pending]).tolist()  # the host read
        last_step = self.pending[-1][0]
        self.last_skipped = any(b for (s, _, _), b in zip(self.pending, flags, strict=True) if s == last_step)
        pending, self.pending = self.pending, []
        for (step, micro, _), bad in zip(pending, flags, strict=True):
            if not bad:
                self.in_a_row = 0
                continue
            self.in_a_row += 1
            self.first_bad_step = step if self.in_a_row == 1 else self.first_bad_step
            log.warning("non-finite loss at step %d (micro-batch %d); its update skipped (%d in a row)",
                        step, micro, self.in_a_row)
            if self.in_a_row >= self.max_bad:
                through = f" (through step {step})" if step != self.first_bad_step else ""
                raise NonFiniteLossError(
                    f"{self.in_a_row} non-finite losses in a row at step {self.first_bad_step}{through}; "
                    f"stopping. The last good checkpoint under {self.ckpt_dir} is intact: lower optim.lr "
                    "or check the data")
        return self.last_skipped


def _peak_mem_mb(device: torch.device) -> float:
    """Peak device memory (CUDA allocator) or peak resident set of this process (CPU), MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
