"""The parameter-gradient kernel every GroupNorm-SiLU design shares (param_grads.py), on its own:
sample tiles with a ragged last tile, channel blocks with a ragged last block, split partials, and
the slab form that leaves dscale/dshift to its own pass. Interpreter on CPU (conftest)."""
import pytest
import torch

from hybengine.kernels import bodies
from hybengine.kernels.group_norm_silu.math_path import _param_grads
from hybengine.kernels.group_norm_silu.param_grads import block_n, launch_param_grads

pytestmark = pytest.mark.skipif(bodies.select("group_norm_silu", "cpu") != "triton-interpreter",
                                reason="Triton interpreter not active")

N, C = 19, 70  # two sample tiles (16 + 3), three channel blocks (32 + 32 + 6)


def _run(splits: int, with_scale: bool, write_mod: bool):
    g = torch.Generator().manual_seed(splits * 2 + with_scale)
    part = torch.randn(2, splits, N, C, generator=g)
    weight, bias = torch.randn(C, generator=g), torch.randn(C, generator=g)
    scale = torch.randn(N, C, generator=g) if with_scale else None
    sums = part[:, 0].clone() if splits == 1 else torch.full((2, N, C), float("nan"))
    outs = [torch.full((C,), float("nan")) for _ in range(2)] + [torch.full((N, C), float("nan")) for _ in range(2)]
    launch_param_grads(part if splits > 1 else sums, sums, weight, bias, scale if with_scale else weight,
                       C if with_scale else 0, with_scale, *outs[:2], *(outs[2:] if write_mod else ()))
    return part, weight, bias, scale, sums, outs


@pytest.mark.parametrize("splits", [1, 3], ids=["whole", "split"])
@pytest.mark.parametrize("with_scale", [False, True], ids=["plain", "scale"])
def test_matches_the_math_path_over_ragged_tiles(splits, with_scale):
    assert block_n(N) == 16 and N % 16
    part, weight, bias, scale, sums, (dw, db, dscale, dshift) = _run(splits, with_scale, write_mod=True)
    s1, s2 = part.double().sum(dim=1)
    want = _param_grads(s1, s2, weight.double(), bias.double(), None if scale is None else scale.double(), None)
    for name, got, ref in zip(("dweight", "dbias", "dscale", "dshift"), (dw, db, dscale, dshift), want, strict=True):
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    torch.testing.assert_close(sums.double(), torch.stack([s1, s2]), rtol=1e-6, atol=1e-6)


def test_slab_form_writes_only_the_parameter_gradients_and_is_bitwise_reproducible():
    first = _run(1, True, write_mod=False)
    second = _run(1, True, write_mod=False)
    part, weight, bias, scale, _, (dw, db, dscale, dshift) = first
    assert torch.isnan(dscale).all() and torch.isnan(dshift).all()  # left to the slab's own pass
    assert not torch.isnan(dw).any() and not torch.isnan(db).any()
    want = _param_grads(*part.double()[:, 0], weight.double(), bias.double(), scale.double(), None)
    torch.testing.assert_close(dw.double(), want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(db.double(), want[1], rtol=1e-5, atol=1e-5)
    assert torch.equal(dw, second[-1][0]) and torch.equal(db, second[-1][1])
