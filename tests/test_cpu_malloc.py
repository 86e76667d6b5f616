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
    # Blocks of 2-16 MiB, freed in the order they were made, as a step frees its activations. Under
    # glibc's defaults the mmap threshold moves as blocks are freed, and whether such blocks are then
    # served again from the heap depends on the history and address layout of the process (the same
    # code faulted 2,048 pages a round on one host and none on another). The "before" side therefore
    # fixes the threshold at glibc's starting value, 128 KiB: every block is mmap'd and its pages
    # fault again each round. Tuned, the kept heap serves them all. Each side runs in a fresh
    # process and is measured after 8 rounds of settling.
    measure = """
import mmap, resource, torch
from hybengine.runtime import cpu_malloc
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
f0, probe = faults(), mmap.mmap(-1, 4 << 20)
probe.write(bytes(4 << 20))
counted = faults() - f0 >= 1000
{setup}
for _ in range(8):
    blocks = [torch.ones(mib << 18) for mib in (2, 4, 8, 16)]; del blocks
f0 = faults()
for _ in range(8):
    blocks = [torch.ones(mib << 18) for mib in (2, 4, 8, 16)]; del blocks
print((faults() - f0) / 8 if counted else "uncounted")
"""
    before = _python(measure.format(setup="assert cpu_malloc._mallopt()(cpu_malloc.M_MMAP_THRESHOLD, 128 << 10)"))
    if before == "uncounted":
        pytest.skip("this kernel does not count minor page faults in getrusage")
    after = float(_python(measure.format(setup="assert cpu_malloc.tune()")))
    assert float(before) > 7000  # 30 MiB of 4 KiB pages: 7,680
    assert after < 50


def test_config_key_is_validated_and_free_on_resume_and_in_sweeps(capsys):
    from hybengine.config import resume_free_keys
    from hybengine.finetune.sweep import BOOKKEEPING

    cfg = resolve(parse_args(None, ["train.cpu_malloc=default"]))
    assert cfg.train.cpu_malloc == "default"
    code = resolve(parse_args(None, ["train.cpu_malloc=jemalloc"]))
    assert isinstance(code, int) and code != 0
    assert "train.cpu_malloc='jemalloc' is not allowed; choose one of: default, tuned" in capsys.readouterr().err
    assert "train.cpu_malloc" in resume_free_keys() and "train.cpu_malloc" in BOOKKEEPING


@glibc_only
def test_a_training_run_with_tuned_malloc_logs_it_and_trains(tmp_path):
    from tiny_run import run_cli, tiny_overrides

    r = run_cli(["hybengine/train.py", *tiny_overrides(tmp_path / "run", steps=2, **{"train.cpu_malloc": "tuned"})])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "malloc tuned" in r.stdout + r.stderr
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") >= 1
