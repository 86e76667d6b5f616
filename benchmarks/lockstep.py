"""Training runs that take turns one step at a time, so that a noisy host hits them alike.

This shared 2-core host changes speed by up to 2x within minutes: whole runs timed one after the
other compare different machines (benchmarks/results/train.csv: paired ratios of 0.79, 1.39 and
1.07 for the same code). Here every configuration's run starts at once, then they take turns: a
run's training loader waits on a FIFO for its turn before each batch and writes back when the loop
asks for the next one. The parent times each turn, so step i of every configuration runs within a
second or two of the others' step i, and per-step ratios pair like with like. The order rotates
every step (A B C, B C A, C A B, ...; with two: A B, B A), so every configuration follows each
other one equally often.

    child side:   python benchmarks/lockstep.py -- <hybengine/train.py arguments>
                  (or `run_training(..., hooks=hooks(...))` in a script's own child, as cpu_step_phases.py does)
    parent side:  run({name: argv}, steps, cwd) -> {name: Turns}

A step, as timed: the loader's next batch, the objective's forward, backward, optimizer, EMA and
the loop's bookkeeping, up to its next request for data. A turn is one request for data, so the
runs must take one batch per optimizer step (train.grad_accum 1) and should not skip batches (a
non-finite loss does): either ends a run's turns out of step with its steps. The last step of a
run is not timed (it ends with the run, not with a request); after it the parent closes the
run's FIFO, so a run that asks for more data ends instead of waiting, and waits for it to exit
(at most `exit_timeout_s`).
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import repo_imports  # noqa: E402, F401  (before hybengine, imported in functions: works without an install)

GO, DONE = "HYBENGINE_BENCH_GO", "HYBENGINE_BENCH_DONE"


class TurnTakingLoader:
    """A training loader that waits for its turn before each batch (child side).

    `times`, if given, gets the loader's own time per batch under "data"."""

    def __init__(self, loader, go: str, done: str, times: dict[str, list[float]] | None = None):
        self._loader, self._go, self._done, self._times = loader, go, done, times

    def __iter__(self):
        it = iter(self._loader)
        # done first: the parent holds its read end from the start, and takes our opening of `go`
        # as the sign that both ends are up
        with open(self._done, "wb", buffering=0) as done, open(self._go, "rb", buffering=0) as go:
            first = True
            while True:
                if not first:
                    done.write(b"d")
                first = False
                if not go.read(1):  # the parent closed its end: no more turns
                    return
                t0 = time.perf_counter()
                try:
                    batch = next(it)
                except StopIteration:
                    return
                if self._times is not None:
                    self._times["data"].append(time.perf_counter() - t0)
                yield batch

    def __getattr__(self, name):
        return getattr(self._loader, name)


def hooks(times: dict[str, list[float]] | None = None, **more):
    """Child side: loop hooks whose loader takes turns on the FIFOs named in the environment
    (`more`: further LoopHooks fields, e.g. a phase timer)."""
    from hybengine.training_loop import LoopHooks

    go, done = os.environ[GO], os.environ[DONE]
    return LoopHooks(wrap_loader=lambda loader: TurnTakingLoader(loader, go, done, times), **more)


@dataclass
class Turns:
    """One configuration's run: its timed steps (ms, every step but the last) and its output."""

    steps_ms: list[float] = field(default_factory=list)
    log: str = ""
    returncode: int | None = None


def run(commands: dict[str, list[str]], steps: int, cwd: str | os.PathLike,
        env: dict[str, str] | None = None, exit_timeout_s: float = 600.0) -> dict[str, Turns]:
    """Starts every command (a child that calls `install`), then gives them `steps` turns each.

    Raises RuntimeError with the tail of a configuration's output if it fails or stops early."""
    env = {**(env or os.environ), "PYTHONUNBUFFERED": "1"}
    names = list(commands)
    out = {name: Turns() for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        procs, logs, pipes = {}, {}, {}
        try:
            for name in names:
                go, done = f"{tmp}/{name}.go", f"{tmp}/{name}.done"
                os.mkfifo(go)
                os.mkfifo(done)
                logs[name] = open(f"{tmp}/{name}.log", "w+")  # noqa: SIM115 - closed below
                procs[name] = subprocess.Popen(commands[name], env={**env, GO: go, DONE: done}, cwd=cwd,
                                               stdout=logs[name], stderr=subprocess.STDOUT, text=True)
            for name in names:  # the child opens its ends at its first request for data
                done = open(os.open(f"{tmp}/{name}.done", os.O_RDONLY | os.O_NONBLOCK), "rb", buffering=0)  # noqa: SIM115
                try:
                    go = open(_open_writer(f"{tmp}/{name}.go", procs, logs), "wb", buffering=0)  # noqa: SIM115
                except BaseException:
                    done.close()
                    raise
                os.set_blocking(done.fileno(), True)
                pipes[name] = (go, done)
            for step in range(steps):
                k = step % len(names)
                for name in names[k:] + names[:k]:
                    go, done = pipes[name]
                    t0 = time.perf_counter()
                    try:
                        go.write(b"g")
                        answered = step == steps - 1 or bool(done.read(1))
                    except BrokenPipeError:  # the child is gone
                        answered = False
                    if not answered:
                        procs[name].wait()
                        raise RuntimeError(f"{name} stopped at step {step} (exit code {procs[name].returncode}):\n"
                                           f"{_read(logs[name])[-3000:]}")
                    if step == steps - 1:  # no more turns: a request for more data reads EOF
                        go.close()
                        _wait(procs[name], exit_timeout_s, name, logs[name])
                    else:
                        out[name].steps_ms.append(1e3 * (time.perf_counter() - t0))
            for name in names:
                out[name].returncode = procs[name].wait()
                out[name].log = _read(logs[name])
                if out[name].returncode != 0:
                    raise RuntimeError(f"{name} failed (exit code {out[name].returncode}):\n{out[name].log[-3000:]}")
            return out
        finally:
            for name, proc in procs.items():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                logs[name].close()
            for go, done in pipes.values():
                go.close()  # closing twice is harmless
                done.close()


def paired(base: list[float], this: list[float]) -> tuple[float, str]:
    """Median and 10th-90th percentile range (interpolated) over steps of base[i] / this[i] (step
    times: > 1 is faster)."""
    ratios = [b / t for b, t in zip(base, this, strict=True)]
    if not ratios:
        return float("nan"), ""
    q = statistics.quantiles(ratios, n=10, method="inclusive") if len(ratios) > 1 else ratios * 9
    return statistics.median(ratios), f"{q[0]:.3f}-{q[8]:.3f}"


def _wait(proc: subprocess.Popen, timeout_s: float, name: str, log) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{name} did not exit within {timeout_s:.0f} s of its last step:\n"
                           f"{_read(log)[-3000:]}") from None


def _open_writer(path: str, procs: dict[str, subprocess.Popen], logs: dict) -> int:
    """Our write end of a FIFO once the child has its read end open (ENXIO until then); an error
    with a child's output if any child exits while we wait (none may end before its first step)."""
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            os.set_blocking(fd, True)
            return fd
        except OSError:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name}: the run exited (code {proc.returncode}) before its first step:\n"
                                       f"{_read(logs[name])[-3000:]}") from None
            time.sleep(0.05)


def _read(log) -> str:
    log.flush()
    log.seek(0)
    return log.read()


def main() -> None:
    """Child side: python benchmarks/lockstep.py -- <hybengine/train.py arguments>, trained in turns."""
    args = sys.argv[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    from hybengine.cli import parse_args, resolve
    from hybengine.training_loop import run_training

    parsed = parse_args(None, args)
    cfg = resolve(parsed)
    if isinstance(cfg, int):
        sys.exit(cfg)
    run_training(cfg, resume=parsed.resume, hooks=hooks())


if __name__ == "__main__":
    main()
