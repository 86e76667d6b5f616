"""Compile the Triton kernels for an H100 (sm_90) on a machine without a GPU.

The interpreter runs kernel bodies as NumPy, so it lets through what only the compiler rejects
(types of loop-carried values, arithmetic on specialised constants, layouts). This compiles the
kernel variants the launchers produce, down to a cubin with the ptxas that ships with triton, and
reports registers and spills. It must run in a process where TRITON_INTERPRET is unset (tests
start it as a subprocess).

    python tests/kernel_aot.py            # the main variants (what the test runs)
    python tests/kernel_aot.py --all      # every dtype x layout x flag combination
    python tests/kernel_aot.py --real     # the GroupNorm-SiLU variants of the U-Net's real call list
                                          # (benchmarks/call_list.py: base preset, batch 32, 128x128, bf16),
                                          # with the benchmark's pre-8a0dcf0 group kernels
    python tests/kernel_aot.py --real --check-spills        # and fail on any spill (the committed report)
    python tests/kernel_aot.py --real --subset --check-spills  # a few of them, each tiling kind (the test)
    python tests/kernel_aot.py --real --tune-registers      # print registers.TABLE: per kernel and
                                          # tiling, the most programs per SM that compile without spills

Register budgets: the launchers pass `maxnreg` (kernels/group_norm_silu/registers.py); the compiles
here pass the same option, as a launch would.
"""
import argparse
import importlib
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

gns = importlib.import_module("hybengine.kernels.group_norm_silu.groups")
rows = importlib.import_module("hybengine.kernels.group_norm_silu.rows")
hl = importlib.import_module("hybengine.kernels.hybrid_loss")
slab = importlib.import_module("hybengine.kernels.group_norm_silu.slab")
pg = importlib.import_module("hybengine.kernels.group_norm_silu.param_grads")

CUDA = SimpleNamespace(device=SimpleNamespace(type="cuda"))  # what the heuristics look at
FLOAT_ARGS = {"eps", "w_mask"}


def compile_variant(kernel, pointers: dict, sizes: dict, flags: dict, unit_strides: tuple, arch: int,
                    registers: bool = True):
    """Compile one specialisation: pointer dtypes, sizes for the heuristics, constexpr flags; with
    `registers` False, without the register budget (ptxas chooses). Returns (compiled, launch meta)."""
    jit = kernel
    while not isinstance(jit, triton.runtime.JITFunction):  # under triton.heuristics
        jit = jit.fn
    flags = dict(flags)
    unit_strides = [s for s in unit_strides if s in jit.arg_names]
    values = {**sizes, **{name: CUDA for name in pointers}, **{s: 1 for s in unit_strides}}
    meta = dict(flags.pop("_meta", {}))  # launch parameters given by the caller (no heuristics)
    for name, heur in getattr(kernel, "values", {}).items():  # triton.heuristics, evaluated as at launch
        meta[name] = heur({**values, **flags, **meta})
    options = {"num_warps": meta.pop("num_warps"), "maxnreg": meta.pop("maxnreg", None) if registers else None}
    meta.pop("maxnreg", None)
    constexprs = {**flags, **meta, **{s: 1 for s in unit_strides}}
    signature = {}
    for name in jit.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = "*" + pointers[name]
        elif name == "SYNC":
            signature[name] = "*i32"
        else:
            signature[name] = "fp32" if name in FLOAT_ARGS else "i32"
    src = ASTSource(jit, signature, constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    return compiled, {**meta, **options}


def occupancy(regs: int, num_warps: int, shared: int) -> str:
    """Programs per SM on an sm_90 (64 K registers, 64 warps, 228 KB shared memory per SM)."""
    by_regs = 65536 // max(1, regs * 32 * num_warps)
    by_warps = 64 // num_warps
    by_smem = (228 * 1024) // shared if shared else by_warps
    return f"{min(by_regs, by_warps, by_smem)} programs/SM ({num_warps} warps, {shared} B shared)"


def ptxas_report(ptx: str, arch: int) -> str:
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.ptx"
        path.write_text(ptx)
        res = subprocess.run([str(ptxas), "-v", f"--gpu-name=sm_{arch}a", str(path), "-o", os.devnull],
                             capture_output=True, text=True)
    regs = re.search(r"Used (\d+) registers", res.stderr)
    spills = re.findall(r"(\d+) bytes spill (stores|loads)", res.stderr)
    spill_bytes = sum(int(n) for n, _ in spills)
    return f"{regs.group(1) if regs else '?'} regs, {spill_bytes} spill bytes"


def _param_grads_variant(tag: str, dt: str, c: int, split: bool, write_mod: bool) -> tuple:
    """The parameter-gradient kernel all designs share, launched as for batch 32."""
    pointers = {"PART": "fp32", "SUMS": "fp32", "W": dt, "B": dt, "SCALE": dt, "DW": dt, "DB": dt,
                "DSCALE": dt, "DSHIFT": dt}
    meta = {"BLOCK_N": pg.block_n(32), "BLOCK_C": pg.BLOCK_C, "num_warps": pg.NUM_WARPS}
    return (f"_param_grads_kernel {tag}", pg._param_grads_kernel, pointers, {"C": c},
            {"HAS_SCALE": True, "SPLIT": split, "WRITE_MOD": write_mod, "_meta": meta}, ())


def variants(everything: bool):
    """(label, kernel, pointers, sizes, flags, unit_strides) for the launchers' specialisations."""
    dtypes = ["bf16", "fp16", "fp32"] if everything else ["bf16"]
    layouts = {"nchw": ("stride_xp", "stride_yp", "stride_dp", "stride_gp"), "nhwc": ("stride_xc", "stride_yc",
                                                                                      "stride_dc", "stride_gc")}
    # GroupNorm: a (16, 128, 128, 128) U-Net activation with 32 groups; split when SPLIT
    for dt, (layout, unit) in itertools.product(dtypes, layouts.items()):
        io = {"X": dt, "Y": dt, "DY": dt, "DX": dt, "W": dt, "B": dt, "SCALE": dt, "SHIFT": dt,
              "MEAN": "fp32", "RSTD": "fp32", "PART": "fp32", "SUMS": "fp32"}
        for split in (False, True):
            sizes = {"CG": 4, "HW_PER_SPLIT": 8192 if split else 16384, "stride_xc": 16384}
            mods = [(True, True), (False, False)] if everything or not split else [(True, True)]
            for has_scale, has_shift in mods:
                flags = {"HAS_SCALE": has_scale, "HAS_SHIFT": has_shift}
                label = f"{dt} {layout} split={split} scale={has_scale} shift={has_shift}"
                yield f"_gns_fwd_kernel {label}", gns._gns_fwd_kernel, io, sizes, {**flags, "SPLIT": split}, unit
                yield f"_gns_bwd_kernel {label}", gns._gns_bwd_kernel, io, sizes, {**flags, "SPLIT": split}, unit
                if split:
                    yield f"_gns_bwd_reduce_kernel {label}", gns._gns_bwd_reduce_kernel, io, sizes, flags, unit
            if split:
                yield f"_gns_stats_kernel {dt} {layout}", gns._gns_stats_kernel, io, sizes, {}, unit
            if layout == "nchw":  # no strided tensor in it
                yield _param_grads_variant(f"{dt} split={split}", dt, 128, split, True)
    # GroupNorm rows kernels (channels-last only): C = 96 is not a power of two, 2048 the widest
    rows_unit = ("stride_xc", "stride_yc", "stride_dc", "stride_gc")
    for dt in dtypes:
        io = {"X": dt, "Y": dt, "DY": dt, "DX": dt, "W": dt, "B": dt, "SCALE": dt, "SHIFT": dt,
              "MEAN": "fp32", "RSTD": "fp32", "PART": "fp32", "COEF": "fp32"}
        for c in (96, 2048) if everything else (96,):
            sizes = {"C": c, "P_SPLIT": 1024}
            flags = {"HAS_SCALE": True, "HAS_SHIFT": True}
            yield f"_rows_stats_kernel {dt} C={c}", rows._rows_stats_kernel, io, sizes, {}, rows_unit
            for name in ("_rows_fwd_kernel", "_rows_bwd_reduce_kernel", "_rows_dx_kernel"):
                yield f"{name} {dt} C={c}", getattr(rows, name), io, sizes, flags, rows_unit
    # Loss: F (B, 3+K, H, W) in the run's dtype, x and x_n fp32, y int64
    data_unit = ("stride_np", "stride_xp", "stride_yp")  # x_n, x NCHW and y contiguous in both cases
    loss_layouts = {"nchw": ("stride_op", "stride_gp", "stride_fp", *data_unit),
                    "nhwc": ("stride_oc", "stride_gc", "stride_fc", *data_unit)}
    for dt, (layout, unit) in itertools.product(dtypes, loss_layouts.items()):
        io = {"OUT": dt, "XN": "fp32", "X": "fp32", "Y": "i64", "C_SKIP": "fp32", "C_OUT": "fp32", "LAM": "fp32",
              "DOUT": dt, "PART": "fp32", "DF": dt, "G_DENOISE": "fp32", "G_MASK": "fp32", "MASK_SCALE": "fp32",
              "DENOISE": "fp32", "MASK": "fp32"}
        for n_img, write_grad in [(3, True), (1, False)] if everything else [(3, True)]:
            flags = {"N_IMG": n_img, "WRITE_GRAD": write_grad}
            sizes = {"NC": n_img + 2, "P_PER_PROG": 4096}
            yield (f"_hybrid_loss_fwd_kernel {dt} {layout} I={n_img} grad={write_grad}", hl._hybrid_loss_fwd_kernel,
                   io, sizes, flags, unit)
        yield (f"_hybrid_loss_bwd_kernel {dt} {layout}", hl._hybrid_loss_bwd_kernel, io,
               {"NC": 5, "P_PER_PROG": 4096}, {"N_IMG": 3}, unit)
        if layout == "nchw" and dt == dtypes[0]:
            yield "_hybrid_loss_finish_kernel", hl._hybrid_loss_finish_kernel, io, {"B": 64}, {"N_IMG": 3}, ()


def real_variants(everything: bool, subset: bool = False):
    """The slab, group and rows kernels at every distinct shape of the real call list, both layouts, bf16,
    and the pre-8a0dcf0 group kernels of the benchmark (benchmarks/probes/) beside the group kernels.

    `subset` (the test): one shape, C=128 at 128x128: the group kernels in both layouts, the slab kernels
    channels-last and unmodulated; all of these spilled before registers.TABLE."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from call_list import real_calls

    from hybengine.kernels.launch import gpu_split_plan

    shapes = sorted({(c.c, c.h * c.w, c.groups) for c in real_calls()})
    if subset:
        shapes = [(c, hw, g) for c, hw, g in shapes if (c, hw) == (128, 16384)]
    layouts = {"nchw": ("stride_xp", "stride_yp", "stride_dp", "stride_gp"),
               "nhwc": ("stride_xc", "stride_yc", "stride_dc", "stride_gc")}
    dt = "bf16"
    io = {"X": dt, "Y": dt, "DY": dt, "DX": dt, "W": "fp32", "B": "fp32", "SCALE": dt, "SHIFT": dt, "MEAN": "fp32",
          "RSTD": "fp32", "PART": "fp32", "SUMS": "fp32", "COEF": "fp32", "DSCALE": dt, "DSHIFT": dt, "DW": "fp32",
          "DB": "fp32"}
    seen = set()
    for (c, hw, g), (layout, unit) in itertools.product(shapes, layouts.items()):
        cfg = slab.slab_config(c, hw, g, layout == "nhwc", True)
        for kind, kernel in (("FWD", slab._slab_fwd_kernel), ("BWD", slab._slab_bwd_kernel)):
            if subset and layout == "nchw":
                continue
            meta = slab._launch_meta(cfg, kind)
            key = (kind, layout, tuple(sorted(meta.items())))
            if key in seen and not everything:
                continue
            seen.add(key)
            for has_mod in (False,) if subset else (True, False):
                flags = {"HAS_SCALE": has_mod, "HAS_SHIFT": has_mod, "_meta": meta}
                label = f"C={c} HW={hw} {layout} mod={has_mod} {meta}"
                yield f"{kernel.__name__} {label}", kernel, io, {}, flags, unit
        cg = c // g
        _, chunk = gpu_split_plan(32 * g, hw, cg)
        sizes = {"CG": cg, "HW_PER_SPLIT": chunk, "stride_xc": hw if layout == "nchw" else 1}
        gkey = (layout, cg, chunk)
        if gkey not in seen:
            seen.add(gkey)
            split = chunk < hw
            flags = {"HAS_SCALE": True, "HAS_SHIFT": True}
            gio = {**io, "W": dt, "B": dt}
            tag = f"C={c} HW={hw} {layout}"
            yield f"_gns_fwd_kernel {tag}", gns._gns_fwd_kernel, gio, sizes, {**flags, "SPLIT": split}, unit
            yield f"_gns_bwd_kernel {tag}", gns._gns_bwd_kernel, gio, sizes, {**flags, "SPLIT": split}, unit
            if split:
                yield f"_gns_bwd_reduce_kernel {tag}", gns._gns_bwd_reduce_kernel, gio, sizes, flags, unit
                yield f"_gns_stats_kernel {tag}", gns._gns_stats_kernel, gio, sizes, {}, unit
            if not subset:  # the benchmark's pre-8a0dcf0 group kernels, under the group kernels' budgets
                pre = pre8a0dcf0()
                yield f"pre8a0dcf0 _gns_fwd_kernel {tag}", pre.fwd, gio, sizes, {**flags, "SPLIT": split}, unit
                yield f"pre8a0dcf0 _gns_bwd_kernel {tag}", pre.bwd, gio, sizes, {**flags, "SPLIT": split}, unit
                if split:
                    yield f"pre8a0dcf0 _gns_bwd_reduce_kernel {tag}", pre.bwd_reduce, gio, sizes, flags, unit
                    yield f"pre8a0dcf0 _gns_stats_kernel {tag}", pre.stats, gio, sizes, {}, unit
        pkey = ("params", c, chunk < hw)
        if pkey not in seen and not subset:  # the parameter gradients of the group and rows kernels
            seen.add(pkey)
            yield _param_grads_variant(f"C={c} split={chunk < hw}", dt, c, chunk < hw, True)
        _, p_split = gpu_split_plan(32, hw, c)
        rkey = ("rows", c, p_split)
        if layout == "nhwc" and rkey not in seen and not subset:  # the rows kernels take channels-last only
            seen.add(rkey)
            rio = {**io, "W": dt, "B": dt}
            rsizes = {"C": c, "P_SPLIT": p_split}
            flags = {"HAS_SCALE": True, "HAS_SHIFT": True}
            yield f"_rows_stats_kernel C={c} HW={hw} nhwc", rows._rows_stats_kernel, rio, rsizes, {}, unit
            for name in ("_rows_fwd_kernel", "_rows_bwd_reduce_kernel", "_rows_dx_kernel"):
                yield f"{name} C={c} HW={hw} nhwc", getattr(rows, name), rio, rsizes, flags, unit
    if not subset:
        yield _param_grads_variant("slab", "bf16", 128, False, False)


def pre8a0dcf0():
    """The group kernels before commit 8a0dcf0 (benchmarks/probes/gn_groups_pre8a0dcf0.py): a GroupKernels."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from probes.gn_groups_pre8a0dcf0 import PRE

    return PRE


def tiling_key(label: str, meta: dict) -> tuple | None:
    """registers.TABLE's key of a compiled variant: (kernel, layout, block a, block b, warps); None for
    kernels that take another kernel's budgets (the pre-8a0dcf0 group kernels take the group kernels')."""
    name, layout = label.split()[0], "nhwc" if " nhwc" in label else "nchw"
    if name in ("_slab_fwd_kernel", "_slab_bwd_kernel"):
        return name, layout, meta["BLOCK_C"], meta["BLOCK_P"], meta["num_warps"]
    if name.startswith("_gns_") and "BLOCK_HW" in meta:
        return name, layout, meta["BLOCK_C"], meta["BLOCK_HW"], meta["num_warps"]
    return None


def spill_bytes(ptx: str, arch: int, maxnreg: int) -> int:
    """ptxas's spill bytes for `ptx` under a `.maxnreg` directive."""
    ptx = re.sub(r"(\.reqntid \d+)", rf"\1\n.maxnreg {maxnreg}", ptx, count=1)
    return int(re.search(r", (\d+) spill bytes", ptxas_report(ptx, arch)).group(1))


def tune_registers(arch: int) -> int:
    """Prints registers.TABLE for the real call list: per tiling, the most programs per SM (4 down to 1)
    whose register budget compiles all its variants without a spill."""
    from hybengine.kernels.group_norm_silu.registers import budget

    fits_all: dict[tuple, set[int]] = {}
    for label, kernel, pointers, sizes, flags, unit in real_variants(False):
        compiled, meta = compile_variant(kernel, pointers, sizes, flags, unit, arch, registers=False)
        key = tiling_key(label, meta)
        if key is None:
            continue
        fits = {k for k in (4, 3, 2, 1) if spill_bytes(compiled.asm["ptx"], arch, budget(k, meta["num_warps"])) == 0}
        fits_all[key] = fits_all.get(key, fits) & fits  # ptxas is not monotone in the budget: every variant
        print(f"# {label}: no spill at {sorted(fits, reverse=True)} programs/SM", flush=True)
    print("TABLE = {")
    for key in sorted(fits_all):
        print(f"    {key!r}: {max(fits_all[key]) if fits_all[key] else 'None  # spills at every budget'},")
    print("}")
    return 0 if all(fits_all.values()) else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--all", action="store_true")
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--real", action="store_true", help="the real call list's GroupNorm-SiLU variants")
    p.add_argument("--subset", action="store_true", help="with --real: one shape per tiling kind")
    p.add_argument("--check-spills", action="store_true", help="a variant that spills fails")
    p.add_argument("--tune-registers", action="store_true", help="print registers.TABLE for the real call list")
    args = p.parse_args()
    if args.tune_registers:
        return tune_registers(args.arch)
    failures = spilled = 0
    todo = real_variants(args.all, args.subset) if args.real else variants(args.all)
    for label, kernel, pointers, sizes, flags, unit in todo:
        t0 = time.perf_counter()
        try:
            compiled, meta = compile_variant(kernel, pointers, sizes, flags, unit, args.arch)
            report = ptxas_report(compiled.asm["ptx"], args.arch)
            regs = re.match(r"(\d+) regs", report)
            if regs:
                md = compiled.metadata
                report += ", " + occupancy(int(regs.group(1)), md.num_warps, md.shared)
            report += f", maxnreg {meta['maxnreg']}"
            spills = not re.search(r", 0 spill bytes", report)
            spilled += spills
            status = "SPILL" if spills and args.check_spills else "ok   "
            print(f"{status} {label}: {report} ({time.perf_counter() - t0:.1f}s)", flush=True)
        except Exception as e:  # report every failing variant, not just the first
            failures += 1
            print(f"FAIL  {label}: {type(e).__name__}: {e}", flush=True)
    print(f"# {failures} failed, {spilled} spilled", flush=True)
    return 1 if failures or (args.check_spills and spilled) else 0


if __name__ == "__main__":
    sys.exit(main())
