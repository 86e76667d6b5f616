"""Ten minutes on a GPU, spent on answers: three prepared calls that each end by themselves.

A lent GPU machine comes bare (torch + CUDA, triton; no deepspeed, DALI or apex; no network; no
.git), for about 15 minutes in all, one command at most 10 minutes, and gives back at most 8 files
from $OUT, no deeper than $OUT/a/b/file. Each call here runs its stages in order, each under a time
limit cut to what is left of the call's budget (default 570 s: 9.5 minutes), logs everything, and
leaves in $OUT at most MAX_FILES flat files: summary.txt (rewritten after every stage), log.txt, the
stages' CSV/JSON/tables (rows written as they are measured), and bundle.tar.gz with everything else
under a size cap. Rows carry the commit given in HYBENGINE_COMMIT (no .git there).

    call 1  answers   preflight: every fused op against its float64 reference in bf16 and fp32,
                      both layouts, the split path (check_kernels.py --preflight), and three compiled
                      engine training steps (tiny preset);
                      the base preset's step, strong against engine, alternating rounds with a
                      paired interval (bench_train.py --method rounds, rows after every round);
                      the GroupNorm-SiLU real call list (groups, groups-pre8a0dcf0, slab after a
                      smoke check in its own process, rows, torch.compile, eager), rows per
                      configuration, with whatever time is left
    call 2  profile   the step by op family, strong and engine (profile_step.py, Chrome traces in
                      the bundle); the host-sync check; the joint loss and upsample-conv benches
    call 3  science   an experiment at GPU size (default configs/experiments/simulated_shortcut_gpu.yaml,
                      --science-config another): shards sharing the GPU, stopped in time for the
                      paired analysis of every label seed that finished

    OUT=gpu_out HYBENGINE_COMMIT=abc1234 bash benchmarks/gpu_run.sh 1
    GPU_RUN_DRY=1 bash benchmarks/gpu_run.sh 1          # CPU dry run: tiny sizes, the Triton interpreter

The dry run (--dry-run or GPU_RUN_DRY=1) runs every stage of a call with the same scripts and
options on the CPU at tiny sizes, one thread per process (every value that differs: `DRY` against
`GPU`, below): the stages that check or time Triton kernels run them under the interpreter in fp32
(bf16 is wrong there), the training stages take the CPU's own bodies, and configurations that compile
are swapped for eager ones (plain for strong: inductor on a shared 2-core CPU takes minutes); the call
list's stage times its first configuration only. tests/test_gpu_run.py runs it for each call.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
MAX_FILES = 8  # what a device call brings back from $OUT
BUNDLE = "bundle.tar.gz"
BUNDLE_CAP = 12 * 2**20  # bytes; a device call brings back files of at most 16 MiB
RESERVE_S = 20  # kept at the end of a call for the bundle and the summary
DEFAULT_SCIENCE = "configs/experiments/simulated_shortcut_gpu.yaml"  # issue 27 (simulated_pair_gpu: issue 15)


@dataclass
class Stage:
    """One step of a call: `argv(left_s)` is its command given the seconds it may take."""

    name: str
    limit_s: float  # at most this long; less when the call's budget is nearer
    argv: Callable[[float], list[str]]
    summary: str = r"^(FAIL|ok \d|\d+ ok|budget|round|per step|!!!)"  # log lines also put in the summary
    min_s: float = 20  # skipped when less time than this is left
    triton: bool = False  # runs Triton kernels: under the interpreter in a dry run
    outputs: tuple[str, ...] = ()  # files under the work folder copied to $OUT (flat) when the stage ends
    rc: int | None = None
    seconds: float = 0.0
    note: str = ""
    lines: list[str] = field(default_factory=list)


def py(script: str, *args: str) -> list[str]:
    return [sys.executable, str(BENCH / script), *args]


class Call:
    """Runs stages under one budget and keeps $OUT within what a device call brings back."""

    def __init__(self, name: str, out: Path, budget_s: float, dry: bool):
        self.name, self.out, self.dry = name, out, dry
        self.start, self.deadline = time.monotonic(), time.monotonic() + budget_s
        self.out.mkdir(parents=True, exist_ok=True)
        for old in self.out.iterdir():  # a reused $OUT: only this call's files come back
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        self.work = Path(tempfile.mkdtemp(prefix=f"gpu_run_{name}_"))
        self.log = (self.out / "log.txt").open("w")
        self.stages: list[Stage] = []
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYBENGINE_COMMIT": commit()}
        self.env.pop("TRITON_INTERPRET", None)  # real kernels on the GPU; the CPU's own bodies in a dry run
        self.sizes = DRY if dry else GPU
        if self.sizes.threads:
            self.env["OMP_NUM_THREADS"] = str(self.sizes.threads)

    def left(self) -> float:
        return self.deadline - time.monotonic() - RESERVE_S

    def run(self, stage: Stage) -> Stage:
        self.stages.append(stage)
        limit = min(stage.limit_s, self.left())
        if limit < stage.min_s:
            stage.note = f"skipped: {self.left():.0f}s left of the call's budget"
            self.write_summary()
            return stage
        argv = stage.argv(limit)
        self.log.write(f"\n=== {stage.name} (limit {limit:.0f}s): {' '.join(argv)}\n")
        self.log.flush()
        t0 = time.monotonic()
        env = {**self.env, "TRITON_INTERPRET": "1"} if self.dry and stage.triton else self.env
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", start_new_session=True)
        timer = _Killer(proc, limit)
        pattern = re.compile(stage.summary)
        for line in proc.stdout:
            self.log.write(line)
            if pattern.search(line):
                stage.lines.append(line.rstrip()[:300])
        self.log.flush()
        stage.rc = proc.wait()
        timer.cancel()
        stage.seconds = time.monotonic() - t0
        if timer.fired:
            stage.note = f"stopped at its limit of {limit:.0f}s"
        for name in stage.outputs:
            if (self.work / name).is_file():
                shutil.copy2(self.work / name, self.out / Path(name).name)
        self.log.write(f"--- {stage.name} rc={stage.rc} {stage.seconds:.0f}s {stage.note}\n")
        self.log.flush()
        self.write_summary()
        return stage

    def write_summary(self) -> None:
        head = (f"gpu_run call {self.name}{' (dry run, CPU)' if self.dry else ''}: commit "
                f"{self.env['HYBENGINE_COMMIT']}, {time.monotonic() - self.start:.0f}s of "
                f"{self.deadline - self.start:.0f}s\n")
        body = ""
        for s in self.stages:
            status = "not run" if s.rc is None else "ok" if s.rc == 0 else f"FAILED rc={s.rc}"
            body += f"\n== {s.name}: {status} {s.seconds:.0f}s {s.note}\n"
            body += "".join(f"   {line}\n" for line in s.lines[-60:])
        (self.out / "summary.txt").write_text(head + body)

    def finish(self) -> int:
        """Bundle the work folder, check $OUT's shape, write the summary; exit code 1 if a stage failed."""
        self.log.close()
        left_out = bundle(self.work, self.out / BUNDLE, BUNDLE_CAP)
        extra = check_out(self.out)
        self.write_summary()
        with (self.out / "summary.txt").open("a") as f:
            if left_out:
                f.write(f"\nleft out of {BUNDLE} (weights, or over {BUNDLE_CAP >> 20} MiB): {', '.join(left_out)}\n")
            if extra:
                f.write(f"\n!!! $OUT breaks the device call's limits: {extra}\n")
            f.write(f"\n$OUT: {', '.join(sorted(p.name for p in self.out.iterdir()))}\n")
        shutil.rmtree(self.work, ignore_errors=True)
        print((self.out / "summary.txt").read_text(), flush=True)
        return 1 if extra or any(s.rc not in (0, None) for s in self.stages) else 0


class _Killer:
    """Ends a stage's whole process group at its limit (SIGTERM, then SIGKILL 10 s later)."""

    def __init__(self, proc: subprocess.Popen, limit_s: float):
        import threading

        self.proc, self.fired = proc, False
        self.timer = threading.Timer(limit_s, self._fire)
        self.timer.daemon = True
        self.timer.start()

    def _fire(self) -> None:
        self.fired = True
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait or None)
                return
            except subprocess.TimeoutExpired:
                continue

    def cancel(self) -> None:
        self.timer.cancel()


def commit() -> str:
    """HYBENGINE_COMMIT, else git's short HEAD here, else "unknown" (the summary says so)."""
    if os.environ.get("HYBENGINE_COMMIT"):
        return os.environ["HYBENGINE_COMMIT"]
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else "unknown"


def bundle(folder: Path, dest: Path, cap: int) -> list[str]:
    """Tar + gzip every file under `folder` into `dest` but weights (*.pt: the runs' checkpoints), leaving
    out the largest files until the archive is under `cap` bytes; returns the names left out."""
    files = sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    left_out = [str(p.relative_to(folder)) for p in files if p.suffix == ".pt"]
    files = [p for p in files if p.suffix != ".pt"]
    while True:
        with tarfile.open(dest, "w:gz") as tar:
            for p in files:
                tar.add(p, arcname=str(p.relative_to(folder)))
        if dest.stat().st_size <= cap or not files:
            return left_out
        left_out.append(str(files.pop().relative_to(folder)))


def check_out(out: Path) -> str:
    """'' when $OUT holds at most MAX_FILES files, no deeper than $OUT/a/b/file, with plain names."""
    files = [p for p in out.rglob("*") if p.is_file()]
    problems = []
    if len(files) > MAX_FILES:
        problems.append(f"{len(files)} files (at most {MAX_FILES})")
    problems += [f"{p} too deep" for p in files if len(p.relative_to(out).parts) > 3]
    problems += [f"{p.name}: not a plain name" for p in files if not re.fullmatch(r"[A-Za-z0-9._-]+", p.name)]
    return "; ".join(problems)


# ----------------------------------------------------------------------------- the calls


@dataclass(frozen=True)
class Sizes:
    """Every size, run length and limit of the calls' stages that differs between a GPU window (GPU) and
    the CPU dry run (DRY): the dry run runs the same stages with the same scripts, on these values."""

    device: str
    tiny: tuple[str, ...]  # call 1's preflight steps: model, batch, crop
    preflight_steps: int  # engine training steps of the preflight
    step: tuple[str, ...]  # the measured step (call 1's rounds, call 2's profile and host-sync check)
    configs: tuple[str, ...]  # engine against: strong on a GPU, plain in a dry run (eager: no compile)
    rounds: tuple[str, ...]  # call 1: steps per run, log interval, rounds
    gn_share_s: float  # call 1: seconds kept from the rounds for the GroupNorm-SiLU call list
    gn_real: tuple[str, ...]  # call 1: the call list's sizes and timing
    gn_compile: bool  # call 1: torch.compile among the call list's providers
    gn_budget_s: float | None  # call 1: the call list's budget; None: what is left of the call less 60 s
    profile: tuple[str, ...]  # call 2: warm-up and profiled steps
    hybrid_loss: tuple[str, ...]  # call 2: the joint-loss bench's sizes; (): its own, within what is left
    upsample_conv: tuple[str, ...]  # call 2: the upsample-conv bench's sizes
    limit_s: dict[str, float]  # stage limits that differ (the interpreter is slower than a GPU)
    threads: int | None  # torch threads of every stage's process (OMP_NUM_THREADS); None: torch's default


GPU = Sizes(device="cuda", tiny=("--preset", "tiny", "--batch", "8", "--crop", "64"), preflight_steps=3,
            step=("--preset", "base", "--batch", "32", "--crop", "128"), configs=("strong", "engine"),
            rounds=("--steps", "160", "--log-every", "10", "--rounds", "8"), gn_share_s=150,
            gn_real=("--dtypes", "bf16", "--timing", "graph", "--rep", "20"), gn_compile=True, gn_budget_s=None,
            profile=("--warmup", "5", "--steps", "5"), hybrid_loss=(), upsample_conv=("--repeats", "5"),
            limit_s={"preflight_kernels": 60, "train_rounds": 420, "gn_slab_smoke": 60, "gn_real_min": 45},
            threads=None)
# The dry run: the smallest sizes each script takes (a crop the tiny U-Net's two levels divide, the fewest
# steps that leave a timed interval, the call list's first configuration only), and one thread per
# process: its stages check, they do not time, and on a 2-core host shared with other test workers a
# second thread per process mostly waits for a core.
DRY = Sizes(device="cpu", tiny=("--preset", "tiny", "--batch", "2", "--crop", "16"), preflight_steps=2,
            step=("--preset", "tiny", "--batch", "2", "--crop", "16"), configs=("plain", "engine"),
            rounds=("--steps", "3", "--log-every", "1", "--rounds", "1"), gn_share_s=0,
            gn_real=("--batch", "1", "--crop", "16", "--dtypes", "fp32", "--timing", "call", "--rep", "1",
                     "--warmup", "0"), gn_compile=False, gn_budget_s=1,
            profile=("--warmup", "1", "--steps", "1"),
            hybrid_loss=("--shapes", "2,3,2,16,16", "--rep", "1", "--warmup", "0", "--fp32-baseline", "0",
                         "--providers", "fused", "reference"),
            upsample_conv=("--shapes", "1,8,8,8", "--repeats", "1", "--rep", "1"),
            limit_s={"preflight_kernels": 120, "train_rounds": 300, "gn_slab_smoke": 120, "gn_real_min": 10},
            threads=1)


def env_stage() -> Stage:
    return Stage("env", 60, lambda left: py("gpu_run.py", "--env-info"), summary=r"^(gpu|python|cuda|ops|name,|NVIDIA)",
                 min_s=5)


def call_1(call: Call) -> None:
    z = call.sizes
    call.run(env_stage())
    # preflight: fails fast (first failing check) and says why; the call goes on, its timings flagged
    call.run(Stage("preflight_kernels", z.limit_s["preflight_kernels"],
                   lambda left: py("check_kernels.py", "--preflight", "--device", z.device, "--json",
                                   str(call.out / "check.json")), triton=True))
    call.run(Stage("preflight_steps", 150,
                   lambda left: py("bench_train.py", "--compiled-steps", str(z.preflight_steps), *z.tiny),
                   summary=r"^(steps|FAIL|compiled)"))
    # the base preset's step: strong against engine, alternating rounds, each round's rows at once
    call.run(Stage("train_rounds", z.limit_s["train_rounds"],
                   lambda left: py("bench_train.py", "--method", "rounds", "--warm-runs", "0", *z.step, *z.rounds,
                                   "--configs", *z.configs,
                                   "--budget-s", f"{max(30.0, left - z.gn_share_s - 30):.0f}",
                                   "--csv", str(call.out / "train.csv"), "--rounds-csv",
                                   str(call.out / "train_rounds.csv")),
                   summary=r"^(round \d|budget|\w[\w-]* +[\d.]+ +-?[\d.]+|model FLOPs|every run|warning)"))
    # GroupNorm-SiLU over the real call list, slab only after its smoke check passed in a process of its own
    smoke = call.run(Stage("gn_slab_smoke", z.limit_s["gn_slab_smoke"],
                           lambda left: py("bench_group_norm_silu.py", "--smoke", "slab", "--device", z.device),
                           summary=r"smoke|Error", min_s=10, triton=True))
    providers = ["groups", "groups-pre8a0dcf0", *(["slab"] if smoke.rc == 0 else []), "rows",
                 *(["compile"] if z.gn_compile else []), "eager"]
    if smoke.rc != 0:
        smoke.note += " -> slab left out of the call list"
    call.run(Stage("gn_real_call_list", 600,
                   lambda left: py("bench_group_norm_silu.py", "--real", "--device", z.device, *z.gn_real,
                                   "--layouts", "nhwc", "nchw", "--modes", "fwd+bwd", "--fp32-baseline", "0",
                                   "--providers", *providers,
                                   "--budget-s", f"{z.gn_budget_s or max(1.0, left - 60):.0f}",
                                   "--csv", str(call.out / "group_norm_silu_real.csv")),
                   summary=r"^(per step|budget|\(\d+|  \S+: FAILED)", min_s=z.limit_s["gn_real_min"],
                   triton=True))


def call_2(call: Call) -> None:
    z, work = call.sizes, call.work
    call.run(env_stage())
    call.run(Stage("profile", 330,
                   lambda left: py("profile_step.py", "--configs", *z.configs, *z.step, *z.profile,
                                   "--out", str(work / "profile_step")),
                   summary=r"^(\S.{18}\s+[\d.]+\s+[\d.]+|family|\w+: (FAILED|profiled))",
                   outputs=("profile_step/profile_step.txt", "profile_step/profile_step.json")))
    call.run(Stage("host_sync", 150, lambda left: py("profile_step.py", "--check-sync", "--configs", "engine", *z.step),
                   summary=r"^(OK|FAIL)"))
    call.run(Stage("hybrid_loss", 60,
                   lambda left: py("bench_hybrid_loss.py", "--device", z.device,
                                   *(z.hybrid_loss or ("--budget-s", f"{max(10.0, left - 25):.0f}")),
                                   "--csv", str(call.out / "hybrid_loss.csv")),
                   summary=r"^\(|fused", min_s=15, triton=True))
    call.run(Stage("upsample_conv", 60,
                   lambda left: py("bench_upsample_conv.py", "--device", z.device, "--layouts", "nhwc",
                                   *z.upsample_conv,
                                   "--csv", str(call.out / "upsample_conv.csv")),
                   summary=r"x |subpixel|reference", min_s=15))


def call_3(call: Call, config: str, shards: int) -> None:
    call.run(env_stage())
    call.run(Stage("science", 600,
                   lambda left: py("gpu_run.py", "--science", config, "--shards", str(shards), "--budget-s",
                                   f"{left:.0f}", "--work", str(call.work / "science")),
                   summary=r"^(science|a shard|\| |#)",
                   outputs=("science/results/contrasts.md", "science/results/contrasts.csv")))


# ----------------------------------------------------------------------------- helpers run as stages


def env_info() -> int:
    if shutil.which("nvidia-smi"):
        subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv"])
    sys.path.insert(0, str(BENCH))
    import repo_imports
    import torch

    try:
        import triton

        tv = triton.__version__
    except ImportError:
        tv = "none"
    from hybengine.kernels import op_backends

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    print(f"python {sys.version.split()[0]} torch {torch.__version__} triton {tv}", flush=True)
    print(f"cuda {torch.version.cuda} gpu {gpu}; hybengine.kernels via {repo_imports.HOW}", flush=True)
    print(f"ops {op_backends()}", flush=True)
    return 0


def science(config: str, shards: int, budget_s: float, work: Path, analyse_s: float = 45) -> int:
    """The experiment's shards in parallel, stopped `analyse_s` before the budget, then the paired
    analysis of what finished; results_dir and the shard logs copied to `work`."""
    import yaml

    sys.path.insert(0, str(BENCH))
    run = [sys.executable, str(BENCH / "repo_imports.py"), "hybengine.experiment", "--config", config]
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = []
    for i in range(shards):
        log = (work / f"shard{i}.log").open("w")
        procs.append((subprocess.Popen([*run, "--shard", f"{i}/{shards}"], cwd=REPO, env=env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True), log))
    stop = time.monotonic() + max(10.0, budget_s - analyse_s)
    for i, (proc, log) in enumerate(procs):
        try:
            rc = proc.wait(timeout=max(1.0, stop - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
            print(f"a shard stopped at the budget (shard {i}): the analysis reports what finished", flush=True)
        log.close()
        if rc != 0:
            print(f"a shard ended with rc {rc} (shard {i}): {work / f'shard{i}.log'}", flush=True)
    rc = subprocess.run([*run, "--analyse-only"], cwd=REPO, env=env).returncode
    results = REPO / yaml.safe_load(Path(config).read_text())["results_dir"]
    if results.is_dir():
        shutil.copytree(results, work / "results", dirs_exist_ok=True)
        if (work / "results" / "contrasts.md").is_file():
            print((work / "results" / "contrasts.md").read_text(), flush=True)
    print(f"science: analysis rc {rc}", flush=True)
    return rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("call", nargs="?", choices=["1", "2", "3"])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_out")))
    p.add_argument("--budget-s", type=float, default=570.0, help="the whole call ends within this")
    p.add_argument("--dry-run", action="store_true", default=os.environ.get("GPU_RUN_DRY") == "1",
                   help="CPU, tiny sizes, the Triton interpreter (also GPU_RUN_DRY=1)")
    p.add_argument("--science-config", default=os.environ.get("SCIENCE_CONFIG", DEFAULT_SCIENCE),
                   help="call 3: the experiment YAML")
    p.add_argument("--shards", type=int, default=int(os.environ.get("SCIENCE_SHARDS", "4")),
                   help="call 3: processes sharing the GPU")
    p.add_argument("--env-info", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--science", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.env_info:
        return env_info()
    if args.science:
        return science(args.science, args.shards, args.budget_s, args.work)
    if args.call is None:
        p.error("name a call: 1, 2 or 3")
    if args.call == "3" and not (REPO / args.science_config).is_file() and not Path(args.science_config).is_file():
        p.error(f"--science-config {args.science_config}: no such file")
    call = Call(args.call, args.out.resolve(), args.budget_s, args.dry_run)
    if call.env["HYBENGINE_COMMIT"] == "unknown":
        print("warning: HYBENGINE_COMMIT is not set and there is no .git: rows say commit 'unknown'", flush=True)
    try:
        if args.call == "1":
            call_1(call)
        elif args.call == "2":
            call_2(call)
        else:
            call_3(call, args.science_config, args.shards)
    finally:
        rc = call.finish()
    return rc


if __name__ == "__main__":
    sys.exit(main())
