"""Check every fused op against the float64 reference on a device (the GPU half of the tests).

Same judging helpers as the CPU tests (tests/kernel_helpers.py): each output and gradient must be
within a few times PyTorch's own error on the same rounded inputs. Covered: group_norm_silu and
hybrid_loss in fp32, bf16 and fp16, NCHW and channels-last, odd and U-Net-like sizes, shapes the
launch plan splits over several programs per group, forced splits, modulation variants,
bitwise-deterministic gradients, opcheck, and a fullgraph torch.compile of a tiny U-Net block
(forward and backward against eager); the same for the channels-last rows kernels and for the
slab kernels (both layouts, and the real call list's shapes at batch 2 in bf16); and the
sub-pixel upsample conv (kernels/upsample_conv.py) in every dtype and layout.

The engine's real path comes first (opcheck, the fullgraph compile, the joint loss, the upsample
conv, GroupNorm-SiLU through the default design), the other designs' kernels after, so a time
limit (--budget-s: checks not started by then are listed as skipped) cuts those last.
--preflight is the minute at the start of a GPU run (benchmarks/gpu_run.py): every fused op against
the reference in bf16 and fp32 (fp32 on a CPU), both layouts, one odd shape and one the launch plan
splits, stopping at the first failure with its reason.

    python benchmarks/check_kernels.py --device cuda --json gpu_out/check.json
    python benchmarks/check_kernels.py --device cuda --preflight
    TRITON_INTERPRET=1 python benchmarks/check_kernels.py --device cpu --quick    # a dry run
"""
import argparse
import itertools
import json
import sys
import time
import traceback
from functools import partial
from pathlib import Path

import repo_imports  # noqa: E402, F401  (before hybengine: works without an install)
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the judging helpers the CPU tests use

from kernel_helpers import (  # noqa: E402
    TinyBlock,
    check_group_norm_silu,
    check_hybrid_loss,
    check_upsample_conv,
    gn_inputs,
    loss_and_grads,
    loss_inputs,
    loss_terms_and_grad,
    tiny_batch,
    upsample_inputs,
)

from hybengine import ops  # noqa: E402
from hybengine.config import KernelConfig  # noqa: E402
from hybengine.kernels import bodies, hybrid_loss  # noqa: E402
from hybengine.kernels.group_norm_silu.design import (  # noqa: E402
    group_norm_silu_bwd_triton,
    group_norm_silu_fwd_triton,
)
from hybengine.kernels.launch import split_plan  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# (n, c, h, w, groups): odd sizes; U-Net-like; few groups on large images (split by the launch plan)
GN_SHAPES = [(2, 6, 7, 9, 3), (1, 5, 7, 9, 1), (1, 12, 7, 9, 12), (4, 64, 32, 32, 32), (2, 96, 24, 40, 32),
             (1, 32, 128, 128, 1), (2, 64, 90, 90, 8)]
# --preflight: an odd shape and one the launch plan splits over several programs per group, per device
PREFLIGHT_GN_SHAPES = {"cuda": [(2, 6, 7, 9, 3), (1, 32, 128, 128, 1)], "cpu": [(2, 6, 7, 9, 3), (1, 2, 16, 16, 1)]}
# (n, c_in, c_out, h, w) of the upsample's input: odd sizes; the base preset's deepest stage
UPSAMPLE_SHAPES = [(2, 5, 6, 7, 9), (4, 512, 512, 16, 16)]
# (b, I, K, h, w)
LOSS_SHAPES = [(2, 3, 2, 7, 9), (1, 1, 5, 7, 9), (3, 3, 3, 8, 8), (8, 3, 2, 64, 64), (4, 1, 4, 100, 90)]


class FirstFailure(Exception):
    """Raised by a fail-fast Checker after recording the first failing check."""


class Checker:
    """Runs named checks, printing one line each; the JSON report is rewritten after every check so
    a run cut short by a time limit still leaves what it found. Past `budget_s` a check is recorded
    as skipped instead of run; with `fail_fast` the first failure raises FirstFailure."""

    def __init__(self, json_path: Path | None, header: dict, budget_s: float | None = None,
                 fail_fast: bool = False):
        self.results, self.json_path, self.header = [], json_path, header
        self.start, self.budget_s, self.fail_fast = time.perf_counter(), budget_s, fail_fast

    def run(self, name: str, fn) -> None:
        t0 = time.perf_counter()
        if self.budget_s is not None and t0 - self.start > self.budget_s:
            self.results.append({"check": name, "status": "skipped", "detail": "budget spent", "seconds": 0.0})
            self._write()
            return
        try:
            detail = fn()
            status = "ok"
        except Exception as e:  # record and go on: one report lists every failure
            detail = f"{type(e).__name__}: {e}"
            status = "FAIL"
            traceback.print_exc()
        self.results.append({"check": name, "status": status, "detail": detail,
                             "seconds": round(time.perf_counter() - t0, 2)})
        shown = detail if isinstance(detail, str) else " ".join(f"{k} {v:.1e}" for k, v in (detail or {}).items())
        print(f"{status:4s} {name}  {shown}", flush=True)
        self._write()
        if status == "FAIL" and self.fail_fast:
            raise FirstFailure(f"{name}: {detail}")

    def _write(self) -> None:
        if self.json_path:
            self.json_path.parent.mkdir(parents=True, exist_ok=True)
            self.json_path.write_text(json.dumps({**self.header, "results": self.results}, indent=1))


def gn_checks(ck: Checker, device, dtypes, shapes, modulation: bool = True):
    for n, c, h, w, g in shapes:
        splits = split_plan(n * g, h * w, c // g, device)[0]
        for dt in dtypes:
            for cl in (False, True):
                name = f"group_norm_silu {(n, c, h, w)} G={g} S={splits} {dt} {'nhwc' if cl else 'nchw'}"
                inputs = gn_inputs(n, c, h, w, channels_last=cl, device=device)
                ck.run(name, partial(check_group_norm_silu, inputs, g, DTYPES[dt]))  # the fused op
    for scale, shift in [(False, False), (True, False), (False, True)] if modulation else []:
        for dt in dtypes:
            inputs = gn_inputs(2, 6, 7, 9, scale=scale, shift=shift, device=device)
            ck.run(f"group_norm_silu modulation scale={scale} shift={shift} {dt}",
                   partial(check_group_norm_silu, inputs, 3, DTYPES[dt]))


def gn_triton_run(inputs, hw_per_split):
    """The group kernels' launchers with a forced split size (None: the launch plan)."""
    x, weight, bias, s, t, dy = inputs
    y, mean, rstd = group_norm_silu_fwd_triton(x, weight, bias, s, t, 4, 1e-5, hw_per_split=hw_per_split)
    return (y, *group_norm_silu_bwd_triton(dy, x, weight, bias, s, t, mean, rstd, 4, 1e-5, hw_per_split=hw_per_split))


def gn_rows_run(inputs, p_split):
    """The rows kernels' launchers with a forced chunk size (None: the launch plan)."""
    from hybengine.kernels.group_norm_silu.rows import group_norm_silu_bwd_rows, group_norm_silu_fwd_rows

    x, weight, bias, s, t, dy = inputs
    y, mean, rstd = group_norm_silu_fwd_rows(x, weight, bias, s, t, 4, 1e-5, p_split=p_split)
    return (y, *group_norm_silu_bwd_rows(dy, x, weight, bias, s, t, mean, rstd, 4, 1e-5, p_split=p_split))


def gn_forced_split_and_determinism(ck: Checker, device, dtypes, run, layouts, label):
    """run(inputs, size) with a forced split against the launch plan, and twice for identical bits."""
    for dt in dtypes:
        for cl in layouts:
            inputs = [v.to(DTYPES[dt]) for v in gn_inputs(2, 16, 33, 31, channels_last=cl, device=device)]

            def split_vs_whole(inputs=inputs):
                whole, split = run(inputs, None), run(inputs, 64)
                return {f"split_vs_whole_{i}": (a.double() - b.double()).abs().max().item()
                        for i, (a, b) in enumerate(zip(whole, split, strict=True))}

            def deterministic(inputs=inputs):
                for size in (None, 64):
                    for a, b in zip(run(inputs, size), run(inputs, size), strict=True):
                        assert torch.equal(a, b), "outputs differ between identical runs"
                return {}

            layout = "nhwc" if cl else "nchw"
            ck.run(f"{label} forced split vs whole {dt} {layout}", split_vs_whole)
            ck.run(f"{label} deterministic {dt} {layout}", deterministic)


def gn_rows_checks(ck: Checker, device, dtypes, shapes):
    """The channels-last rows kernels (kernels/group_norm_silu/rows.py): the shapes, forced chunks, determinism."""
    design_ops = ops.resolve_ops(KernelConfig(group_norm_silu="fused", group_norm_silu_channels_last="rows"),
                                 device)
    for n, c, h, w, g in shapes:
        for dt in dtypes:
            inputs = gn_inputs(n, c, h, w, channels_last=True, device=device)
            ck.run(f"group_norm_silu rows {(n, c, h, w)} G={g} {dt} nhwc",
                   partial(check_group_norm_silu, inputs, g, DTYPES[dt], design_ops.group_norm_silu))
    gn_forced_split_and_determinism(ck, device, dtypes, gn_rows_run, (True,), "group_norm_silu rows")


def gn_slab_run(inputs, chunk):
    """The slab launchers; `chunk` given: shrunken units and chunks (several per group, partial last)."""
    from hybengine.kernels.group_norm_silu.slab import group_norm_silu_bwd_slab, group_norm_silu_fwd_slab, slab_config

    x, weight, bias, s, t, dy = inputs
    cfg = None
    if chunk is not None:
        n, c, h, w = x.shape
        cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        cfg = slab_config(c, h * w, 4, cl, x.is_cuda, unit_elems=2 * (c // 4) * h * w, item_elems=chunk * 4,
                          min_chunk=chunk, nchw_chunk=chunk)
    y, mean, rstd = group_norm_silu_fwd_slab(x, weight, bias, s, t, 4, 1e-5, config=cfg)
    return (y, *group_norm_silu_bwd_slab(dy, x, weight, bias, s, t, mean, rstd, 4, 1e-5, config=cfg))


def gn_slab_checks(ck: Checker, device, dtypes, shapes):
    """The slab kernels (kernels/group_norm_silu/slab.py), both layouts: the shapes, the real call list's
    distinct shapes at batch 2 (on a GPU), shrunken chunks against the plan, determinism."""
    cases = [(shape, dt) for shape in shapes for dt in dtypes]
    if device.type == "cuda":  # the real shapes in the first dtype (bf16): the check stage's time limit
        from call_list import real_calls

        cases += [(shape, dtypes[0]) for shape in sorted({(2, c.c, c.h, c.w, c.groups) for c in real_calls()})]
    design_ops = ops.resolve_ops(KernelConfig(group_norm_silu="fused", group_norm_silu_channels_last="slab"),
                                 device)
    for ((n, c, h, w, g), dt), cl in itertools.product(cases, (False, True)):
        inputs = gn_inputs(n, c, h, w, channels_last=cl, device=device)
        ck.run(f"group_norm_silu slab {(n, c, h, w)} G={g} {dt} {'nhwc' if cl else 'nchw'}",
               partial(check_group_norm_silu, inputs, g, DTYPES[dt], design_ops.group_norm_silu))
    gn_forced_split_and_determinism(ck, device, dtypes, gn_slab_run, (False, True), "group_norm_silu slab")


def loss_checks(ck: Checker, device, dtypes, shapes, extras: bool = True):
    for shape in shapes:
        for dt in dtypes:
            for cl in (False, True):
                name = f"hybrid_loss {shape} {dt} {'nhwc' if cl else 'nchw'}"
                inputs, upstream = loss_inputs(*shape, channels_last=cl, device=device)
                ck.run(name, partial(check_hybrid_loss, inputs, upstream, DTYPES[dt]))
    if not extras:
        return
    inputs, upstream = loss_inputs(2, 3, 4, 7, 9, ignore_index=255, device=device)
    ck.run("hybrid_loss ignore_index=255", lambda: check_hybrid_loss(inputs, upstream, torch.float32, 255))

    def deterministic():
        inputs, upstream = loss_inputs(8, 3, 2, 64, 64, device=device)
        inputs = [t.to(torch.bfloat16) if t.is_floating_point() else t for t in inputs]
        first, second = (loss_terms_and_grad(hybrid_loss, inputs, upstream) for _ in range(2))
        for a, b in zip(first, second, strict=True):
            assert torch.equal(a, b), "outputs differ between identical runs"
        return {}

    ck.run("hybrid_loss deterministic bf16", deterministic)


def upsample_checks(ck: Checker, device, dtypes, shapes):
    for n, c, o, h, w in shapes:
        for dt in dtypes:
            for cl in (False, True):
                inputs = upsample_inputs(n, c, o, h, w, channels_last=cl, device=device)
                ck.run(f"upsample_conv subpixel {(n, c, o, h, w)} {dt} {'nhwc' if cl else 'nchw'}",
                       partial(check_upsample_conv, inputs, DTYPES[dt]))


def op_checks(ck: Checker, device):
    def gn_opcheck():
        x, weight, bias, s, t, _ = [v.float() for v in gn_inputs(2, 4, 3, 5, device=device)]
        op = torch.ops.hybengine.group_norm_silu_fwd.default
        torch.library.opcheck(op, (x.requires_grad_(), weight.requires_grad_(), bias, s.requires_grad_(), t, 2, 1e-5))
        x_cl = x.detach().contiguous(memory_format=torch.channels_last)
        torch.library.opcheck(op, (x_cl, weight, bias, None, None, 2, 1e-5))
        return {}

    def loss_opcheck():
        out, *rest = [t.float() if t.is_floating_point() else t for t in loss_inputs(2, 3, 2, 3, 5, device=device)[0]]
        torch.library.opcheck(torch.ops.hybengine.hybrid_loss_fwd.default,
                              (out.requires_grad_(), *rest, 0.3, -100, True))
        return {}

    def compiled_block():
        torch.manual_seed(0)
        model, inputs = TinyBlock().to(device), tiny_batch(device=device)
        eager = loss_and_grads(model, inputs)
        compiled = loss_and_grads(torch.compile(model, fullgraph=True), inputs)
        torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(compiled[1], eager[1], rtol=1e-5, atol=1e-5)
        for a, b in zip(compiled[2], eager[2], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        return {"loss": eager[0].item()}

    ck.run("opcheck group_norm_silu_fwd", gn_opcheck)
    ck.run("opcheck hybrid_loss_fwd", loss_opcheck)
    ck.run("torch.compile fullgraph tiny block fwd+bwd vs eager", compiled_block)


def preflight(ck: Checker, device: torch.device, dtypes: list[str]) -> None:
    """Every fused op against the reference in `dtypes`, both layouts: GroupNorm-SiLU on an odd shape and
    one the launch plan splits, the joint loss, the upsample conv."""
    gn_checks(ck, device, dtypes, PREFLIGHT_GN_SHAPES[device.type], modulation=False)
    loss_checks(ck, device, dtypes, LOSS_SHAPES[:1], extras=False)
    upsample_checks(ck, device, dtypes, UPSAMPLE_SHAPES[:1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small shapes only (and no bf16 on CPU)")
    p.add_argument("--preflight", action="store_true", help="the fast subset, stopping at the first failure")
    p.add_argument("--budget-s", type=float, default=None, help="start no check after this (the rest: skipped)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    table = bodies.op_backends()
    print(f"device {device}, torch {torch.__version__}, backends {table}", flush=True)
    if device.type == "cpu" and not bodies.INTERPRET:
        print("note: without TRITON_INTERPRET=1 the CPU runs the math path; the Triton launchers are skipped")
    # bf16 is wrong under the Triton interpreter (CPU); the GPU covers it
    dtypes = ["fp32", "fp16"] if device.type == "cpu" else ["bf16", "fp32", "fp16"]
    ck = Checker(args.json, {"device": str(device), "torch": torch.__version__, "backends": table},
                 budget_s=args.budget_s, fail_fast=args.preflight)
    t0 = time.perf_counter()
    try:
        if args.preflight:
            preflight(ck, device, ["fp32"] if device.type == "cpu" else ["bf16", "fp32"])
        else:
            checks(ck, device, dtypes, args.quick)
    except FirstFailure as e:
        print(f"FAIL preflight stopped at the first failure: {e}", flush=True)
    failed = [r for r in ck.results if r["status"] == "FAIL"]
    skipped = sum(r["status"] == "skipped" for r in ck.results)
    print(f"{len(ck.results) - len(failed) - skipped} ok, {len(failed)} failed, {skipped} skipped (budget), "
          f"{time.perf_counter() - t0:.0f}s")
    return 1 if failed else 0


def checks(ck: Checker, device: torch.device, dtypes: list[str], quick: bool) -> None:
    """Everything, the engine's real path first: opcheck and fullgraph compile, the joint loss, the
    upsample conv, GroupNorm-SiLU through the default design; then the forced splits and the other designs."""
    op_checks(ck, device)
    loss_checks(ck, device, dtypes, LOSS_SHAPES[:3] if quick else LOSS_SHAPES)
    upsample_checks(ck, device, dtypes, UPSAMPLE_SHAPES[:1] if quick else UPSAMPLE_SHAPES)
    gn_checks(ck, device, dtypes, GN_SHAPES[:3] if quick else GN_SHAPES)
    if bodies.select("group_norm_silu", device.type).startswith("triton"):
        gn_forced_split_and_determinism(ck, device, dtypes[:1] if quick else dtypes, gn_triton_run,
                                        (False, True), "group_norm_silu")
        gn_rows_checks(ck, device, dtypes[:1] if quick else dtypes, GN_SHAPES[:3] if quick else GN_SHAPES)
        gn_slab_checks(ck, device, dtypes[:1] if quick else dtypes, GN_SHAPES[:3] if quick else GN_SHAPES)


if __name__ == "__main__":
    sys.exit(main())
