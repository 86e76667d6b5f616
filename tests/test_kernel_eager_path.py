"""The fused ops' two entry paths agree: eager calls (an autograd.Function over the op bodies) and
the `torch.library` custom ops that torch.compile traces.

Both call the same body (`bodies.implementation`), so their outputs and gradients must be
bit-identical, and the eager path must not go through the custom op (its Python layers are the host
overhead it exists to avoid). That compiled graphs hold the custom ops is checked in
tests/test_kernel_compile.py.
"""
import pytest
import torch
from kernel_helpers import W_MASK, gn_inputs, loss_inputs

from hybengine.kernels import group_norm_silu, hybrid_loss
from hybengine.kernels.group_norm_silu.op import group_norm_silu_fwd_op
from hybengine.kernels.hybrid_loss import hybrid_loss_fwd_op


def _gn_via_op(x, weight, bias, groups, eps, scale, shift):
    return group_norm_silu_fwd_op(x, weight, bias, scale, shift, groups, eps)[0]


def _loss_via_op(out, x_n, x, y, c_skip, c_out, lam, w_mask, ignore_index):
    return hybrid_loss_fwd_op(out, x_n, x, y, c_skip, c_out, lam, w_mask, ignore_index, out.requires_grad)[:2]


def _leaves(*tensors):
    return [t.detach().float().clone().requires_grad_() if t is not None else None for t in tensors]


@pytest.mark.parametrize("modulated", [True, False], ids=["modulated", "plain"])
def test_group_norm_silu_eager_equals_custom_op(modulated):
    x, weight, bias, s, t, dy = gn_inputs(2, 6, 5, 7, scale=modulated, shift=modulated, channels_last=True)
    results = []
    for fn in (group_norm_silu, _gn_via_op):
        leaves = _leaves(x, weight, bias, s, t)
        y = fn(leaves[0], leaves[1], leaves[2], 3, 1e-5, leaves[3], leaves[4])
        y.backward(dy.float())
        results.append((y.grad_fn.name(), y.detach(), [v.grad if v is not None else None for v in leaves]))
    (eager_node, y_e, g_e), (op_node, y_o, g_o) = results
    assert "GroupNormSiLUEager" in eager_node and "GroupNormSiLUEager" not in op_node
    assert torch.equal(y_e, y_o)
    for a, b in zip(g_e, g_o, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


def test_hybrid_loss_eager_equals_custom_op():
    (out, x_n, x, y, c_skip, c_out, lam), (g_d, g_m) = loss_inputs(3, 3, 2, 6, 5)
    data = [t.float() if t.is_floating_point() else t for t in (x_n, x, y, c_skip, c_out, lam)]
    results = []
    for fn in (hybrid_loss, _loss_via_op):
        (f,) = _leaves(out)
        denoise, mask = fn(f, *data, W_MASK, -100)
        ((denoise * g_d.float()).sum() + (mask * g_m.float()).sum()).backward()
        results.append((denoise.grad_fn.name(), denoise.detach(), mask.detach(), f.grad))
    eager, via_op = results
    assert "HybridLossEager" in eager[0] and "HybridLossEager" not in via_op[0]
    for a, b in zip(eager[1:], via_op[1:], strict=True):
        assert torch.equal(a, b)


def test_hybrid_loss_eager_no_grad_writes_no_gradient():
    (out, *rest), _ = loss_inputs(2, 1, 3, 4, 4)
    data = [t.float() if t.is_floating_point() else t for t in rest]
    with torch.no_grad():
        denoise, mask = hybrid_loss(out.float().requires_grad_(), *data, W_MASK)
    assert denoise.grad_fn is None and mask.grad_fn is None


def test_double_backward_is_refused():
    """As with the custom op, whose backward has no autograd formula: an error, not a wrong answer."""
    x, weight, bias, s, t, _ = gn_inputs(1, 4, 3, 3)
    x, weight, bias, s, t = (v.float().requires_grad_() for v in (x, weight, bias, s, t))
    (gx,) = torch.autograd.grad(group_norm_silu(x, weight, bias, 2, 1e-5, s, t).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        gx.sum().backward()
