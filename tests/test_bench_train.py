"""benchmarks/bench_train.py and cpu_step_phases.py: paired ratios (per round, per lockstep step), and
short real runs of two configurations, one after another and in lockstep (benchmarks/lockstep.py)."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_train import paired_ratios  # noqa: E402
from lockstep import paired  # noqa: E402

# The runs below check what the scripts compute and write, not how fast: the smallest sizes the scripts
# take (the tiny U-Net's two levels divide a 16-pixel crop) and one thread per process (two processes
# run at once in lockstep, on a 2-core host shared with another test worker).
SMALL = ["--batch", "2", "--crop", "16"]


def run_bench(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args, *SMALL], cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)


def test_paired_ratios_take_the_median_of_per_round_ratios():
    rounds = [{"plain": 10.0, "engine": 15.0}, {"plain": 8.0, "engine": 8.0}, {"plain": 10.0, "engine": 12.0},
              {"engine": 30.0}]  # plain failed in the last round: that round has no pair
    out = paired_ratios(rounds, "engine")
    assert out["paired_vs_plain"] == 1.2
    assert out["paired_vs_plain_range"] == "1.000-1.500"
    assert out["paired_vs_strong"] == "" and out["paired_vs_strong_range"] == ""


def test_paired_step_ratios_are_base_time_over_this_time():
    ratio, spread = paired([100.0, 200.0, 90.0, 300.0, 100.0], [50.0, 200.0, 60.0, 200.0, 80.0])
    assert ratio == 1.5  # ratios 2, 1, 1.5, 1.5, 1.25: > 1 means faster than the base
    assert spread == "1.100-1.800"  # 10th and 90th percentiles, interpolated
    with pytest.raises(ValueError):  # steps are paired one to one
        paired([1.0, 2.0], [1.0])


def test_committed_csvs_have_the_bench_columns():
    header = next(csv.reader((REPO / "benchmarks" / "results" / "train.csv").open(newline="")))
    i = header.index("vs_strong")
    assert header[i + 1] == "method"
    assert header[i + 2:i + 6] == list(paired_ratios([], "engine"))
    assert header[i + 6] == "mfu"
    header = next(csv.reader((REPO / "benchmarks" / "results" / "cpu_phases.csv").open(newline="")))
    i = header.index("rounds")
    assert header[i + 1:i + 5] == ["method", "paired_vs", "paired_ratio", "paired_range"]


@pytest.mark.slow
def test_bench_train_runs_two_configurations_in_alternating_rounds(tmp_path):
    out_csv = tmp_path / "train.csv"
    r = run_bench("bench_train.py", "--configs", "plain", "engine", "--rounds", "2", "--steps", "3", "--log-every", "1",
                  "--method", "rounds", "--csv", str(out_csv))
    assert r.returncode == 0, r.stderr[-3000:]
    order = [line.split()[2] for line in r.stdout.splitlines() if line.startswith("round ")]
    assert order == ["plain", "engine", "engine", "plain"], r.stdout
    rows = {row["config"]: row for row in csv.DictReader(out_csv.open(newline=""))}
    assert set(rows) == {"plain", "engine"}
    assert float(rows["plain"]["images_per_s"]) > 0 and float(rows["plain"]["paired_vs_plain"]) == 1.0
    lo, hi = (float(v) for v in rows["engine"]["paired_vs_plain_range"].split("-"))
    assert lo <= float(rows["engine"]["paired_vs_plain"]) <= hi
    assert rows["engine"]["engine_config"].startswith("model:")
    assert rows["engine"]["method"] == "rounds"


@pytest.mark.slow
def test_bench_train_lockstep_pairs_every_step(tmp_path):
    """The CPU default: both runs at once, one step each in turn; one images/s sample per timed step."""
    out_csv = tmp_path / "train.csv"
    r = run_bench("bench_train.py", "--configs", "plain", "engine", "--rounds", "1", "--steps", "5", "--log-every", "1",
                  "--csv", str(out_csv))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {row["config"]: row for row in csv.DictReader(out_csv.open(newline=""))}
    assert set(rows) == {"plain", "engine"}
    for row in rows.values():
        assert row["method"] == "lockstep"
        assert int(row["intervals"]) == 5 - 1 - 1  # steps less warm-up less the untimed last step
        assert float(row["images_per_s"]) > 0 and float(row["peak_mem_mb"]) > 0
    assert float(rows["plain"]["paired_vs_plain"]) == 1.0
    lo, hi = (float(v) for v in rows["engine"]["paired_vs_plain_range"].split("-"))
    assert 0 < lo <= float(rows["engine"]["paired_vs_plain"]) <= hi


def test_lockstep_reports_a_run_that_dies_before_its_first_step(tmp_path):
    import lockstep

    cmds = {"ok": [sys.executable, "-c", "import time; time.sleep(30)"],
            "broken": [sys.executable, "-c", "import sys; print('no such config'); sys.exit(3)"]}
    with pytest.raises(RuntimeError, match=r"broken: the run exited \(code 3\) before its first step:\n.*no such"):
        lockstep.run(cmds, steps=3, cwd=tmp_path)


@pytest.mark.slow
def test_cpu_step_phases_splits_the_real_loop_and_counts_onednn_time(tmp_path):
    out_csv = tmp_path / "phases.csv"
    r = run_bench("cpu_step_phases.py", "--configs", "plain", "engine", "--rounds", "1", "--steps", "8",
                  "--csv", str(out_csv))  # 8: the script's 6 warm-up steps and 2 timed
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {row["config"]: row for row in csv.DictReader(out_csv.open(newline=""))}
    assert set(rows) == {"plain", "engine"}
    for row in rows.values():
        step, onednn = float(row["step_ms"]), float(row["onednn_ms"])
        assert 0 < onednn < step  # convolutions ran through oneDNN, and are not the whole step
        assert float(row["other_ms"]) == pytest.approx(step - onednn, abs=0.11)
        assert float(row["forward_ms"]) > 0 and float(row["backward_ms"]) > 0 and float(row["optimizer_ms"]) > 0
        assert float(row["onednn_gflops"]) > 0 and float(row["matmul_gflops"]) > 0
        assert float(row["faults_per_step"]) >= 0
        assert row["method"] == "lockstep" and row["paired_vs"] == "plain" and float(row["paired_ratio"]) > 0


def _fake_run(body: str) -> list[str]:
    """A child that takes turns through lockstep.TurnTakingLoader over a plain list of 'batches'."""
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(REPO / 'benchmarks')!r}); import os, time\n"
            "from lockstep import TurnTakingLoader\n"
            "loader = TurnTakingLoader(range(100), os.environ['HYBENGINE_BENCH_GO'], "
            "os.environ['HYBENGINE_BENCH_DONE'])\n" + body]


def test_lockstep_times_every_step_but_the_last(tmp_path):
    import lockstep

    body = "for i, b in enumerate(loader):\n    time.sleep(0.01)\n    if i == 4: break\n"
    turns = lockstep.run({"a": _fake_run(body), "b": _fake_run(body)}, steps=5, cwd=tmp_path)
    for t in turns.values():
        assert t.returncode == 0 and len(t.steps_ms) == 4
        assert all(ms >= 10 for ms in t.steps_ms)  # each turn covers the child's step


def test_lockstep_reports_a_run_that_dies_mid_way(tmp_path):
    import lockstep

    body = "for i, b in enumerate(loader):\n    if i == 2: print('boom'); sys.exit(5)\n"
    with pytest.raises(RuntimeError, match=r"a stopped at step 2 \(exit code 5\):\n.*boom"):
        lockstep.run({"a": _fake_run(body)}, steps=5, cwd=tmp_path)


def test_lockstep_ends_a_run_that_asks_for_more_turns(tmp_path):
    """After its last turn a run's FIFO is closed: a loop that wants another batch ends, not hangs."""
    import lockstep

    body = "n = sum(1 for _ in loader)\nprint('batches', n)\n"
    turns = lockstep.run({"a": _fake_run(body), "b": _fake_run(body), "c": _fake_run(body)}, steps=4, cwd=tmp_path,
                         exit_timeout_s=60)
    for t in turns.values():
        assert "batches 4" in t.log and len(t.steps_ms) == 3
