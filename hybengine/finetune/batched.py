"""R fine-tunes in one process: stacked weights, one vmapped forward/backward per step.

Each member is the fine-tune `run_finetune` would run on its own (see finetune_runner.prepare_finetune)
and consumes exactly what that run consumes, in the same order:
  - start weights: the checkpoint's, or for scratch the U-Net built right after
    `torch.manual_seed(seed * 1000)`, as in run_training;
  - batches: its own TrainLoader (its labeled subset, its seed), one batch per step;
  - noise: its own generator seeded `seed * 1000 + 1`, one `randn` of the batch's shape per step;
  - the runtime's parts, taken as the loop takes them: seeding (runtime/seeding.py), the fused AdamW
    (`make_optimizer`) driven by the plain back-end's update (`PlainBackend`: learning rate, backward,
    the step with its on-device skip flag), the `EMA`, the metrics writer (`MetricsLog`) and the
    atomic config write. AdamW and the EMA are elementwise, so stacking the members' weights into one
    module (`StackedParams`) changes nothing; only the clip norm is taken over each member's slice.
The forward is `torch.func.vmap` over `functional_call` of one U-Net with the members' weights
stacked on a leading axis R: x (R, B, I, H, W) -> F (R, B, I+K, H, W). The loss is the training loop's
own objective (`HybridObjective.terms`, supervised mode) on the (R*B) flattened batch, summed over
members; the members share no weights, so each one's gradient is its own run's gradient. Results
match the one-by-one runs up to float summation order (tests/test_batched_finetune.py).

Inside vmap the group norm and the upsample conv run as their plain-torch references (the fused
group norm is a custom op and the sub-pixel upsample an autograd.Function over a strided view,
neither with a vmap rule); the loss, outside vmap, may use the fused op.

Non-finite losses: flagged on the device per member as the loop flags them (no host read in a step),
read with the metrics once per `log_every`. The loop would skip that member's update alone; one
fused AdamW over the stacked weights can only skip all members' (which it does, so the weights stay
finite until the read), so the read stops the group with `NonFiniteMembersError` and the sweep reruns
its runs one by one, in the loop, under the loop's own rule.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, vmap

from .. import ops
from ..config import Config, KernelConfig, dumps, flatten, per_member_keys, to_dict
from ..data import build_train_loader
from ..objective import HybridObjective
from ..runtime import cpu_malloc
from ..runtime.atomic import atomic_write_text
from ..runtime.backends import PlainBackend, make_optimizer
from ..runtime.cpu_threads import torch_threads
from ..runtime.distributed import pick_device
from ..runtime.ema import EMA
from ..runtime.run_log import MetricsLog
from ..runtime.seeding import objective_generator, seed_all
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
        (c.finetune.distill > 0, "finetune.distill must be 0 (its frozen start is not batched)"),
    ) if bad]
    if problems:
        raise ValueError("batched fine-tune: " + "; ".join(problems))


def _start_weights(run_cfg: Config, init: dict | None, device: torch.device) -> dict[str, torch.Tensor]:
    """The member's initial parameters, drawn exactly as run_training draws them (rank 0)."""
    seed_all(run_cfg.train.seed)
    net = build_unet(run_cfg.model, run_cfg.data.image_channels, run_cfg.data.num_classes)
    if init is not None:
        net.load_state_dict(init)
    return {k: v.detach().to(device) for k, v in net.named_parameters()}


class StackedParams(nn.Module):
    """R members' parameters, each stacked on a leading axis R, as one module: the runtime's optimizer,
    back-end and EMA take it as they take a net (its parameters, in the net's order)."""

    def __init__(self, starts: list[dict[str, torch.Tensor]]):
        super().__init__()
        self.names = list(starts[0])
        for i, name in enumerate(self.names):  # registered in order: parameters() follows `names`
            self.register_parameter(f"p{i}", nn.Parameter(torch.stack([s[name] for s in starts])))

    def by_name(self) -> dict[str, torch.Tensor]:
        """{net parameter name: stacked tensor (R, ...)}, for functional_call."""
        return dict(zip(self.names, self.parameters(), strict=True))


class BatchedTrainer:
    """Stacked weights of R runs of one architecture, with the runtime's AdamW, update and EMA;
    `step` trains all R once."""

    def __init__(self, c0: Config, starts: list[dict[str, torch.Tensor]], device: torch.device):
        t, o, d = c0.train, c0.optim, c0.data
        self.cfg, self.R, self.device = c0, len(starts), device
        self.stack = StackedParams(starts)
        optimizer = make_optimizer(list(zip(self.stack.names, self.stack.parameters(), strict=True)), o.lr,
                                   (o.beta1, o.beta2), o.weight_decay, o.body_lr_scale)
        # the loop's update, one micro-batch per step; the clip is per member (`_clip_per_member`)
        self.backend = PlainBackend(self.stack, optimizer, "fp32", 1, 0.0, device)
        self.ema = EMA(self.stack, t.ema_halflife_steps) if t.ema_halflife_steps > 0 else None
        self.ops = ops.resolve_ops(vmap_kernels(c0.kernels), device)
        ops.log_ops(self.ops)
        self.net = build_unet(c0.model, d.image_channels, d.num_classes, self.ops).to(device)  # buffers, code
        self.objective = HybridObjective(c0.objective, d.ignore_index, self.ops)  # supervised: sigma_clean
        self.sigma = self.objective.sample_sigma(t.batch_size, device, None)
        # F for every member at once: weights (R, ...), inputs (R, B, ...), c_noise (R, B)
        self.forward = vmap(lambda p, x_in, c_noise: functional_call(self.net, p, (x_in, c_noise)))

    def _stacked_net(self, R: int, B: int):
        """The members as one net over the flattened (R*B) batch, for the shared objective."""
        params = self.stack.by_name()

        def net(x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
            return self.forward(params, x_in.unflatten(0, (R, B)), c_noise.view(R, B)).flatten(0, 1)
        return net

    def step(self, x: torch.Tensor, y: torch.Tensor, n: torch.Tensor, lr: float
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x, n: (R, B, I, H, W), y: (R, B, H, W). One optimizer step for every member. Returns the
        members' (loss, denoise, mask) means (R, 3), detached, and their non-finite flags (R,) on the
        device (None without train.check_finite). The loss is the training loop's objective
        (HybridObjective.terms) on the (R*B) flattened batch; the members share no weights, so each gets
        its own gradient. A non-finite member skips every member's update (module docstring)."""
        c, R, B = self.cfg, self.R, x.shape[1]
        denoise, mask = self.objective.terms(self._stacked_net(R, B), x.flatten(0, 1), y.flatten(0, 1),
                                             self.sigma.repeat(R), n.flatten(0, 1))
        denoise, mask = denoise.view(R, -1).mean(dim=1), mask.view(R, -1).mean(dim=1)
        loss = denoise + mask  # (R,): each member's loss.mean()
        bad = ~torch.isfinite(loss.detach()) if c.train.check_finite else None
        skip = bad.any().float() if bad is not None else None
        self.backend.set_lr(lr)
        self.backend.backward(loss.sum())
        if c.optim.grad_clip > 0:
            _clip_per_member(list(self.stack.parameters()), c.optim.grad_clip)
        self.backend.micro_step(skip)
        if self.ema is not None:
            self.ema.update(self.stack, skip)
        return torch.stack([loss, denoise, mask], dim=1).detach().float(), bad

    def member_nets(self) -> list[UNet]:
        """Each member's best weights (EMA if on, else raw) in its own U-Net."""
        c, d = self.cfg, self.cfg.data
        final = self.ema.shadow if self.ema is not None else [p.detach() for p in self.stack.parameters()]
        nets = []
        for r in range(self.R):
            member = build_unet(c.model, d.image_channels, d.num_classes, self.ops).to(self.device)
            state = member.state_dict()  # persistent buffers (if any) are the module's own, as in run_training
            state.update({k: v[r] for k, v in zip(self.stack.names, final, strict=True)})
            member.load_state_dict(state)
            nets.append(member)
        return nets


def run_batched(members: list[tuple[Config, dict | None]], device: torch.device | None = None
                ) -> list[MemberResult]:
    """Trains every (run config, start weights) member at once; returns each member's trained net.
    Writes each member's config.yaml (atomically) and metrics.jsonl (the loop's writer and records, per
    log_every) into its train.out_dir, replacing the metrics of an earlier attempt there."""
    with torch_threads(members[0][0].train.threads):  # for this call only (hybengine/runtime/cpu_threads.py)
        return _run(members, device)


def _run(members: list[tuple[Config, dict | None]], device: torch.device | None) -> list[MemberResult]:
    # ---- set-up -------------------------------------------------------------------------------
    run_cfgs = [c for c, _ in members]
    check_batchable(run_cfgs)
    c0 = run_cfgs[0]
    t = c0.train
    R = len(members)
    device = device or pick_device(0)
    cpu_malloc.apply(t.cpu_malloc, device.type)
    trainer = BatchedTrainer(c0, [_start_weights(c, init, device) for c, init in members], device)
    loaders = [iter(build_train_loader(c.data, t.batch_size, c.train.seed)) for c in run_cfgs]
    gens = [objective_generator(c.train.seed, 0, device) for c in run_cfgs]
    logs = []
    for c in run_cfgs:
        out = Path(c.train.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", dumps(c))
        (out / "metrics.jsonl").unlink(missing_ok=True)  # this attempt's records only
        logs.append(MetricsLog(out / "metrics.jsonl", t.steps, 0, show_progress=False, plot=t.plot))
    log.info("batched fine-tune: %d runs on %s, %d steps, %.2f M parameters each", R, device, t.steps,
             sum(p[0].numel() for p in trainer.stack.parameters()) / 1e6)

    sums = torch.zeros(R, 3, device=device)  # per member: (loss, denoise, mask) summed since the last write
    flags = []  # per step: the members' non-finite flags (R,), on the device until the next read
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
            terms, bad = trainer.step(torch.stack(xs), torch.stack(ys), torch.stack(ns), learning_rate(c0, step))
            sums += terms
            n_sum += 1
            if bad is not None:
                flags.append(bad)

            # ---- maintenance: non-finite flags and per-member metrics once per log_every --------
            if step % t.log_every == 0 or step == t.steps:
                if flags:
                    _raise_if_non_finite(torch.stack(flags), step - len(flags) + 1)  # host read
                    flags.clear()
                means = (sums / n_sum).tolist()  # host read
                ips = n_sum * t.batch_size * R / max(time.perf_counter() - t0, 1e-9)
                lr = learning_rate(c0, step)
                for r in range(R):
                    logs[r].write({"step": step, "loss": means[r][0], "denoise": means[r][1], "mask": means[r][2],
                                   "images_per_s": ips / R, "lr": lr, "batched": R})
                sums.zero_()
                n_sum, t0 = 0, time.perf_counter()
    finally:
        for metrics in logs:
            metrics.close()  # also draws progress.png
    return [MemberResult(net, t.steps) for net in trainer.member_nets()]


def _raise_if_non_finite(flags: torch.Tensor, first_step: int) -> None:
    """flags: (steps, R) non-finite flags of consecutive steps from `first_step`; raises
    NonFiniteMembersError naming the members and the first step with one."""
    if not bool(flags.any()):
        return
    steps, members = flags.nonzero(as_tuple=True)
    first = int(steps.min())
    raise NonFiniteMembersError(sorted(set(members[steps == first].tolist())), first_step + first)


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
