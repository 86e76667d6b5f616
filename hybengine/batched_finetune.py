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
stacked on a leading axis R: x (R, B, I, H, W) -> F (R, B, I+K, H, W). The loss is then computed on
the (R*B) flattened batch (per-sample terms, hybengine/objective.py, supervised mode) and summed over
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
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call, vmap

from . import ops
from .config import Config, KernelConfig, dumps
from .data import build_train_loader
from .engine import cpu_malloc
from .engine.distributed import pick_device
from .objective import edm_precond, soft_dice_loss
from .training_loop import _lr
from .unet import UNet, build_unet

log = logging.getLogger("hybengine.batched")

# Config keys that may differ between members of one batched group (all else must be equal).
MEMBER_KEYS = {"data.labeled_subset", "train.seed", "train.out_dir", "finetune.checkpoint", "finetune.budget",
               "finetune.seed", "finetune.weights"}


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

def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def group_key(run_cfg: Config) -> str:
    """Members with equal keys can train together: same architecture, data, objective and schedule."""
    flat = _flat(dataclasses.asdict(run_cfg))
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
        self.net = build_unet(c0.model, d.image_channels, d.num_classes).to(device)  # buffers and the code
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=o.lr, betas=(o.beta1, o.beta2),
                                           weight_decay=o.weight_decay)
        self.decay = 0.5 ** (1.0 / t.ema_halflife_steps) if t.ema_halflife_steps > 0 else None
        self.shadow = [p.detach().clone() for p in self.params.values()] if self.decay is not None else None
        obj = c0.objective
        self.sigma = torch.full((t.batch_size,), obj.sigma_clean, device=device)  # supervised: fixed sigma
        self.c_skip, self.c_out, self.c_in, self.c_noise, _ = edm_precond(self.sigma, obj.sigma_data)
        self.lam = torch.zeros(self.R * t.batch_size, device=device)  # supervised: no denoise term
        self.forward = vmap(lambda p, x_in: functional_call(self.net, p, (x_in, self.c_noise)))

    def step(self, x: torch.Tensor, y: torch.Tensor, n: torch.Tensor, lr: float) -> torch.Tensor:
        """x, n: (R, B, I, H, W), y: (R, B, H, W). One optimizer step for every member; returns the
        members' losses (R,), detached. Mirrors HybridObjective (supervised) and the training loop."""
        c, R, bcast = self.cfg, self.R, (1, -1, 1, 1, 1)
        obj, d = c.objective, c.data
        x_n = x + self.sigma.view(bcast) * n
        out = self.forward(self.params, self.c_in.view(bcast) * x_n)  # (R, B, I+K, H, W)
        flat = out.flatten(0, 1)
        denoise, mask = ops.hybrid_loss(flat, x_n.flatten(0, 1), x.flatten(0, 1), y.flatten(0, 1),
                                        self.c_skip.repeat(R), self.c_out.repeat(R), self.lam, obj.w_mask,
                                        d.ignore_index)
        if obj.dice_weight > 0:
            mask = mask + obj.dice_weight * soft_dice_loss(flat[:, d.image_channels:], y.flatten(0, 1),
                                                           d.ignore_index)
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
            member = build_unet(c.model, d.image_channels, d.num_classes).to(self.device)
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
    ops.configure(vmap_kernels(c0.kernels), device)
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
                sums += trainer.step(torch.stack(xs), torch.stack(ys), torch.stack(ns), _lr(c0, step))
            except NonFiniteMembersError as e:
                raise NonFiniteMembersError(e.members, step) from None
            n_sum += 1

            # ---- maintenance: per-member loss once per log_every ---------------------------------
            if step % t.log_every == 0 or step == t.steps:
                means = (sums / n_sum).tolist()  # host sync
                ips = n_sum * t.batch_size * R / max(time.perf_counter() - t0, 1e-9)
                for r in range(R):
                    logs[r].write(json.dumps({"step": step, "loss": means[r], "mask": means[r],
                                              "images_per_s": ips / R, "lr": _lr(c0, step), "batched": R}) + "\n")
                sums.zero_()
                n_sum, t0 = 0, time.perf_counter()
    finally:
        for f in logs:
            f.close()
    return [MemberResult(net, t.steps) for net in trainer.member_nets()]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(run_cfg: Config, R: int, device: torch.device, repeats: int = 3) -> tuple[float, float]:
    """Median seconds per training step, on synthetic batches of run_cfg's shape: (one run on its own,
    R runs batched). The one-run step is the training loop's (ops as run_cfg.kernels resolves them)."""
    from .engine.backends import make_optimizer
    from .engine.ema import EMA
    from .objective import HybridObjective

    t, d = run_cfg.train, run_cfg.data
    g = torch.Generator().manual_seed(0)
    x = torch.randn(t.batch_size, d.image_channels, d.crop, d.crop, generator=g).to(device)
    y = torch.randint(0, d.num_classes, (t.batch_size, d.crop, d.crop), generator=g).to(device)

    def timed(fn) -> float:
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - t0

    ops.configure(run_cfg.kernels, device)
    net = build_unet(run_cfg.model, d.image_channels, d.num_classes).to(device)
    opt = make_optimizer(net, run_cfg.optim.lr, (run_cfg.optim.beta1, run_cfg.optim.beta2), 0.0)
    objective = HybridObjective(dataclasses.replace(run_cfg.objective, mode="supervised"), d.ignore_index)
    gen = torch.Generator(device).manual_seed(1)
    ema = EMA(net, t.ema_halflife_steps) if t.ema_halflife_steps > 0 else None

    def one_step() -> None:
        denoise, mask = objective(net, x, y, gen)
        loss = (denoise + mask).mean()
        bool(torch.isfinite(loss))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(net)

    start = {k: v.detach().clone() for k, v in net.named_parameters()}
    trainer = BatchedTrainer(run_cfg, [start] * R, device)
    xs, ys = x.expand(R, *x.shape).contiguous(), y.expand(R, *y.shape).contiguous()
    ns = torch.randn(xs.shape, generator=g).to(device)
    batched_ops = vmap_kernels(run_cfg.kernels)

    def batched_step() -> None:
        trainer.step(xs, ys, ns, run_cfg.optim.lr)

    # Interleaved (one-run step, batched step) pairs, so that a change in machine load hits both alike.
    seq_times, bat_times = [], []
    ops_log, level = logging.getLogger("hybengine.ops"), logging.getLogger("hybengine.ops").level
    ops_log.setLevel(logging.WARNING)  # the op choice is switched per pair; logged once above
    try:
        for i in range(repeats + 1):  # the first pair warms up (allocations, kernel selection)
            ops.configure(run_cfg.kernels, device)  # the one-run path keeps its own op choice
            ts = timed(one_step)
            ops.configure(batched_ops, device)
            tb = timed(batched_step)
            if i:
                seq_times.append(ts)
                bat_times.append(tb)
    finally:
        ops_log.setLevel(level)
    sequential, batched = sorted(seq_times)[repeats // 2], sorted(bat_times)[repeats // 2]
    return sequential, batched


@torch.no_grad()
def _clip_per_member(stacked: list[torch.Tensor], max_norm: float) -> None:
    """torch.nn.utils.clip_grad_norm_ applied to each member's slice (leading axis) on its own."""
    grads = [p.grad for p in stacked if p.grad is not None]
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads])  # (P, R)
    total = norms.norm(dim=0)  # (R,)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))
