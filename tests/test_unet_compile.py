"""The real U-Net with the fused ops (and the sub-pixel upsample conv) inside compiles as ONE graph and
matches eager, forward and backward. Dynamo and AOTAutograd are what can break or differ here, so these
use the aot_eager backend; Inductor's code generation over the same ops (about 3 CPU-minutes on this
host) is tested once, on the whole training step (tests/test_step_host_sync.py, model.compile_step)."""
import pytest
import torch

from hybengine import ops
from hybengine.config import KernelConfig, ModelConfig
from hybengine.kernels.bodies import Environment
from hybengine.unet import build_unet

pytestmark = pytest.mark.slow


def test_fullgraph_compile_with_fused_ops_matches_eager():
    fused = ops.resolve_ops(KernelConfig(group_norm_silu="fused", hybrid_loss="fused", upsample_conv="subpixel"),
                            "cpu")
    assert fused.chosen() == {"group_norm_silu": "fused", "hybrid_loss": "fused", "upsample_conv": "subpixel"}
    print("CPU bodies:", [str(c) for c in fused.choices])
    torch.manual_seed(0)
    net = build_unet(ModelConfig(channels=8, channel_mult=[1, 2], groups=4, attn_levels=[1]), 1, 3, fused)
    for p in net.parameters():  # zero-initialised output layers would hide mismatches
        torch.nn.init.normal_(p, std=0.2)
    x = -2.3 + 0.5 * torch.randn(2, 1, 8, 8)
    c_noise = torch.randn(2)
    y = torch.randint(0, 3, (2, 8, 8))

    def loss_of(fn):
        out = fn(x, c_noise)
        den, mask = fused.hybrid_loss(out, x, x, y, torch.full((2,), 0.5), torch.full((2,), 0.3),
                                    torch.full((2,), 2.0), 0.2, 255)
        return out, (den + mask).sum()

    out_e, loss_e = loss_of(net)
    grads_e = torch.autograd.grad(loss_e, list(net.parameters()))
    compiled = torch.compile(net.forward, backend="aot_eager", fullgraph=True)  # any graph break is an error
    out_c, loss_c = loss_of(compiled)
    grads_c = torch.autograd.grad(loss_c, list(net.parameters()))
    torch.testing.assert_close(out_c, out_e, rtol=1e-4, atol=1e-4)
    for (name, _), ge, gc in zip(net.named_parameters(), grads_e, grads_c, strict=True):
        torch.testing.assert_close(gc, ge, rtol=1e-3, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_fullgraph_compile_with_the_slab_design(monkeypatch):
    """The config's slab design reaches the op inside ONE traced graph of the U-Net (as an argument of the
    custom op), runs the slab launchers forward and backward, and matches the U-Net on the reference ops.
    Cheap: a one-level U-Net at 4x4 (plain and modulated norms), aot_eager (the graph torch.compile
    traces, without Inductor's code generation), and the interpreter runs only the compiled pass."""
    from torch._dynamo.testing import CompileCounterWithBackend

    from hybengine.kernels.group_norm_silu import slab

    calls = {"fwd": 0, "bwd": 0}
    for kind in calls:
        launcher = getattr(slab, f"group_norm_silu_{kind}_slab")
        monkeypatch.setattr(slab, f"group_norm_silu_{kind}_slab",
                            lambda *a, _f=launcher, _k=kind, **k: calls.__setitem__(_k, calls[_k] + 1) or _f(*a, **k))
    model = ModelConfig(channels=4, channel_mult=[1], num_res_blocks=1, groups=2, attn_levels=[])
    slab_ops = ops.resolve_ops(KernelConfig(group_norm_silu="fused", group_norm_silu_channels_last="slab"), "cpu",
                               Environment(cpu_body="triton-interpreter"))
    torch.manual_seed(0)
    ref = build_unet(model, 1, 3, ops.resolve_ops(KernelConfig(group_norm_silu="reference"), "cpu"))
    for p in ref.parameters():
        torch.nn.init.normal_(p, std=0.2)
    net = build_unet(model, 1, 3, slab_ops)
    net.load_state_dict(ref.state_dict())
    x, c_noise = -2.3 + 0.5 * torch.randn(2, 1, 4, 4), torch.randn(2)
    out_r = ref(x, c_noise)
    grads_r = torch.autograd.grad(out_r.square().sum(), list(ref.parameters()))
    counter = CompileCounterWithBackend("aot_eager")
    out_c = torch.compile(net.forward, backend=counter, fullgraph=True)(x, c_noise)
    grads_c = torch.autograd.grad(out_c.square().sum(), list(net.parameters()))
    assert counter.frame_count == 1
    designs = [node.args[7] for gm in counter.graphs for node in gm.graph.nodes
               if str(node.target) == "hybengine.group_norm_silu_fwd.default"]
    assert designs and set(designs) == {"slab"}, designs
    assert calls == {"fwd": len(designs), "bwd": len(designs)}, calls
    torch.testing.assert_close(out_c, out_r, rtol=1e-4, atol=1e-4)
    for (name, _), gr, gc in zip(net.named_parameters(), grads_r, grads_c, strict=True):
        torch.testing.assert_close(gc, gr, rtol=1e-3, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
