"""Writes docs/performance.md, and README.md's performance table, from benchmarks/results/*.csv, so
that tables and rows cannot drift.

    python benchmarks/render.py            # rewrite docs/performance.md and README.md's table
    python benchmarks/render.py --check    # exit 1 if either is stale

Each table shows, per device, the latest run in its CSV (rows are appended, so the last run of a
device is the newest); every row names its date and commit. The prose here states the method only;
every number on the page comes from a CSV row. Investigations and their negative results are in
docs/lab/.
"""
from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PAGE = REPO / "docs" / "performance.md"

Row = dict[str, str]


def read(name: str) -> list[Row]:
    with open(RESULTS / name, newline="") as f:
        return list(csv.DictReader(f))


def latest_per_device(rows: list[Row], extra: tuple[str, ...] = ()) -> list[list[Row]]:
    """The rows of the last (commit, date, *extra) run of each device, devices in order of appearance."""
    last: dict[tuple, tuple] = {}
    for r in rows:
        last[(r["device"], *(r[k] for k in extra))] = (r["commit"], r["date"])
    return [[r for r in rows if r["device"] == key[0] and tuple(r[k] for k in extra) == key[1:]
             and (r["commit"], r["date"]) == run] for key, run in last.items()]


def table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def run_label(rows: list[Row]) -> str:
    r = rows[0]
    return f"**{r['device']}**, torch {r['torch']}, {r['date']}, commit `{r['commit']}`"


def ratio(value: str, spread: str = "") -> str:
    if not value:
        return ""
    return f"{float(value):.3f}" + (f" ({spread})" if spread and spread != "1.000-1.000" else "")


# ---------------------------------------------------------------------------------------------
# Sections: (title, method prose, function returning the tables)


def train_tables() -> str:
    out = []
    for rows in latest_per_device(read("train.csv"), ("preset",)):
        r0 = rows[0]
        out.append(f"{run_label(rows)}: preset {r0['preset']}, batch {r0['batch']}, crop {r0['crop']}, "
                   f"{r0['method']} ({'paired step by step' if r0['method'] == 'lockstep' else 'whole rounds'})\n")
        out.append(table(["configuration", "images/s", "x plain (p10-p90)", "x strong (p10-p90)", "MFU"],
                         [[r["config"], r["images_per_s"],
                           ratio(r["paired_vs_plain"], r["paired_vs_plain_range"]) or ratio(r["vs_plain"]),
                           ratio(r["paired_vs_strong"], r["paired_vs_strong_range"]) or ratio(r["vs_strong"]),
                           r["mfu"]] for r in rows]))
    return "\n".join(out)


def phase_tables() -> str:
    rows = [r for r in read("cpu_phases.csv") if r["method"] == "lockstep"]
    out = []
    for run in latest_per_device(rows):
        out.append(f"{run_label(run)}: preset {run[0]['preset']}, batch {run[0]['batch']}, crop {run[0]['crop']}, "
                   f"{run[0]['rounds']} lockstep rounds; ms per step, medians over rounds\n")
        out.append(table(["configuration", "step", "convolutions (oneDNN)", "everything else", "forward", "backward",
                          "page faults / step", "paired x " + (run[0]["paired_vs"] or "plain") + " (p10-p90)"],
                         [[r["config"], r["step_ms"], r["onednn_ms"], r["other_ms"], r["forward_ms"],
                           r["backward_ms"], r["faults_per_step"], ratio(r["paired_ratio"], r["paired_range"]) or "1"]
                          for r in run]))
    return "\n".join(out)


def kernel_tables(name: str, shape_keys: tuple[str, ...], eager: str) -> str:
    """fwd+bwd rows of the fused op against the `eager` provider and torch.compile of the reference."""
    rows = [r for r in read(name) if r["mode"] == "fwd+bwd"]
    out = []
    for run in latest_per_device(rows):
        timing = "graph" if any(r["timing"] == "graph" for r in run) else "call"
        run = [r for r in run if r["timing"] == timing]

        def key(r: Row) -> tuple:
            return tuple(r[k] for k in shape_keys)

        ms = {(r["provider"], key(r)): float(r["ms_p50"]) for r in run}
        fused = [r for r in run if r["provider"] in ("fused", "native") and r["impl"] != "reference"]
        seen, body = set(), []
        for r in fused:
            if key(r) in seen:
                continue
            seen.add(key(r))
            t = float(r["ms_p50"])
            vs = [f"{ms[(p, key(r))] / t:.2f}x" if (p, key(r)) in ms else "" for p in (eager, "compile")]
            body.append([*key(r), r["impl"], r["ms_p50"], r["roofline"], *vs])
        out.append(f"{run_label(run)}: fwd+bwd, *{timing}* timing\n")
        out.append(table([*shape_keys, "body", "ms (p50)", "of roofline", "vs eager", "vs compile"], body))
    return "\n".join(out)


def upsample_tables() -> str:
    out = []
    for run in latest_per_device(read("upsample_conv.csv")):
        out.append(f"{run_label(run)}: fwd+bwd, alternating rounds\n")
        out.append(table(["shape", "dtype", "layout", "reference ms", "sub-pixel ms", "speed-up (range)", "max error"],
                         [[r["shape"], r["dtype"], r["layout"], r["reference_ms"], r["subpixel_ms"],
                           ratio(r["speedup"], r["speedup_range"]), r["max_err"]] for r in run]))
    return "\n".join(out)


def data_tables() -> str:
    out = []
    for run in latest_per_device(read("data.csv")):
        out.append(f"{run_label(run)}\n")
        out.append(table(["bench", "provider", "threads", "batch", "crop", "images/s (p20-p80)"],
                         [[r["bench"], r["provider"], r["threads"], r["batch"], r["crop"],
                           f"{r['images_per_s_p50']} ({r['images_per_s_p20']}-{r['images_per_s_p80']})"]
                          for r in run]))
    return "\n".join(out)


def sweep_tables() -> str:
    rows = read("sweep.csv")
    return table(["device", "runs R", "steps", "one by one (s)", "batched (s)", "speed-up", "auto picks", "date",
                  "commit"],
                 [[r["device"], r["R"], r["steps"], r["sequential_s"], r["batched_s"], r["speedup"], r["auto_choice"],
                   r["date"], f"`{r['commit']}`"] for r in rows])


SECTIONS: list[tuple[str, str, Callable[[], str]]] = [
    ("Training step, end to end", """\
`benchmarks/bench_train.py` runs the real training loop (data loading included) for three
configurations side by side in one invocation: **plain** (eager fp32 NCHW, reference ops, the
baseline), **strong** (bf16 autocast + channels-last + torch.compile, without our kernels) and
**engine** (`configs/engine/<device>.yaml`). Warm-up and compile time are left out. On a GPU the
configurations run in alternating rounds; on the shared 2-core CPU, whose speed swings within
minutes, they run in **lockstep** (`benchmarks/lockstep.py`): all start together and take turns one
step at a time, the order rotating every step, and each engine step is paired with the plain step
taken next to it. The paired ratio is the median over pairs, with the 10th-90th percentile beside
it. MFU = images/s x FLOPs per image (3x the forward's `torch.utils.flop_counter` count) / the
device's peak.""", train_tables),
    ("Where a CPU step goes", """\
`benchmarks/cpu_step_phases.py` puts timers around the real loop's phases (through `LoopHooks`)
and sums oneDNN's own execution times for its convolution primitives (ONEDNN_VERBOSE); no profiler
runs. Configurations run in lockstep, as above. Why the CPU stops near this ratio:
[docs/lab/cpu-bound.md](lab/cpu-bound.md).""", phase_tables),
    ("GroupNorm-SiLU kernel", """\
`benchmarks/bench_group_norm_silu.py`, forward + backward with the per-sample modulation, at the
shapes the U-Net runs. Two timings of the same call: *graph* replays it from a CUDA graph (device
time, what a GPU-bound compiled step pays); *call* is one Python call between events, host work
included. "of roofline" counts the 5 element-sizes per element that fwd+bwd must move, at the copy
bandwidth measured in the same run. vs eager: `nn.GroupNorm` + `nn.SiLU`; vs compile: torch.compile
of the pure-PyTorch reference.""", lambda: kernel_tables("group_norm_silu.csv",
                                                          ("shape", "groups", "dtype", "layout"), "eager")),
    ("Joint loss kernel", """\
`benchmarks/bench_hybrid_loss.py`: the fused denoise + mask loss, which reads F once and writes dF
in the same pass, against the eager reference and its torch.compile; timings as above.""",
     lambda: kernel_tables("hybrid_loss.csv", ("shape", "dtype", "layout"), "reference")),
    ("Upsample conv", """\
`benchmarks/bench_upsample_conv.py`: the U-Net's nearest-2x upsample + 3x3 conv computed as one 2x2
conv with 4x the output channels on the un-upsampled input, then the four phases interleaved (the
same function, 2.25x fewer FLOPs), against upsample-then-conv; forward and both halves of the
backward, the two timed alternately.""", upsample_tables),
    ("Data loaders", """\
`benchmarks/bench_data.py`: training batches per second from the torch DataLoader (decoding every
file, or the decoded tiles cached in memory) and from DALI (`cpu`, or `mixed` decoding on the GPU).""",
     data_tables),
    ("Fine-tune sweeps: one by one or batched", """\
`benchmarks/bench_sweep.py`: R fine-tunes trained one after another against the same R trained at
once with stacked weights (`torch.func.vmap`); `sweep.runner=auto` makes the same measurement on the
device before a sweep and says which it picked.""", sweep_tables),
]

HEADER = """# Performance

<!-- generated by benchmarks/render.py from benchmarks/results/*.csv; do not edit by hand -->

Every speed figure is a ratio measured side by side in one run, new path over baseline on the same
machine and inputs; absolute times count only on a GPU. Each table shows the newest run of each
device in its CSV, with the date and commit of that run. Reproduce: the calls of `benchmarks/gpu_run.sh`
on a GPU (`benchmarks/README.md`, "A GPU window"), or the bench script named in each section
(`benchmarks/README.md` lists them). Older runs stay in the CSVs; investigations, including the ones
that did not pay off, are in [lab/](lab/README.md).
"""


README = REPO / "README.md"
BEGIN, END = "<!-- performance table: generated by benchmarks/render.py -->", "<!-- end of performance table -->"


def headline() -> str:
    """README's table: the engine's end-to-end ratios in each device's newest training-step run."""
    body = []
    for rows in latest_per_device(read("train.csv"), ("preset",)):
        engine = [r for r in rows if r["config"] == "engine"]  # one row per invocation of that run
        if not engine:
            continue
        r = engine[0]
        vs_plain = [ratio(e["paired_vs_plain"], e["paired_vs_plain_range"]) or ratio(e["vs_plain"]) for e in engine]
        vs_strong = [ratio(e["paired_vs_strong"], e["paired_vs_strong_range"]) or ratio(e["vs_strong"])
                     for e in engine]
        body.append([r["device"], f"{r['preset']}, batch {r['batch']}, {r['crop']}x{r['crop']}",
                     ", ".join(v for v in vs_plain if v), ", ".join(v for v in vs_strong if v), r["date"]])
    return table(["device", "model, input", "engine x plain", "engine x strong", "measured"], body)


def readme_with_headline(text: str) -> str:
    """README.md's text with the block between BEGIN and END replaced by `headline()`."""
    a, b = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:a] + "\n" + headline() + text[b:]


def render() -> str:
    parts = [HEADER]
    for title, prose, body in SECTIONS:
        parts.append(f"\n## {title}\n\n{prose}\n\n{body()}")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="compare with the committed page instead of writing it")
    args = p.parse_args(argv)
    outputs = {PAGE: render(), README: readme_with_headline(README.read_text())}
    stale = [path for path, text in outputs.items() if not path.is_file() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path} is stale: run python benchmarks/render.py", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(outputs[path])
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
