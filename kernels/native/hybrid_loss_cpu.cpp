// hybengine_native::hybrid_loss_fwd / _bwd: the tensor side of the fused joint-loss CPU kernels
// (checks, strides, allocation, upstream-grad factors); the loops and the math are in
// hybrid_loss_kernel.cpp. Same contract as `hybrid_loss_fwd_math` / `hybrid_loss_bwd_math` in
// kernels/hybrid_loss.py:
//
//   fwd -> (denoise, mask, dF, mask_scale): (B,) fp32 terms, dF in out's dtype and layout (empty
//          when not need_grad), mask_scale = 1 / max(1, n_valid)
//   bwd -> dout = g_denoise * dF[:, :I] and (g_mask * mask_scale) * dF[:, I:], per sample

#include <ATen/ATen.h>

#include <tuple>

#include "native_kernels.h"
#include "tensor_layout.h"

namespace hybengine_native {
namespace {

// t (B, C, *spatial) with its spatial dims merged into one stride, or a contiguous copy of it.
at::Tensor mergeable(const at::Tensor& t) {
  for (int64_t d = 2; d + 1 < t.dim(); ++d) {
    if (t.size(d) != 1 && t.size(d + 1) != 1 && t.stride(d) != t.stride(d + 1) * t.size(d + 1)) {
      return t.contiguous();
    }
  }
  return t;
}

int64_t pixel_stride(const at::Tensor& t) {
  for (int64_t d = t.dim() - 1; d >= 2; --d) {
    if (t.size(d) != 1) return t.stride(d);
  }
  return 1;
}

Strided strided(const at::Tensor& t) {
  return Strided{t.data_ptr(), kernel_dtype(t), t.stride(0), t.stride(1), pixel_stride(t)};
}

at::Tensor per_sample(const at::Tensor& v, int64_t B, const char* name) {
  TORCH_CHECK(v.numel() == B, "hybrid_loss (native): ", name, " must hold one value per sample (", B, ")");
  return as_float(v.reshape({B}));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> hybrid_loss_fwd(
    const at::Tensor& out, const at::Tensor& x_n, const at::Tensor& x, const at::Tensor& y, const at::Tensor& c_skip,
    const at::Tensor& c_out, const at::Tensor& lam, double w_mask, int64_t ignore_index, bool need_grad) {
  TORCH_CHECK(out.device().is_cpu(), "hybrid_loss (native): tensors must be on the CPU");
  TORCH_CHECK(out.dim() >= 3 && x.dim() == out.dim() && x_n.sizes() == x.sizes() && out.size(1) > x.size(1),
              "hybrid_loss (native): need out (B, I+K, *spatial) with K >= 1 and x, x_n (B, I, *spatial); got ",
              out.sizes(), ", ", x_n.sizes(), ", ", x.sizes());
  const int64_t B = out.size(0), NC = out.size(1), I = x.size(1);
  const int64_t P = B * NC == 0 ? 0 : out.numel() / (B * NC);
  TORCH_CHECK(x.size(0) == B && x.numel() == B * I * P && y.numel() == B * P,
              "hybrid_loss (native): x, x_n and y must match out's batch and spatial size");
  TORCH_CHECK(!y.is_floating_point(), "hybrid_loss (native): y must hold integer class indices");
  const at::Tensor oc = mergeable(out), xnc = mergeable(x_n), xc = mergeable(x);
  const at::Tensor yc = y.to(at::kLong).contiguous();
  const at::Tensor cs = per_sample(c_skip, B, "c_skip"), co = per_sample(c_out, B, "c_out"),
                   lm = per_sample(lam, B, "lam");
  const auto f32 = out.options().dtype(at::kFloat);
  at::Tensor denoise = at::empty({B}, f32), mask = at::empty({B}, f32), mask_scale = at::empty({B}, f32);
  at::Tensor dF = need_grad ? at::empty_like(oc) : out.new_empty({0});

  LossArgs a{};
  a.B = B;
  a.I = I;
  a.K = NC - I;
  a.P = P;
  a.out = strided(oc);
  a.x_n = strided(xnc);
  a.x = strided(xc);
  a.y = yc.data_ptr<int64_t>();
  a.c_skip = cs.data_ptr<float>();
  a.c_out = co.data_ptr<float>();
  a.lam = lm.data_ptr<float>();
  a.w_mask = static_cast<float>(w_mask);
  a.ignore_index = ignore_index;
  if (need_grad) {
    a.dF = dF.data_ptr();
    a.dF_sb = dF.stride(0);
    a.dF_sc = dF.stride(1);
    a.dF_sp = pixel_stride(dF);
  }
  a.denoise = denoise.data_ptr<float>();
  a.mask = mask.data_ptr<float>();
  a.mask_scale = mask_scale.data_ptr<float>();
  if (B > 0) hybrid_loss_forward(a);
  if (need_grad && !oc.is_same(out)) dF = at::empty_like(out).copy_(dF);
  return {denoise, mask, dF, mask_scale};
}

at::Tensor hybrid_loss_bwd(const at::Tensor& dF, const at::Tensor& g_denoise, const at::Tensor& g_mask,
                           const at::Tensor& mask_scale, int64_t n_img) {
  TORCH_CHECK(dF.device().is_cpu() && dF.dim() >= 3, "hybrid_loss (native): dF must be (B, I+K, *spatial) on the CPU");
  const int64_t B = dF.size(0), NC = dF.size(1);
  TORCH_CHECK(n_img >= 0 && n_img < NC, "hybrid_loss (native): n_img=", n_img, " out of range for ", NC, " channels");
  Layout layout = dense_layout(dF);
  const at::Tensor dFc = layout == Layout::kOther ? dF.contiguous() : dF;
  if (layout == Layout::kOther) layout = Layout::kContiguous;
  const at::Tensor gd = per_sample(g_denoise, B, "g_denoise"), gm = per_sample(g_mask, B, "g_mask"),
                   ms = per_sample(mask_scale, B, "mask_scale");
  at::Tensor factor = at::empty({B, NC}, gd.options());
  float* f = factor.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t c = 0; c < NC; ++c) {
      f[b * NC + c] = c < n_img ? gd.data_ptr<float>()[b] : gm.data_ptr<float>()[b] * ms.data_ptr<float>()[b];
    }
  }
  at::Tensor dout = at::empty_like(dFc);
  LossBwdArgs a{};
  a.dtype = kernel_dtype(dFc);
  a.B = B;
  a.NC = NC;
  a.P = B * NC == 0 ? 0 : dFc.numel() / (B * NC);
  a.channels_last = layout == Layout::kChannelsLast;
  a.dF = dFc.data_ptr();
  a.factor = f;
  a.dout = dout.data_ptr();
  if (dFc.numel() > 0) hybrid_loss_backward(a);
  return dFc.is_same(dF) ? dout : at::empty_like(dF).copy_(dout);
}

}  // namespace hybengine_native
