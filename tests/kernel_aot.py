"""Compile the Triton kernels for an H100 (sm_90) on a machine without a GPU.

The interpreter runs kernel bodies as NumPy, so it lets through what only the compiler rejects
(types of loop-carried values, arithmetic on specialised constants, layouts). This compiles the
kernel variants the launchers produce, down to a cubin with the ptxas that ships with triton, and
reports registers and spills. It must run in a process where TRITON_INTERPRET is unset (tests
start it as a subprocess).

    python tests/kernel_aot.py            # the main variants (what the test runs)
    python tests/kernel_aot.py --all      # every dtype x layout x flag combination
    python tests/kernel_aot.py --real     # the GroupNorm-SiLU variants of the U-Net's real call list
                                          # (hybengine.call_list: base preset, batch 32, 128x128, bf16)
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

gns = importlib.import_module("hybengine.kernels.group_norm_silu")
rows = importlib.import_module("hybengine.kernels.group_norm_silu_rows")
hl = importlib.import_module("hybengine.kernels.hybrid_loss")
slab = importlib.import_module("hybengine.kernels.group_norm_silu_slab")

CUDA = SimpleNamespace(device=SimpleNamespace(type="cuda"))  # what the heuristics look at
FLOAT_ARGS = {"eps", "w_mask"}


def compile_variant(kernel, pointers: dict, sizes: dict, flags: dict, unit_strides: tuple, arch: int):
    """Compile one specialisation: pointer dtypes, sizes for the heuristics, constexpr flags."""
    jit = kernel
    while not isinstance(jit, triton.runtime.JITFunction):  # under triton.heuristics
        jit = jit.fn
    flags = dict(flags)
    unit_strides = [s for s in unit_strides if s in jit.arg_names]
    values = {**sizes, **{name: CUDA for name in pointers}, **{s: 1 for s in unit_strides}}
    meta = dict(flags.pop("_meta", {}))  # launch parameters given by the caller (no heuristics)
    for name, heur in getattr(kernel, "values", {}).items():  # triton.heuristics, evaluated as at launch
        meta[name] = heur({**values, **flags, **meta})
    constexprs = {**flags, **{k: v for k, v in meta.items() if k != "num_warps"}, **{s: 1 for s in unit_strides}}
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
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": meta["num_warps"]})


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
            params = {"PART": "fp32", "SUMS": "fp32", "W": dt, "B": dt, "SCALE": dt, "DW": dt, "DB": dt,
                      "DSCALE": dt, "DSHIFT": dt}
            if layout == "nchw":  # no strided tensor in it
                yield (f"_gns_param_grads_kernel {dt} split={split}", gns._gns_param_grads_kernel, params,
                       {"C": 128}, {"HAS_SCALE": True, "SPLIT": split}, ())
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


def real_variants(everything: bool):
    """The slab and group kernels at every distinct shape of the real call list, both layouts, bf16."""
    from hybengine.call_list import real_calls
    from hybengine.kernels.launch import gpu_split_plan

    shapes = sorted({(c.c, c.h * c.w, c.groups) for c in real_calls()})
    layouts = {"nchw": ("stride_xp", "stride_yp", "stride_dp", "stride_gp"),
               "nhwc": ("stride_xc", "stride_yc", "stride_dc", "stride_gc")}
    dt = "bf16"
    io = {"X": dt, "Y": dt, "DY": dt, "DX": dt, "W": "fp32", "B": "fp32", "SCALE": dt, "SHIFT": dt, "MEAN": "fp32",
          "RSTD": "fp32", "PART": "fp32", "SUMS": "fp32", "COEF": "fp32", "DSCALE": dt, "DSHIFT": dt, "DW": "fp32",
          "DB": "fp32"}
    seen = set()
    for (c, hw, g), (layout, unit) in itertools.product(shapes, layouts.items()):
        cfg = slab.slab_config(c, hw, g, layout == "nhwc", True)
        meta = {k: cfg[k] for k in ("BLOCK_C", "BLOCK_P", "BLOCK_G", "BLOCK_CG", "NUM_STAGES", "num_warps")}
        key = (layout, tuple(sorted(meta.items())))
        if key not in seen or everything:
            seen.add(key)
            for has_mod in (True, False):
                flags = {"HAS_SCALE": has_mod, "HAS_SHIFT": has_mod, "_meta": meta}
                label = f"C={c} HW={hw} {layout} mod={has_mod} {meta}"
                yield f"_slab_fwd_kernel {label}", slab._slab_fwd_kernel, io, {}, flags, unit
                yield f"_slab_bwd_kernel {label}", slab._slab_bwd_kernel, io, {}, flags, unit
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
    yield ("_slab_param_grads_kernel", slab._slab_param_grads_kernel, io, {}, {"HAS_SCALE": True,
           "_meta": {"BLOCK_C": 1024, "num_warps": 4}}, ())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--all", action="store_true")
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--real", action="store_true", help="the real call list's GroupNorm-SiLU variants")
    args = p.parse_args()
    failures = 0
    for label, kernel, pointers, sizes, flags, unit in (real_variants(args.all) if args.real else variants(args.all)):
        t0 = time.perf_counter()
        try:
            compiled = compile_variant(kernel, pointers, sizes, flags, unit, args.arch)
            report = ptxas_report(compiled.asm["ptx"], args.arch)
            regs = re.match(r"(\d+) regs", report)
            if regs:
                md = compiled.metadata
                report += ", " + occupancy(int(regs.group(1)), md.num_warps, md.shared)
            print(f"ok    {label}: {report} ({time.perf_counter() - t0:.1f}s)", flush=True)
        except Exception as e:  # report every failing variant, not just the first
            failures += 1
            print(f"FAIL  {label}: {type(e).__name__}: {e}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
