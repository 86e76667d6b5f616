"""R fine-tunes in one process: stacked weights, one vmapped forward/backward per step.

Each member is the fine-tune `run_finetune` would run on its own (see finetune_runner.prepare_finetune)
and consumes exactly what that run consumes, in the same order:
  - start weights: the checkpoint's, or for scratch the U-Net built right after
    `torch.manual_seed(seed * 1000)`, as in run_training;
  - batches: its own TrainLoader (its labeled subset, its seed), one batch per step;
  - noise: its own generator seeded `seed * 1000 + 1`, one `randn` of the batch's shape per step;
  - AdamW, warm-up, global-norm clip and EMA with the same formulas, applied per member: AdamW and the
    EMA are elementwise (stacking changes nothing), the clip norm is taken over each member's slice.
The forward is `torch.func.vmap` over `functional_call` of one U-Net with the members' weights
stacked on a leading axis R: x (R, B, I, H, W) -> F (R, B, I+K, H, W). The loss is the training loop's
own objective (`HybridObjective.terms`, supervised mode) on the (R*B) flattened batch, summed over
members; the members share no weights, so each one's gradient is its own run's gradient. Results
match the one-by-one runs up to float summation order (tests/test_batched_finetune.py).

Inside vmap the group norm and the upsample conv run as their plain-torch references (the fused
group norm is a custom op and the sub-pixel upsample an autograd.Function over a strided view,
neither with a vmap rule); the loss, outside vmap, may use the fused op. A non-finite loss stops
the group with `NonFiniteMembersError` (the sequential loop would skip that member's batch and fall
out of step with the others); the sweep then reruns the group one by one.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call, vmap

from .. import ops
from ..config import Config, KernelConfig, dumps, flatten, per_member_keys, to_dict
from ..data import build_train_loader
from ..objective import HybridObjective
from ..runtime import cpu_malloc
from ..runtime.distributed import pick_device
from ..runtime.progress_plot import write_progress_png
from ..schedule import learning_rate
from ..training_loop import LoopHooks, run_training
from ..unet import UNet, build_unet

log = logging.getLogger("hybengine.batched")

# Config keys that may differ between members of one batched group (all else must be equal).
MEMBER_KEYS = per_member_keys()  # marked per_member in hybengine/config.py


class NonFiniteMembersError(RuntimeError):
    def __init__(self, members: list[int], step: int):
        super().__init__(f"non-finite loss for member(s) {members} at step {step}")
        self.members, self.step = members, step


@dataclass
class MemberResult:
    net: UNet  # the member's best weights (EMA if on, else raw), on the device
    step: int



def vmap_kernels(k: KernelConfig) -> KernelConfig:
    """The op choice inside vmap: references for the U-Net's ops, the configured loss (outside vmap)."""
    return KernelConfig(group_norm_silu="reference", hybrid_loss=k.hybrid_loss, upsample_conv="reference")



def group_key(run_cfg: Config) -> str:
    """Members with equal keys can train together: same architecture, data, objective and schedule."""
    flat = flatten(to_dict(run_cfg))
    return json.dumps({k: v for k, v in sorted(flat.items()) if k not in MEMBER_KEYS}, sort_keys=True)


def check_batchable(run_cfgs: list[Config]) -> None:
    """Raises ValueError naming what stops these runs from training as one batched group."""
    if not run_cfgs:
        raise ValueError("batched fine-tune: no runs given")
    keys = {group_key(c) for c in run_cfgs}
    if len(keys) > 1:
        raise ValueError("batched fine-tune: the runs differ in more than their subset, seed, checkpoint and "
                         "out_dir (e.g. architecture or steps); group them with group_key()")
    c = run_cfgs[0]
    problems = [msg for bad, msg in (
        (c.train.grad_accum != 1, "train.grad_accum must be 1"),
        (c.train.precision != "fp32", "train.precision must be fp32"),
        (c.model.dropout != 0, "model.dropout must be 0 (vmap would draw other dropout masks)"),
        (c.model.compile, "model.compile must be false"),
        (c.objective.mode != "supervised", "objective.mode must be supervised (fine-tuning)"),
    ) if bad]
    if problems:
        raise ValueError("batched fine-tune: " + "; ".join(problems))


def _start_weights(run_cfg: Config, init: dict | None, device: torch.device) -> dict[str, torch.Tensor]:
    """The member's initial parameters, drawn exactly as run_training draws them."""
    seed = run_cfg.train.seed
    torch.manual_seed(seed * 1000)
    np.random.seed(seed * 1000)
    random.seed(seed * 1000)
    net = build_unet(run_cfg.model, run_cfg.data.image_channels, run_cfg.data.num_classes)
    if init is not None:
        net.load_state_dict(init)
    return {k: v.detach().to(device) for k, v in net.named_parameters()}


class BatchedTrainer:
    """Stacked weights of R runs of one architecture, with AdamW and EMA; `step` trains all R once."""

    def __init__(self, c0: Config, starts: list[dict[str, torch.Tensor]], device: torch.device):
        t, o, d = c0.train, c0.optim, c0.data
        self.cfg, self.R, self.device = c0, len(starts), device
        self.params = {k: torch.stack([s[k] for s in starts]).requires_grad_() for k in starts[0]}
        self.ops = ops.resolve_ops(vmap_kernels(c0.kernels), device)
        ops.log_ops(self.ops)
        self.net = build_unet(c0.model, d.image_channels, d.num_classes, self.ops).to(device)  # buffers, code
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=o.lr, betas=(o.beta1, o.beta2),
                                           weight_decay=o.weight_decay)
        self.decay = 0.5 ** (1.0 / t.ema_halflife_steps) if t.ema_halflife_steps > 0 else None
        self.shadow = [p.detach().clone() for p in self.params.values()] if self.decay is not None else None
        self.objective = HybridObjective(c0.objective, d.ignore_index, self.ops)  # supervised: sigma_clean
        self.sigma = self.objective.sample_sigma(t.batch_size, device, None)
        # F for every member at once: weights (R, ...), inputs (R, B, ...), c_noise (R, B)
        self.forward = vmap(lambda p, x_in, c_noise: functional_call(self.net, p, (x_in, c_noise)))

    def _stacked_net(self, R: int, B: int):
        """The members as one net over the flattened (R*B) batch, for the shared objective."""
        def net(x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
            return self.forward(self.params, x_in.unflatten(0, (R, B)), c_noise.view(R, B)).flatten(0, 1)
        return net

    def step(self, x: torch.Tensor, y: torch.Tensor, n: torch.Tensor, lr: float) -> torch.Tensor:
        """x, n: (R, B, I, H, W), y: (R, B, H, W). One optimizer step for every member; returns the
        members' losses (R,), detached. The loss is the training loop's objective (HybridObjective.terms)
        on the (R*B) flattened batch; the members share no weights, so each gets its own gradient."""
        c, R, B = self.cfg, self.R, x.shape[1]
        denoise, mask = self.objective.terms(self._stacked_net(R, B), x.flatten(0, 1), y.flatten(0, 1),
                                             self.sigma.repeat(R), n.flatten(0, 1))
        loss = (denoise + mask).view(R, -1).mean(dim=1)  # (R,): each member's loss.mean()
        if c.train.check_finite:
            finite = torch.isfinite(loss)
            if not bool(finite.all()):  # host sync, as in the sequential loop
                raise NonFiniteMembersError((~finite).nonzero().flatten().tolist(), -1)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss.sum().backward()
        if c.optim.grad_clip > 0:
            _clip_per_member(list(self.params.values()), c.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.shadow is not None:
            with torch.no_grad():
                torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params.values()], 1.0 - self.decay)
        return loss.detach()

    def member_nets(self) -> list[UNet]:
        """Each member's best weights (EMA if on, else raw) in its own U-Net."""
        c, d = self.cfg, self.cfg.data
        final = self.shadow if self.shadow is not None else [p.detach() for p in self.params.values()]
        nets = []
        for r in range(self.R):
            member = build_unet(c.model, d.image_channels, d.num_classes, self.ops).to(self.device)
            state = member.state_dict()  # persistent buffers (if any) are the module's own, as in run_training
            state.update({k: v[r] for k, v in zip(self.params, final, strict=True)})
            member.load_state_dict(state)
            nets.append(member)
        return nets


def run_batched(members: list[tuple[Config, dict | None]], device: torch.device | None = None
                ) -> list[MemberResult]:
    """Trains every (run config, start weights) member at once; returns each member's trained net.
    Writes each member's config.yaml and metrics.jsonl (loss per log_every) into its train.out_dir."""
    # ---- set-up -------------------------------------------------------------------------------
    run_cfgs = [c for c, _ in members]
    check_batchable(run_cfgs)
    c0 = run_cfgs[0]
    t = c0.train
    R = len(members)
    device = device or pick_device(0)
    if t.threads:
        torch.set_num_threads(t.threads)
    cpu_malloc.apply(t.cpu_malloc, device.type)
    trainer = BatchedTrainer(c0, [_start_weights(c, init, device) for c, init in members], device)
    loaders = [iter(build_train_loader(c.data, t.batch_size, c.train.seed)) for c in run_cfgs]
    gens = [torch.Generator(device).manual_seed(c.train.seed * 1000 + 1) for c in run_cfgs]
    logs = []
    for c in run_cfgs:
        out = Path(c.train.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dumps(c))
        logs.append(open(out / "metrics.jsonl", "w"))  # noqa: SIM115 - closed below
    log.info("batched fine-tune: %d runs on %s, %d steps, %.2f M parameters each", R, device, t.steps,
             sum(p[0].numel() for p in trainer.params.values()) / 1e6)

    sums = torch.zeros(R, device=device)
    n_sum, t0 = 0, time.perf_counter()
    try:
        for step in range(1, t.steps + 1):
            # ---- one step for every member: batches and noise from each member's own streams ----
            xs, ys, ns = [], [], []
            for r in range(R):
                x, y = next(loaders[r])
                x, y = x.to(device), y.to(device)
                xs.append(x)
                ys.append(y)
                ns.append(torch.randn(x.shape, device=device, generator=gens[r], dtype=x.dtype))
            try:
                sums += trainer.step(torch.stack(xs), torch.stack(ys), torch.stack(ns), learning_rate(c0, step))
            except NonFiniteMembersError as e:
                raise NonFiniteMembersError(e.members, step) from None
            n_sum += 1

            # ---- maintenance: per-member loss once per log_every ---------------------------------
            if step % t.log_every == 0 or step == t.steps:
                means = (sums / n_sum).tolist()  # host sync
                ips = n_sum * t.batch_size * R / max(time.perf_counter() - t0, 1e-9)
                lr = learning_rate(c0, step)
                for r in range(R):
                    logs[r].write(json.dumps({"step": step, "loss": means[r], "mask": means[r],
                                              "images_per_s": ips / R, "lr": lr, "batched": R}) + "\n")
                sums.zero_()
                n_sum, t0 = 0, time.perf_counter()
    finally:
        for f in logs:
            f.close()
    for c in run_cfgs:
        write_progress_png(Path(c.train.out_dir))
    return [MemberResult(net, t.steps) for net in trainer.member_nets()]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(run_cfg: Config, R: int, device: torch.device, repeats: int = 3) -> tuple[float, float]:
    """Median seconds per training step, on a synthetic batch of run_cfg's shape: (one run on its own,
    R runs batched). The one-run step is the training loop's own (`run_training`, ops as run_cfg.kernels
    resolves them, fed the batch through its loader hook); after each of its steps, one batched step
    runs, so that a change in machine load hits both alike. The first pair warms up."""
    t, d = run_cfg.train, run_cfg.data
    g = torch.Generator().manual_seed(0)
    x = torch.randn(t.batch_size, d.image_channels, d.crop, d.crop, generator=g)
    y = torch.randint(0, d.num_classes, (t.batch_size, d.crop, d.crop), generator=g)
    start = {k: v.detach().to(device) for k, v in build_unet(run_cfg.model, d.image_channels, d.num_classes)
             .named_parameters()}
    trainer = BatchedTrainer(run_cfg, [start] * R, device)
    xs, ys = x.expand(R, *x.shape).to(device), y.expand(R, *y.shape).to(device)
    ns = torch.randn(xs.shape, generator=g).to(device)
    seq_times, bat_times, mark = [], [], [0.0]

    def after_loop_step(step: int) -> None:
        _sync(device)
        seq_times.append(time.perf_counter() - mark[0])
        t0 = time.perf_counter()
        trainer.step(xs, ys, ns, run_cfg.optim.lr)
        _sync(device)
        bat_times.append(time.perf_counter() - t0)
        mark[0] = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        steps = repeats + 1
        cfg = dataclasses.replace(
            run_cfg, objective=dataclasses.replace(run_cfg.objective, mode="supervised"),
            train=dataclasses.replace(t, steps=steps, out_dir=tmp, ckpt_every=0, log_every=steps, progress=False))
        hooks = LoopHooks(wrap_loader=lambda loader: itertools.repeat((x, y)), on_step=after_loop_step)
        mark[0] = time.perf_counter()
        run_training(cfg, console_logging=False, hooks=hooks)
    return statistics.median(seq_times[1:]), statistics.median(bat_times[1:])


@torch.no_grad()
def _clip_per_member(stacked: list[torch.Tensor], max_norm: float) -> None:
    """torch.nn.utils.clip_grad_norm_ applied to each member's slice (leading axis) on its own."""
    grads = [p.grad for p in stacked if p.grad is not None]
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads])  # (P, R)
    total = norms.norm(dim=0)  # (R,)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))
