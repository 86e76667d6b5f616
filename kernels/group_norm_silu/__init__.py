"""Fused GroupNorm + affine + per-sample modulation + SiLU: the op, its Triton designs, its reference.

x is viewed as (N, C, HW) with its own strides (NCHW and channels-last both flatten H, W without a
copy). Group g of sample n holds the CG = C/G channels g*CG .. g*CG+CG-1 over all HW pixels,
M = CG*HW elements. With s = scale[n, c] and t = shift[n, c] (0 when absent):

forward
    mean, rstd = statistics of the group (fp32, centred: Welford or Chan combinations of
                 partial (mean, m2), never E[x^2] - E[x]^2);  rstd = 1/sqrt(m2/M + eps)
    xhat = (x - mean) * rstd
    u    = xhat * w + b                       # GroupNorm affine
    h    = u * (1 + s) + t  = xhat * a + bb,  a = w*(1 + s),  bb = b*(1 + s) + t
    y    = h * sigmoid(h)

backward (recomputes xhat, h from x, mean, rstd; nothing else is saved)
    dh     = dy * sig * (1 + h * (1 - sig)),  sig = sigmoid(h)
    s1[n,c] = sum_hw dh,    s2[n,c] = sum_hw dh * xhat              (fp32, per channel)
    dshift = s1,   dscale = w*s2 + b*s1,   dbias = sum_n (1+s)*s1,   dweight = sum_n (1+s)*s2
    dxhat  = dh * a
    c1     = sum_{c in g} a*s1 / M  (= mean dxhat),   c2 = sum_{c in g} a*s2 / M  (= mean dxhat*xhat)
    dx     = rstd * (dxhat - c1 - xhat * c2)

Files (imports run downwards only: op -> design -> groups, rows, slab -> tiles):
    op.py           the public `group_norm_silu`, its custom ops (fake, autograd) and eager Function
    design.py       the one choice between the Triton designs, which of them are experimental, and
                    the "triton" body that applies it
    groups.py       one program (or a split of S programs) per (sample, group); the default
    rows.py         channels-last: programs own whole pixel rows of a sample, all channels (experimental)
    slab.py         one persistent launch per pass, each input read once from DRAM (experimental)
    tiles.py        the per-element math the designs share: affine constants, SiLU, dh, dx
    registers.py    the register budgets (ptxas maxnreg) of the group and slab kernels on sm_90
    param_grads.py  dweight, dbias (and dscale, dshift) from the per-channel sums s1, s2
    math_path.py    the same forward and backward formulas in plain torch (the "math" body)
    reference.py    the pure-PyTorch reference (autograd) that tests and benchmarks judge against
The C++ CPU body lives in kernels/native/ (group_norm_silu_kernel.cpp).

A change to the math (the activation, the affine, the modulation) touches one file per body:
    Triton     tiles.py (per-element formulas; the designs' statistics loops are their own)
    native     kernels/native/group_norm_silu_kernel.cpp
    math       math_path.py
and the reference, reference.py, which the tests judge all three against (tests/kernel_helpers.py).
Then run the kernel tests (tests/test_kernel_group_norm_silu*.py) and, for the Triton body, the byte
counts (tests/test_kernel_traffic.py) and the sm_90 compiles (tests/kernel_aot.py --real).
"""
from .op import group_norm_silu
from .reference import group_norm_silu_reference

__all__ = ["group_norm_silu", "group_norm_silu_reference"]
