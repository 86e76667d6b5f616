"""Fused joint loss (EDM denoise term + masked cross-entropy): Triton kernels, launchers, op.

F = out is (B, I+K, P) (I image channels, K classes, P = H*W pixels, any of NCHW/channels-last).
Per sample b (scalars c_skip, c_out, lam of sample b; valid = y != ignore_index):

forward, one pass over F that also writes the gradient
    r       = c_skip * x_n + c_out * F[:I] - x              # D_x - x
    denoise = lam * sum r^2 / (I*P)
    z       = F[I:],  m = max_k z,  e = exp(z - m),  se = sum_k e
    ce      = m + log(se) - z[y]                            # per valid pixel
    mask    = w_mask * sum_valid ce / n_valid,  n_valid = max(1, #valid)
    dF[:I]  = 2 * lam * c_out * r / (I*P)                   # d denoise / dF
    dF[I:]  = w_mask * (e/se - onehot(y)) * valid           # d mask / dF, times n_valid
    mask_scale = 1 / n_valid

n_valid is only known once every pixel of the sample has been read, so the pass stores the class
part of dF without it and the backward folds it into its per-sample factor:

backward (g_denoise, g_mask: upstream grads, (B,))
    dout[:, :I] = g_denoise * dF[:, :I],   dout[:, I:] = (g_mask * mask_scale) * dF[:, I:]

Programs own (sample, pixel block) pairs and write per-program partial sums that are reduced in a
fixed order afterwards: no atomics, no (B, K, H, W) intermediates, deterministic.
"""
import torch

from . import bodies
from .bodies import tl, triton
from .launch import check_sample_size, forced_plan, split_plan
from .layout import as_n_c_p, as_n_p, write_back


def _heuristics(ptr: str) -> dict:
    """BLOCK_C covers all I+K channels; BLOCK_P fills the rest of a tile and divides the chunk."""
    tile = lambda args: 8192 if args[ptr].device.type == "cpu" else 2048  # interpreter: big steps
    return {
        "BLOCK_C": lambda args: triton.next_power_of_2(args["NC"]),
        "BLOCK_P": lambda args: min(
            triton.next_power_of_2(args["P_PER_PROG"]), max(16, tile(args) // args["BLOCK_C"])
        ),
        "num_warps": lambda args: 4,
    }


# ----------------------------------------------------------------------------- Triton kernels


@triton.heuristics(_heuristics("OUT"))
@triton.jit
def _hybrid_loss_fwd_kernel(
    OUT,  # pointer to F, shape (B, I+K, P), strides (stride_ob, stride_oc, stride_op)
    XN,  # pointer to x_n, shape (B, I, P), strides (stride_nb, stride_nc, stride_np)
    X,  # pointer to x, shape (B, I, P), strides (stride_xb, stride_xc, stride_xp)
    Y,  # pointer to y (any integer dtype), shape (B, P), strides (stride_yb, stride_yp)
    C_SKIP,  # pointer to c_skip, shape (B,), stride stride_cs
    C_OUT,  # pointer to c_out, shape (B,), stride stride_co
    LAM,  # pointer to lam, shape (B,), stride stride_lam
    DOUT,  # out: pointer to dF, shape (B, I+K, P), strides (stride_gb, stride_gc, stride_gp)
    PART,  # out: partial (sum r^2, sum ce, n_valid), shape (3, B, S) fp32
    NC,  # I + K channels of F
    P,  # pixels per sample
    P_PER_PROG,  # pixels per program (P when S == 1)
    w_mask,  # float, pinned to fp32 below
    ignore_index,  # int
    stride_cs,
    stride_co,
    stride_lam,
    stride_ob,
    stride_oc,
    stride_op,
    stride_nb,
    stride_nc,
    stride_np,
    stride_xb,
    stride_xc,
    stride_xp,
    stride_yb,
    stride_yp,
    stride_gb,
    stride_gc,
    stride_gp,
    N_IMG: tl.constexpr,  # I (1 or 3): the image-channel loop unrolls
    WRITE_GRAD: tl.constexpr,  # False under no_grad: no dF stores
    BLOCK_C: tl.constexpr,  # >= I+K, power of two
    BLOCK_P: tl.constexpr,
):
    """Loss partials and dF for the pixel chunk s of sample b. Grid (B, S)."""
    b = tl.program_id(0)
    pid_s = tl.program_id(1)
    B = tl.num_programs(0)
    S = tl.num_programs(1)
    w_mask = tl.cast(w_mask, tl.float32)
    b64 = b.to(tl.int64)
    c_skip = tl.load(C_SKIP + b * stride_cs).to(tl.float32)
    c_out = tl.load(C_OUT + b * stride_co).to(tl.float32)
    lam = tl.load(LAM + b * stride_lam).to(tl.float32)
    coef = 2.0 * lam * c_out / (N_IMG * P * 1.0)  # d denoise / d F[:I] = coef * r
    k = tl.arange(0, BLOCK_C)
    kmask = (k >= N_IMG) & (k < NC)
    p_lo = pid_s * P_PER_PROG
    p_hi = tl.minimum(p_lo + P_PER_PROG, P)
    r2 = tl.zeros([BLOCK_P], dtype=tl.float32)
    ce_sum = tl.zeros([BLOCK_P], dtype=tl.float32)
    n_valid = tl.zeros([BLOCK_P], dtype=tl.float32)
    for pb in range(p_lo, p_hi, BLOCK_P):
        p = pb + tl.arange(0, BLOCK_P)
        pmask = p < p_hi

        # denoise: r = c_skip*x_n + c_out*F[:I] - x
        for c in tl.static_range(N_IMG):
            f = tl.load(OUT + b64 * stride_ob + c * stride_oc + p * stride_op, mask=pmask, other=0.0)
            xn = tl.load(XN + b64 * stride_nb + c * stride_nc + p * stride_np, mask=pmask, other=0.0)
            x = tl.load(X + b64 * stride_xb + c * stride_xc + p * stride_xp, mask=pmask, other=0.0)
            r = c_skip * xn.to(tl.float32) + c_out * f.to(tl.float32) - x.to(tl.float32)
            r2 += r * r
            if WRITE_GRAD:
                g_offs = b64 * stride_gb + c * stride_gc + p * stride_gp
                tl.store(DOUT + g_offs, (coef * r).to(DOUT.dtype.element_ty), mask=pmask)

        # mask: cross-entropy over the K class channels of a (BLOCK_C, BLOCK_P) tile
        tmask = kmask[:, None] & pmask[None, :]
        z = tl.load(OUT + b64 * stride_ob + k[:, None] * stride_oc + p[None, :] * stride_op, mask=tmask, other=0.0)
        z = tl.where(kmask[:, None], z.to(tl.float32), float("-inf"))
        yv = tl.load(Y + b64 * stride_yb + p * stride_yp, mask=pmask, other=ignore_index).to(tl.int32)
        valid = (yv != ignore_index) & pmask
        m = tl.max(z, axis=0)
        e = tl.exp(z - m[None, :])
        se = tl.sum(e, axis=0)
        onehot = k[:, None] == (yv + N_IMG)[None, :]
        z_y = tl.sum(tl.where(onehot, z, 0.0), axis=0)
        ce_sum += tl.where(valid, m + tl.log(se) - z_y, 0.0)
        n_valid += valid.to(tl.float32)
        if WRITE_GRAD:
            dz = tl.where(valid[None, :], w_mask * (e / se[None, :] - onehot.to(tl.float32)), 0.0)
            g_offs = b64 * stride_gb + k[:, None] * stride_gc + p[None, :] * stride_gp
            tl.store(DOUT + g_offs, dz.to(DOUT.dtype.element_ty), mask=tmask)

    part = b * S + pid_s
    tl.store(PART + part, tl.sum(r2))
    tl.store(PART + B * S + part, tl.sum(ce_sum))
    tl.store(PART + 2 * B * S + part, tl.sum(n_valid))


@triton.heuristics({"BLOCK_B": lambda args: min(128, triton.next_power_of_2(args["B"])), "num_warps": lambda args: 1})
@triton.jit
def _hybrid_loss_finish_kernel(
    PART,  # partial (sum r^2, sum ce, n_valid), shape (3, B, S) fp32, from _hybrid_loss_fwd_kernel
    LAM,  # pointer to lam, shape (B,), stride stride_lam
    DENOISE,  # out: denoise, shape (B,) fp32
    MASK,  # out: mask, shape (B,) fp32
    MASK_SCALE,  # out: 1 / n_valid, shape (B,) fp32
    B,  # samples
    S,  # programs per sample in the forward
    P,  # pixels per sample
    w_mask,  # float, pinned to fp32 below
    stride_lam,
    N_IMG: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    """Per-sample terms from the partials, summed over programs in a fixed order. Grid (cdiv(B, BLOCK_B),)."""
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    bmask = b < B
    w_mask = tl.cast(w_mask, tl.float32)
    sq = tl.zeros([BLOCK_B], dtype=tl.float32)
    ce = tl.zeros([BLOCK_B], dtype=tl.float32)
    n_valid = tl.zeros([BLOCK_B], dtype=tl.float32)
    for s in range(0, S):
        sq += tl.load(PART + b * S + s, mask=bmask, other=0.0)
        ce += tl.load(PART + (B + b) * S + s, mask=bmask, other=0.0)
        n_valid += tl.load(PART + (2 * B + b) * S + s, mask=bmask, other=0.0)
    lam = tl.load(LAM + b * stride_lam, mask=bmask, other=0.0).to(tl.float32)
    n_valid = tl.maximum(n_valid, 1.0)
    tl.store(DENOISE + b, lam * sq / (N_IMG * P * 1.0), mask=bmask)
    tl.store(MASK + b, w_mask * ce / n_valid, mask=bmask)
    tl.store(MASK_SCALE + b, 1.0 / n_valid, mask=bmask)


@triton.heuristics(_heuristics("DF"))
@triton.jit
def _hybrid_loss_bwd_kernel(
    DF,  # pointer to dF, shape (B, I+K, P), strides (stride_fb, stride_fc, stride_fp)
    G_DENOISE,  # pointer to the upstream grad of denoise, shape (B,), stride stride_gd
    G_MASK,  # pointer to the upstream grad of mask, shape (B,), stride stride_gm
    MASK_SCALE,  # pointer to 1 / n_valid from the forward, shape (B,) fp32
    DOUT,  # out: pointer to dout, shape (B, I+K, P), strides (stride_gb, stride_gc, stride_gp)
    NC,  # I + K
    P,  # pixels per sample
    P_PER_PROG,  # pixels per program
    stride_gd,
    stride_gm,
    stride_fb,
    stride_fc,
    stride_fp,
    stride_gb,
    stride_gc,
    stride_gp,
    N_IMG: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """dout = (g_denoise or g_mask * mask_scale)[b] * dF for the pixel chunk s of sample b. Grid (B, S)."""
    b = tl.program_id(0)
    b64 = b.to(tl.int64)
    k = tl.arange(0, BLOCK_C)
    g_denoise = tl.load(G_DENOISE + b * stride_gd).to(tl.float32)
    g_mask = tl.load(G_MASK + b * stride_gm).to(tl.float32) * tl.load(MASK_SCALE + b)
    factor = tl.where(k < N_IMG, g_denoise, g_mask)
    p_lo = tl.program_id(1) * P_PER_PROG
    p_hi = tl.minimum(p_lo + P_PER_PROG, P)
    for pb in range(p_lo, p_hi, BLOCK_P):
        p = pb + tl.arange(0, BLOCK_P)
        mask = (k < NC)[:, None] & (p < p_hi)[None, :]
        df = tl.load(DF + b64 * stride_fb + k[:, None] * stride_fc + p[None, :] * stride_fp, mask=mask, other=0.0)
        dout = df.to(tl.float32) * factor[:, None]
        g_offs = b64 * stride_gb + k[:, None] * stride_gc + p[None, :] * stride_gp
        tl.store(DOUT + g_offs, dout.to(DOUT.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launchers


def _plan(o3: torch.Tensor, p_per_prog: int | None) -> tuple[int, int]:
    b, nc, p = o3.shape
    if p_per_prog is not None:
        return forced_plan(p, p_per_prog)
    return split_plan(b, p, nc, o3.device, min_elems=2048 if o3.is_cuda else None)


def _per_sample(v: torch.Tensor) -> torch.Tensor:
    """(B,) view of a per-sample value, any float dtype and stride (the kernels take its stride)."""
    return v.reshape(-1)


def hybrid_loss_fwd_triton(
    out: torch.Tensor,  # F, (B, I+K, H, W)
    x_n: torch.Tensor,  # (B, I, H, W)
    x: torch.Tensor,  # (B, I, H, W)
    y: torch.Tensor,  # (B, H, W) integer classes
    c_skip: torch.Tensor,  # (B,)
    c_out: torch.Tensor,  # (B,)
    lam: torch.Tensor,  # (B,)
    w_mask: float,
    ignore_index: int,
    need_grad: bool,
    p_per_prog: int | None = None,  # force the pixels per program (tests); None: `launch.split_plan`
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns denoise, mask ((B,) fp32), dF (out's dtype and layout; empty if not need_grad), mask_scale."""
    check_sample_size(out, "out", "hybrid_loss")
    o3, xn3, x3, y2 = as_n_c_p(out), as_n_c_p(x_n), as_n_c_p(x), as_n_p(y)
    b, nc, p = o3.shape
    n_img = x3.shape[1]
    s, chunk = _plan(o3, p_per_prog)
    c_skip, c_out, lam = _per_sample(c_skip), _per_sample(c_out), _per_sample(lam)
    dF = torch.empty_like(out) if need_grad else out.new_empty(0)
    g3 = as_n_c_p(dF) if need_grad else o3  # not written when not need_grad
    part = torch.empty((3, b, s), device=out.device, dtype=torch.float32)
    _hybrid_loss_fwd_kernel[(b, s)](
        o3, xn3, x3, y2, c_skip, c_out, lam, g3, part, nc, p, chunk, float(w_mask), int(ignore_index),
        c_skip.stride(0), c_out.stride(0), lam.stride(0),
        *o3.stride(), *xn3.stride(), *x3.stride(), *y2.stride(), *g3.stride(),
        N_IMG=n_img, WRITE_GRAD=need_grad,
    )  # fmt: skip
    denoise, mask, mask_scale = (torch.empty(b, device=out.device, dtype=torch.float32) for _ in range(3))
    grid = lambda meta: (triton.cdiv(b, meta["BLOCK_B"]),)
    _hybrid_loss_finish_kernel[grid](part, lam, denoise, mask, mask_scale, b, s, p, float(w_mask), lam.stride(0),
                                     N_IMG=n_img)
    if need_grad:
        write_back(dF, g3)
    return denoise, mask, dF, mask_scale


def hybrid_loss_bwd_triton(
    dF: torch.Tensor,  # (B, I+K, H, W) from the forward
    g_denoise: torch.Tensor,  # (B,) any stride (autograd may hand an expanded tensor)
    g_mask: torch.Tensor,  # (B,)
    mask_scale: torch.Tensor,  # (B,) 1 / n_valid from the forward
    n_img: int,
    p_per_prog: int | None = None,
) -> torch.Tensor:
    """dout (dF's dtype and layout)."""
    dout = torch.empty_like(dF)
    f3, g3 = as_n_c_p(dF), as_n_c_p(dout)
    b, nc, p = f3.shape
    s, chunk = _plan(f3, p_per_prog)
    g_denoise, g_mask = _per_sample(g_denoise), _per_sample(g_mask)
    _hybrid_loss_bwd_kernel[(b, s)](
        f3, g_denoise, g_mask, mask_scale.contiguous(), g3, nc, p, chunk, g_denoise.stride(0), g_mask.stride(0),
        *f3.stride(), *g3.stride(), N_IMG=n_img,
    )  # fmt: skip
    return write_back(dout, g3)


# ----------------------------------------------------------------------------- math path (plain torch)


def hybrid_loss_fwd_math(out, x_n, x, y, c_skip, c_out, lam, w_mask: float, ignore_index: int, need_grad: bool):
    """Same contract as `hybrid_loss_fwd_triton`, in plain torch (fp64 for fp64 inputs)."""
    ct = torch.float64 if out.dtype == torch.float64 else torch.float32
    n_img = x.shape[1]
    col = lambda v: v.to(ct).reshape(-1, 1, 1, 1)
    f = out.to(ct)
    r = col(c_skip) * x_n.to(ct) + col(c_out) * f[:, :n_img] - x.to(ct)
    denoise = lam.to(ct).reshape(-1) * r.square().mean(dim=(1, 2, 3))
    z = f[:, n_img:]
    valid = y != ignore_index
    y_safe = torch.where(valid, y, 0).long()
    ce = (torch.logsumexp(z, dim=1) - z.gather(1, y_safe[:, None]).squeeze(1)) * valid
    n_valid = valid.sum(dim=(1, 2)).clamp(min=1).to(ct)
    mask = w_mask * ce.sum(dim=(1, 2)) / n_valid
    dF = torch.empty_like(out) if need_grad else out.new_empty(0)
    if need_grad:
        p = out.shape[2] * out.shape[3]
        dF[:, :n_img] = 2 * col(lam) * col(c_out) * r / (n_img * p)
        onehot = torch.nn.functional.one_hot(y_safe, z.shape[1]).permute(0, 3, 1, 2)
        dF[:, n_img:] = w_mask * (torch.softmax(z, dim=1) - onehot) * valid[:, None]
    return denoise, mask, dF, 1.0 / n_valid


def hybrid_loss_bwd_math(dF, g_denoise, g_mask, mask_scale, n_img: int):
    """Same contract as `hybrid_loss_bwd_triton`."""
    ct = torch.float64 if dF.dtype == torch.float64 else torch.float32
    k = dF.shape[1] - n_img
    factor = torch.cat(
        [g_denoise.to(ct)[:, None].expand(-1, n_img), (g_mask.to(ct) * mask_scale.to(ct))[:, None].expand(-1, k)],
        dim=1,
    )
    dout = torch.empty_like(dF)
    dout.copy_(dF.to(ct) * factor[:, :, None, None])
    return dout


BODIES = {"triton": bodies.Impl("triton", hybrid_loss_fwd_triton, hybrid_loss_bwd_triton),
          "math": bodies.Impl("math", hybrid_loss_fwd_math, hybrid_loss_bwd_math)}


# ----------------------------------------------------------------------------- op registration


@torch.library.custom_op("hybengine::hybrid_loss_fwd", mutates_args=())
def hybrid_loss_fwd_op(
    out: torch.Tensor,
    x_n: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    c_skip: torch.Tensor,
    c_out: torch.Tensor,
    lam: torch.Tensor,
    w_mask: float,
    ignore_index: int,
    need_grad: bool,
    body: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(denoise, mask, dF, mask_scale); dF is empty when not need_grad; `body`: bodies.BODIES."""
    impl = bodies.implementation("hybrid_loss", body, out, BODIES)
    return impl.fwd(out, x_n, x, y, c_skip, c_out, lam, w_mask, ignore_index, need_grad)


@hybrid_loss_fwd_op.register_fake
def _(out, x_n, x, y, c_skip, c_out, lam, w_mask, ignore_index, need_grad, body="auto"):
    ct = torch.float64 if out.dtype == torch.float64 else torch.float32
    per_sample = lambda: out.new_empty((out.shape[0],), dtype=ct)
    dF = torch.empty_like(out) if need_grad else out.new_empty(0)
    return per_sample(), per_sample(), dF, per_sample()


@torch.library.custom_op("hybengine::hybrid_loss_bwd", mutates_args=())
def hybrid_loss_bwd_op(
    dF: torch.Tensor, g_denoise: torch.Tensor, g_mask: torch.Tensor, mask_scale: torch.Tensor, n_img: int,
    body: str = "auto",
) -> torch.Tensor:
    """d out = g_denoise * dF[:, :I] and (g_mask * mask_scale) * dF[:, I:], per sample."""
    return bodies.implementation("hybrid_loss", body, dF, BODIES).bwd(dF, g_denoise, g_mask, mask_scale, n_img)


@hybrid_loss_bwd_op.register_fake
def _(dF, g_denoise, g_mask, mask_scale, n_img, body="auto"):
    return torch.empty_like(dF)


def _setup_context(ctx, inputs, output):
    _, dF, mask_scale = output[0], output[2], output[3]
    ctx.save_for_backward(dF, mask_scale)
    ctx.n_img, ctx.body = inputs[2].shape[1], inputs[10]


def _backward(ctx, g_denoise, g_mask, _g_dF, _g_mask_scale):
    dF, mask_scale = ctx.saved_tensors
    dout = hybrid_loss_bwd_op(dF, g_denoise, g_mask, mask_scale, ctx.n_img, ctx.body)
    return dout, None, None, None, None, None, None, None, None, None, None


hybrid_loss_fwd_op.register_autograd(_backward, setup_context=_setup_context)


class _HybridLossEager(torch.autograd.Function):
    """The op outside torch.compile: the custom op's bodies without its eager Python layers
    (see `group_norm_silu._GroupNormSiLUEager`)."""

    @staticmethod
    def forward(ctx, out, x_n, x, y, c_skip, c_out, lam, w_mask, ignore_index, need_grad, body):
        impl = bodies.implementation("hybrid_loss", body, out, BODIES)
        denoise, mask, dF, mask_scale = impl.fwd(out, x_n, x, y, c_skip, c_out, lam, w_mask, ignore_index, need_grad)
        ctx.save_for_backward(dF, mask_scale)
        ctx.impl, ctx.n_img = impl, x.shape[1]
        return denoise, mask

    @staticmethod
    @torch.autograd.function.once_differentiable  # like the custom op: no double backward
    def backward(ctx, g_denoise, g_mask):
        dF, mask_scale = ctx.saved_tensors
        dout = ctx.impl.bwd(dF, g_denoise, g_mask, mask_scale, ctx.n_img)
        return dout, None, None, None, None, None, None, None, None, None, None


def hybrid_loss(
    out: torch.Tensor,  # F: (B, I+K, H, W) network output, NCHW or channels-last
    x_n: torch.Tensor,  # (B, I, H, W) noisy image
    x: torch.Tensor,  # (B, I, H, W) clean image
    y: torch.Tensor,  # (B, H, W) integer class indices
    c_skip: torch.Tensor,  # (B,) (any shape with B elements)
    c_out: torch.Tensor,  # (B,)
    lam: torch.Tensor,  # (B,) EDM loss weight lambda(sigma)
    w_mask: float,
    ignore_index: int = -100,
    body: str = "auto",  # bodies.BODIES: auto, triton, triton-interpreter, native, math
) -> tuple[torch.Tensor, torch.Tensor]:
    """(denoise, mask), each (B,) fp32: the semantics of `hybrid_loss_reference`, fused.

    Differentiable in `out` only (x_n, x, y, c_* are data). Class indices outside [0, K) that are
    not ignore_index are undefined behaviour, as in F.cross_entropy on a GPU.
    """
    if out.dim() != 4 or x.dim() != 4 or x_n.shape != x.shape or out.shape[1] <= x.shape[1]:
        raise ValueError(
            f"need out (B, I+K, H, W) with K >= 1 and x, x_n (B, I, H, W); got {tuple(out.shape)}, "
            f"{tuple(x_n.shape)}, {tuple(x.shape)}"
        )
    b, _, h, w = out.shape
    if x.shape[0] != b or x.shape[2:] != (h, w) or y.shape != (b, h, w):
        raise ValueError(f"x must be ({b}, I, {h}, {w}) and y ({b}, {h}, {w}); got {tuple(x.shape)}, {tuple(y.shape)}")
    for name, v in (("c_skip", c_skip), ("c_out", c_out), ("lam", lam)):
        if v.numel() != b:
            raise ValueError(f"{name} must hold one value per sample ({b}); got shape {tuple(v.shape)}")
    need_grad = torch.is_grad_enabled() and out.requires_grad
    c_skip, c_out, lam = (v.reshape(b) for v in (c_skip, c_out, lam))
    args = (out, x_n, x, y, c_skip, c_out, lam, float(w_mask), int(ignore_index), need_grad, body)
    if torch.compiler.is_compiling():
        return hybrid_loss_fwd_op(*args)[:2]
    return _HybridLossEager.apply(*args)
