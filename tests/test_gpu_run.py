"""benchmarks/gpu_run.py: the dry run of each GPU call on the CPU (tiny sizes, the Triton interpreter),
so that an import, an argument or a file count that would break a call on the GPU machine fails here;
and the limits of what a device call brings back ($OUT: at most 8 files, no deeper than $OUT/a/b/file)."""
from __future__ import annotations

import ast
import csv
import json
import os
import subprocess
import sys
import sysconfig
import tarfile
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_run  # noqa: E402


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> str:
    """A Python with this one's packages but without hybengine installed, as on the GPU machine (a copy
    of the tree, no install): a venv whose .pth lists the site-packages folder, whose own .pth files
    (the editable install's finder among them) are then not run."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "host_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return str(python)


def dry_run(python: str, call: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """One call's dry run in a fresh process; its output folder must keep a device call's limits."""
    r = subprocess.run([python, str(REPO / "benchmarks" / "gpu_run.py"), call, "--dry-run", "--out", str(out),
                        "--budget-s", "400", *extra], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert gpu_run.check_out(out) == "", r.stdout[-3000:]
    assert (out / "summary.txt").is_file() and (out / "log.txt").is_file() and (out / gpu_run.BUNDLE).is_file()
    return r


def rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_out_limits_are_checked(tmp_path):
    for i in range(gpu_run.MAX_FILES):
        (tmp_path / f"f{i}.csv").write_text("x")
    assert gpu_run.check_out(tmp_path) == ""
    (tmp_path / "one_more.txt").write_text("x")
    assert "9 files" in gpu_run.check_out(tmp_path)
    (tmp_path / "one_more.txt").unlink()
    (tmp_path / "f0.csv").unlink()
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "file").write_text("x")
    assert "too deep" in gpu_run.check_out(tmp_path)
    (deep / "file").rename(deep.parent / "file")  # $OUT/a/b/file comes back
    assert gpu_run.check_out(tmp_path) == ""


def test_bundle_leaves_out_the_largest_files_over_the_cap(tmp_path):
    work = tmp_path / "work"
    (work / "traces").mkdir(parents=True)
    (work / "small.txt").write_text("kept")
    (work / "traces" / "big.bin").write_bytes(os.urandom(2**20))  # 1 MiB that gzip cannot shrink
    (work / "traces" / "state.pt").write_bytes(b"weights")  # a checkpoint: never bundled
    dest = tmp_path / "bundle.tar.gz"
    assert gpu_run.bundle(work, dest, cap=64 * 1024) == ["traces/state.pt", "traces/big.bin"]
    with tarfile.open(dest) as tar:
        assert tar.getnames() == ["small.txt"]
    assert gpu_run.bundle(work, dest, cap=2**21) == ["traces/state.pt"]


@pytest.mark.slow
def test_call_1_dry_run_checks_times_the_step_and_the_call_list(tmp_path, bare_python):
    out = tmp_path / "out"
    r = dry_run(bare_python, "1", out)
    assert r.returncode == 0, r.stdout[-4000:]
    summary = (out / "summary.txt").read_text()
    for stage in ("env", "preflight_kernels", "preflight_steps", "train_rounds", "gn_slab_smoke", "gn_real_call_list"):
        assert f"== {stage}: ok" in summary, summary
    checks = json.loads((out / "check.json").read_text())["results"]
    assert checks and all(c["status"] == "ok" for c in checks)
    assert {"nchw", "nhwc"} <= {c["check"].split()[-1] for c in checks}
    # each round's rows as soon as the round ended, then the pooled rows with their paired interval
    per_round = rows(out / "train_rounds.csv")
    assert sorted((int(r["round"]), r["config"]) for r in per_round) == [(0, "engine"), (0, "plain")]
    assert all(r["commit"] == gpu_run.commit() for r in per_round)
    pooled = {r["config"]: r for r in rows(out / "train.csv")}
    assert set(pooled) == {"plain", "engine"} and pooled["engine"]["paired_vs_plain_range"]
    # the GroupNorm-SiLU call list: every provider of the dry run timed on the first configuration
    gn = rows(out / "group_norm_silu_real.csv")
    assert {(r["shape"], r["layout"]) for r in gn} == {(gn[0]["shape"], "nhwc")}  # the dry run's one configuration
    assert {r["provider"] for r in gn if r["status"] == "ok"} == {"groups", "groups-pre8a0dcf0", "slab", "rows",
                                                                  "eager"}
    with tarfile.open(out / gpu_run.BUNDLE) as tar:  # nothing else was written: the bundle is empty
        assert tar.getnames() == []


@pytest.mark.slow
def test_call_2_dry_run_profiles_the_step_and_checks_host_syncs(tmp_path, bare_python):
    out = tmp_path / "out"
    r = dry_run(bare_python, "2", out)
    assert r.returncode == 0, r.stdout[-4000:]
    summary = (out / "summary.txt").read_text()
    assert "== host_sync: ok" in summary and "OK: no host read" in summary, summary
    table = (out / "profile_step.txt").read_text()
    assert "convolution" in table and "engine" in table
    assert rows(out / "hybrid_loss.csv") and rows(out / "upsample_conv.csv")
    with tarfile.open(out / gpu_run.BUNDLE) as tar:  # the Chrome traces travel in the bundle
        assert {Path(n).name for n in tar.getnames()} >= {"plain.trace.json", "engine.trace.json"}


@pytest.mark.slow
def test_call_3_dry_run_runs_an_experiment_in_shards_then_analyses(tmp_path, bare_python):
    from test_experiment import tiny_spec

    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(tiny_spec(tmp_path)))  # its runs in tmp_path/out
    out = tmp_path / "gpu_out"
    r = dry_run(bare_python, "3", out, "--science-config", str(config), "--shards", "2")
    assert r.returncode == 0, r.stdout[-4000:]
    assert "hybrid" in (out / "contrasts.md").read_text()
    with tarfile.open(out / gpu_run.BUNDLE) as tar:
        names = set(tar.getnames())
    assert {"science/shard0.log", "science/shard1.log", "science/results/table.md"} <= names


def test_the_default_science_config_exists_and_names_its_results():
    from hybengine.experiment.pipeline import load_experiment, start_names

    spec = load_experiment(REPO / gpu_run.DEFAULT_SCIENCE)  # unknown keys and bad contrasts are refused here
    assert spec["results_dir"] and spec["pretrain"]["modes"]
    names = {n.rsplit("_p", 1)[0] for n in start_names(spec)}
    assert {a for pair in spec["analysis"]["contrasts"] for a in pair} <= names  # every contrast has its starts


@pytest.mark.parametrize("argv,says", [(["4"], "invalid choice: '4'"),
                                       (["3", "--science-config", "no/such.yaml"], "no/such.yaml: no such file")])
def test_bad_calls_are_refused_with_one_line(argv, says, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        gpu_run.main([*argv, "--out", str(tmp_path / "out")])
    assert e.value.code == 2 and says in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()  # refused before anything was written


BENCH = REPO / "benchmarks"


def _imported(node) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    return [node.module or ""] if isinstance(node, ast.ImportFrom) else []


def _first_import(body: list, safe: bool, path: Path) -> bool | None:
    """Walks the import statements of one scope in order: True once the repo path is set (repo_imports, or a
    benchmarks module that sets it), False at a hybengine import before that, None when neither occurs."""
    for node in body:
        for name in _imported(node):
            local = BENCH / (name.replace(".", "/") + ".py")
            if name == "repo_imports" or (local.is_file() and local != path and gets_repo_path(local)):
                return True
            if name.split(".")[0] == "hybengine" and not safe:
                return False
    return None


@cache
def gets_repo_path(path: Path) -> bool:
    """Whether importing `path` (a benchmarks script or module) puts the repo on the path before any
    hybengine import at module level."""
    return bool(_first_import(ast.parse(path.read_text()).body, False, path))


def test_every_benchmark_script_gets_the_repo_path_before_hybengine():
    """The GPU machine has a copy of the tree and no install: a script that imports hybengine before
    benchmarks/repo_imports.py (at module level, or in the function that imports it) fails there."""
    late = []
    for path in sorted(BENCH.rglob("*.py")):
        if path.name == "repo_imports.py":
            continue
        tree = ast.parse(path.read_text())
        safe = _first_import(tree.body, False, path) is not False and gets_repo_path(path)
        scopes = [n.body for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        if _first_import(tree.body, False, path) is False or any(
                _first_import(body, safe, path) is False for body in scopes):
            late.append(str(path.relative_to(REPO)))
    assert late == []
