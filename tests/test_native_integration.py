"""The native library inside the engine: a conv + GroupNorm-SiLU + loss block compiles with
fullgraph=True around the native ops and matches eager; the info command; the fallback (logged
once) when the library is disabled or was built for another torch."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from kernel_helpers import TinyBlock, assert_compiled_matches_eager, tiny_batch

from hybengine.kernels import bodies, info, native

needs_native = pytest.mark.skipif(not native.available(), reason=f"native library: {native.status()}")


@pytest.fixture
def native_backend():
    with bodies.cpu_backend("native"):
        yield


@needs_native
def test_fullgraph_compile_matches_eager(native_backend):
    torch.manual_seed(0)
    assert_compiled_matches_eager(TinyBlock(), tiny_batch())


@needs_native
def test_compiled_graph_holds_the_ops_and_runs_native(native_backend, monkeypatch):
    """One graph, the fused ops as single nodes, and their bodies are the native ones."""
    from torch._dynamo.testing import CompileCounterWithBackend

    calls = []
    for op in bodies.OPS:
        impl = bodies._impls[op]["native"]
        record = lambda *a, f=impl.fwd, op=op: (calls.append(op), f(*a))[1]
        patched = {**bodies._impls[op], "native": bodies.Impl("native", record, impl.bwd)}
        monkeypatch.setitem(bodies._impls, op, patched)
    counter = CompileCounterWithBackend("aot_eager")
    torch.compile(TinyBlock(), backend=counter, fullgraph=True)(*tiny_batch())[0].backward()
    assert counter.frame_count == 1
    targets = {str(node.target) for gm in counter.graphs for node in gm.graph.nodes}
    assert {"hybengine.group_norm_silu_fwd.default", "hybengine.hybrid_loss_fwd.default"} <= targets
    assert sorted(set(calls)) == sorted(bodies.OPS)


@needs_native
def test_info_reports_native_on_cpu(native_backend):
    text = info.report()
    assert "kernels compiled: DEFAULT" in text and "running:" in text
    for op in bodies.OPS:
        assert any(line.split()[:2] == [op, "native"] for line in text.splitlines()), text


def run_info(**env) -> subprocess.CompletedProcess:
    """`python -m hybengine.kernels.info` after a second load() and an import of hybengine.ops."""
    code = ("import hybengine.kernels as k, hybengine.ops; k.native.load(); k.native.load(); "
            "from hybengine.kernels import info; print(info.report())")
    clean = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "HYBENGINE_CPU_BACKEND")}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120, check=True)


def assert_fell_back(proc: subprocess.CompletedProcess, reason: str):
    assert proc.stderr.count("native CPU kernels unavailable") == 1, proc.stderr  # logged once
    assert reason in proc.stdout, proc.stdout
    for op in bodies.OPS:
        assert any(line.split()[:2] == [op, "math"] for line in proc.stdout.splitlines()), proc.stdout


def test_disabled_library_falls_back_to_math_logged_once():
    assert_fell_back(run_info(HYBENGINE_NATIVE="0"), "disabled by HYBENGINE_NATIVE=0")


@needs_native
def test_library_built_for_another_torch_is_not_loaded(tmp_path):
    lib = tmp_path / native.LIB_NAME
    shutil.copyfile(native.library_path(), lib)
    (tmp_path / native.STAMP_NAME).write_text(json.dumps({"torch": "1.0.0+cpu"}))
    assert_fell_back(run_info(HYBENGINE_NATIVE_LIB=str(lib)), "built for torch 1.0.0+cpu")
