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


@needs_native
def test_fullgraph_compile_matches_eager():
    torch.manual_seed(0)
    assert_compiled_matches_eager(TinyBlock(body="native"), tiny_batch())


@needs_native
def test_compiled_graph_holds_the_ops_and_runs_native(monkeypatch):
    """One graph, the fused ops as single nodes, and their bodies are the native ones."""
    from torch._dynamo.testing import CompileCounterWithBackend

    calls, library = [], native.kernels

    def recording(op):
        fwd, bwd = library(op)
        return (lambda *a: (calls.append(op), fwd(*a))[1]), bwd

    monkeypatch.setattr(native, "kernels", recording)
    counter = CompileCounterWithBackend("aot_eager")
    torch.compile(TinyBlock(body="native"), backend=counter, fullgraph=True)(*tiny_batch())[0].backward()
    assert counter.frame_count == 1
    targets = {str(node.target) for gm in counter.graphs for node in gm.graph.nodes}
    assert {"hybengine.group_norm_silu_fwd.default", "hybengine.hybrid_loss_fwd.default"} <= targets
    assert sorted(set(calls)) == sorted(bodies.OPS)


@needs_native
def test_info_reports_native_on_cpu(monkeypatch):
    monkeypatch.setenv("HYBENGINE_CPU_BACKEND", "native")  # read by the report's resolve, not at import
    text = info.report()
    assert "kernels compiled: DEFAULT" in text and "running:" in text
    for op in bodies.OPS:
        assert any(line.split()[:2] == [op, "native"] for line in text.splitlines()), text


def run_info(**env) -> subprocess.CompletedProcess:
    """`python -m hybengine.kernels.info`, twice, after an import of hybengine.ops."""
    code = ("import hybengine.kernels as k, hybengine.ops; "
            "from hybengine.kernels import info; info.report(); print(info.report())")
    clean = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "HYBENGINE_CPU_BACKEND")}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120, check=True)


def assert_fell_back(proc: subprocess.CompletedProcess, reason: str, warnings: int = 1):
    assert proc.stderr.count("native CPU kernels unavailable") == warnings, proc.stderr  # logged once
    assert reason in proc.stdout, proc.stdout
    for op in bodies.OPS:
        assert any(line.split()[:2] == [op, "math"] for line in proc.stdout.splitlines()), proc.stdout


def test_disabled_library_falls_back_to_math():
    """Disabled on purpose: nothing is loaded, so nothing to warn about; the report says why."""
    assert_fell_back(run_info(HYBENGINE_NATIVE="0"), "disabled by HYBENGINE_NATIVE=0", warnings=0)


@needs_native
def test_library_built_for_another_torch_is_not_loaded(tmp_path):
    lib = tmp_path / native.LIB_NAME
    shutil.copyfile(native.INSTALLED, lib)
    (tmp_path / native.STAMP_NAME).write_text(json.dumps({"torch": "1.0.0+cpu"}))
    assert_fell_back(run_info(HYBENGINE_NATIVE_LIB=str(lib)), "built for torch 1.0.0+cpu")
