"""A tiny U-Net style block with both fused ops compiles with fullgraph=True (no graph break) and
its forward and backward match eager; plus the body selection and the native body's hook."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kernel_helpers import TinyBlock, assert_compiled_matches_eager, tiny_batch

from hybengine.kernels import bodies, group_norm_silu, hybrid_loss, hybrid_loss_reference, native, op_backends
from hybengine.kernels.bodies import Environment
from hybengine.kernels.group_norm_silu.math_path import group_norm_silu_bwd_math, group_norm_silu_fwd_math

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")


def test_fullgraph_compile_matches_eager():
    torch.manual_seed(0)
    assert_compiled_matches_eager(TinyBlock(), tiny_batch())


def test_compiled_graph_holds_the_fused_ops():
    """The ops are traced as single nodes (not decomposed, not broken out of the graph)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("aot_eager")
    torch.compile(TinyBlock(), backend=counter, fullgraph=True)(*tiny_batch())[0].backward()
    assert counter.frame_count == 1
    targets = {str(node.target) for gm in counter.graphs for node in gm.graph.nodes}
    assert "hybengine.group_norm_silu_fwd.default" in targets
    assert "hybengine.hybrid_loss_fwd.default" in targets


def test_op_backends_reports_every_op_and_device():
    table = op_backends()
    assert set(table) == set(bodies.OPS)
    for op, per_device in table.items():
        assert set(per_device) == {"cpu", "cuda"}
        assert per_device["cpu"] in bodies.CPU_BACKENDS, op
        assert per_device["cuda"] in ("triton", "triton-interpreter", "math"), op
    if bodies.INTERPRET:
        assert table["group_norm_silu"]["cpu"] == "triton-interpreter"


def test_forcing_an_unknown_body_fails(monkeypatch):
    with pytest.raises(ValueError, match="unknown body 'cuda-graphs'"):
        bodies.check_body("group_norm_silu", "cuda-graphs")
    monkeypatch.setenv("HYBENGINE_CPU_BACKEND", "cuda-graphs")
    with pytest.raises(ValueError, match="HYBENGINE_CPU_BACKEND='cuda-graphs'"):
        bodies.environment()


def test_native_hook_is_used_when_asked_for(monkeypatch):
    """Issue 7's C++ kernels plug in through native.kernels: the op's "native" body calls them."""
    calls = []

    def fwd(*args):
        calls.append("fwd")
        return group_norm_silu_fwd_math(*args)

    def bwd(*args):
        calls.append("bwd")
        return group_norm_silu_bwd_math(*args)

    monkeypatch.setattr(native, "kernels", lambda op: (fwd, bwd))  # the library may or may not be built
    x = torch.randn(1, 4, 3, 3, requires_grad=True)
    group_norm_silu(x, torch.ones(4), torch.zeros(4), 2, body="native").sum().backward()
    assert calls == ["fwd", "bwd"]
    with pytest.raises(ValueError, match="runs CPU tensors"):
        bodies.implementation("group_norm_silu", "native", x.to("meta"), {})


def test_math_backend_in_compiled_loss():
    """The math body also runs inside a compiled graph (a constant argument of the op) and matches the reference."""
    x_n, x, y, c_skip, c_out, lam, _ = tiny_batch()
    out = torch.randn(2, 5, 7, 9)
    fn = torch.compile(lambda *a: hybrid_loss(*a, 0.5, body="math"), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(fn(out, x_n, x, y, c_skip, c_out, lam),
                               hybrid_loss_reference(out, x_n, x, y, c_skip, c_out, lam, 0.5))


@pytest.mark.skipif(not bodies.HAS_TRITON, reason="triton not installed")
def test_kernels_compile_for_sm90():
    """The main kernel variants compile to an H100 cubin (no GPU needed): what the interpreter can't see."""
    script = Path(__file__).with_name("kernel_aot.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("ok ") >= 12, res.stdout


@pytest.mark.skipif(not bodies.HAS_TRITON, reason="triton not installed")
def test_real_call_list_kernels_compile_without_spills():
    """A subset of the real call list's GroupNorm-SiLU variants (group kernels at C=128, 128x128, both
    layouts; the slab kernels channels-last), each of which spilled before, compiles for sm_90 with the
    register budgets of registers.TABLE and no spill. The full list: `kernel_aot.py --real
    --check-spills`, committed as benchmarks/results/traffic/kernel_aot_real_sm90.log."""
    script = Path(__file__).with_name("kernel_aot.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, str(script), "--real", "--subset", "--check-spills"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("ok ") >= 10 and "_slab_bwd_kernel" in res.stdout, res.stdout
    assert "# 0 failed, 0 spilled" in res.stdout, res.stdout


def test_an_environment_changes_only_the_resolve_it_is_given_to():
    """HYBENGINE_CPU_BACKEND reaches a body through the Environment a resolve reads, nothing else."""
    before = op_backends()
    assert {per["cpu"] for per in op_backends(Environment(cpu_body="math")).values()} == {"math"}
    assert bodies.resolve_body("hybrid_loss", "cpu", Environment(cpu_body="math")) == ("math", "HYBENGINE_CPU_BACKEND")
    assert op_backends(Environment(native=False))["group_norm_silu"]["cpu"] != "native"
    assert op_backends() == before
