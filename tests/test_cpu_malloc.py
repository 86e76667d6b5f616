"""train.cpu_malloc: glibc keeps freed activation memory instead of page-faulting it in each step."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from hybengine.cli import parse_args, resolve

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


def _python(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip()


@glibc_only
def test_apply_follows_the_setting_and_the_device_and_reports_what_is_in_force():
    out = _python("from hybengine.runtime import cpu_malloc as m; "
                  "print(m.apply('default', 'cpu'), m.apply('tuned', 'cuda'), m.apply('tuned', 'cpu'), "
                  "m.apply('default', 'cpu'), sep='|')")
    assert out.split("|") == ["default", "default", "tuned", "tuned (earlier run in this process)"]


@glibc_only
def test_tuned_malloc_stops_the_page_faults_of_repeated_activation_sized_allocations():
    code = """
import resource, torch
from hybengine.runtime import cpu_malloc
def faults_per_round():
    for _ in range(3):  # let glibc's own dynamic threshold settle first
        a = torch.ones(3 << 20); b = torch.ones(5 << 20); del a, b
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):  # 12 and 20 MB, freed in the order a step frees activations
        a = torch.ones(3 << 20); b = torch.ones(5 << 20); del a, b
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10
before = faults_per_round()
assert cpu_malloc.tune()
print(before, faults_per_round())
"""
    before, after = (float(v) for v in _python(code).split())
    assert before > 1000  # glibc default: mmap'd, so every 4 KiB page faults again
    assert after < 50


def test_config_key_is_validated_and_free_on_resume_and_in_sweeps(capsys):
    from hybengine.finetune.sweep import BOOKKEEPING
    from hybengine.training_loop import _RESUME_FREE

    cfg = resolve(parse_args(None, ["train.cpu_malloc=default"]))
    assert cfg.train.cpu_malloc == "default"
    code = resolve(parse_args(None, ["train.cpu_malloc=jemalloc"]))
    assert isinstance(code, int) and code != 0
    assert "train.cpu_malloc='jemalloc' is not allowed; choose one of: default, tuned" in capsys.readouterr().err
    assert "train.cpu_malloc" in _RESUME_FREE and "train.cpu_malloc" in BOOKKEEPING


@glibc_only
def test_a_training_run_with_tuned_malloc_logs_it_and_trains(tmp_path):
    from tiny_run import run_cli, tiny_overrides

    r = run_cli(["hybengine/train.py", *tiny_overrides(tmp_path / "run", steps=2, **{"train.cpu_malloc": "tuned"})])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "malloc tuned" in r.stdout + r.stderr
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") >= 1
