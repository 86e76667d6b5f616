// hybengine_native::group_norm_silu_fwd / _bwd: the tensor side of the fused GroupNorm-SiLU CPU
// kernels (checks, layouts, allocation, parameter gradients); the loops are in
// group_norm_silu_kernel.cpp, whose header comment has the math. Same contract as
// `group_norm_silu_fwd_math` / `group_norm_silu_bwd_math` in kernels/group_norm_silu.py:
//
//   fwd -> (y, mean, rstd): y in x's dtype and layout, mean and rstd (N, G) fp32
//   bwd -> (dx, dweight, dbias, dscale, dshift): dx in x's dtype and layout; from the per-channel
//          sums S1 = sum_hw dh, S2 = sum_hw dh*xhat (N, C):
//          dshift = S1,  dscale = w*S2 + b*S1,  dbias = sum_n (1+s)*S1,  dweight = sum_n (1+s)*S2
//          (dscale, dshift are (N, C) even without scale/shift; the sums over n run in order, so
//          the parameter gradients are deterministic)

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <optional>
#include <tuple>

#include "native_kernels.h"
#include "tensor_layout.h"

namespace hybengine_native {
namespace {

void check_inputs(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                  const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift, int64_t groups) {
  TORCH_CHECK(x.device().is_cpu(), "group_norm_silu (native): x must be a CPU tensor");
  TORCH_CHECK(x.dim() >= 3, "group_norm_silu (native): x must be (N, C, *spatial), got ", x.sizes());
  const int64_t N = x.size(0), C = x.size(1);
  TORCH_CHECK(groups >= 1 && C % groups == 0, "group_norm_silu (native): C=", C, " not divisible by groups=", groups);
  TORCH_CHECK(weight.numel() == C && bias.numel() == C, "group_norm_silu (native): weight and bias must be (", C, ",)");
  for (const auto* t : {&scale, &shift}) {
    TORCH_CHECK(!t->has_value() || (**t).sizes() == at::IntArrayRef({N, C}),
                "group_norm_silu (native): scale and shift must be (", N, ", ", C, ")");
  }
  kernel_dtype(x);
}

// a = w*(1+s), bb = b*(1+s)+t as (N, C) fp32.
std::tuple<at::Tensor, at::Tensor> effective_affine(const at::Tensor& weight, const at::Tensor& bias,
                                                    const std::optional<at::Tensor>& scale,
                                                    const std::optional<at::Tensor>& shift, int64_t N) {
  const at::Tensor w = as_float(weight), b = as_float(bias);
  const int64_t C = w.numel();
  at::Tensor a = at::empty({N, C}, w.options()), bb = at::empty({N, C}, w.options());
  const at::Tensor s = scale ? as_float(*scale) : at::Tensor(), t = shift ? as_float(*shift) : at::Tensor();
  const float *wp = w.data_ptr<float>(), *bp = b.data_ptr<float>();
  const float* sp = scale ? s.data_ptr<float>() : nullptr;
  const float* tp = shift ? t.data_ptr<float>() : nullptr;
  float *ap = a.data_ptr<float>(), *bbp = bb.data_ptr<float>();
  for (int64_t i = 0; i < N * C; ++i) {
    const float s1 = sp ? 1.f + sp[i] : 1.f;
    ap[i] = wp[i % C] * s1;
    bbp[i] = bp[i % C] * s1 + (tp ? tp[i] : 0.f);
  }
  return {a, bb};
}

// x in a layout the kernel indexes (a contiguous copy if it has neither).
at::Tensor kernel_view(const at::Tensor& x, Layout& layout) {
  layout = dense_layout(x);
  if (layout != Layout::kOther) return x;
  layout = Layout::kContiguous;
  return x.contiguous();
}

GnsArgs make_args(const at::Tensor& xc, Layout layout, int64_t groups, double eps, const at::Tensor& a,
                  const at::Tensor& bb) {
  GnsArgs p{};
  p.dtype = kernel_dtype(xc);
  p.N = xc.size(0);
  p.C = xc.size(1);
  p.HW = p.N * p.C == 0 ? 0 : xc.numel() / (p.N * p.C);
  p.G = groups;
  p.channels_last = layout == Layout::kChannelsLast;
  p.eps = static_cast<float>(eps);
  p.x = xc.data_ptr();
  p.a = a.data_ptr<float>();
  p.bb = bb.data_ptr<float>();
  return p;
}

// out in x's layout: `result` itself, or a copy when x had to be made contiguous.
at::Tensor like_input(const at::Tensor& x, const at::Tensor& xc, const at::Tensor& result) {
  return xc.is_same(x) ? result : at::empty_like(x).copy_(result);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_silu_fwd(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& shift, int64_t groups, double eps) {
  check_inputs(x, weight, bias, scale, shift, groups);
  Layout layout;
  const at::Tensor xc = kernel_view(x, layout);
  const int64_t N = x.size(0);
  auto [a, bb] = effective_affine(weight, bias, scale, shift, N);
  at::Tensor y = at::empty_like(xc);
  at::Tensor mean = at::empty({N, groups}, x.options().dtype(at::kFloat));
  at::Tensor rstd = at::empty_like(mean);
  GnsArgs p = make_args(xc, layout, groups, eps, a, bb);
  if (p.HW == 0) {  // no elements per group: statistics undefined, as in the math path
    mean.fill_(std::numeric_limits<float>::quiet_NaN());
    rstd.fill_(std::numeric_limits<float>::quiet_NaN());
  } else if (N > 0) {
    p.y = y.data_ptr();
    p.mean = mean.data_ptr<float>();
    p.rstd = rstd.data_ptr<float>();
    group_norm_silu_forward(p);
  }
  return {like_input(x, xc, y), mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_norm_silu_bwd(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift, const at::Tensor& mean,
    const at::Tensor& rstd, int64_t groups, double eps) {
  check_inputs(x, weight, bias, scale, shift, groups);
  TORCH_CHECK(dy.sizes() == x.sizes(), "group_norm_silu (native): dy must have x's shape");
  Layout layout;
  const at::Tensor xc = kernel_view(x, layout);
  const int64_t N = x.size(0), C = x.size(1);
  TORCH_CHECK(mean.numel() == N * groups && rstd.numel() == N * groups,
              "group_norm_silu (native): mean and rstd must be (N, groups)");
  // dy in x's dtype and in the layout the kernel reads x in
  const at::Tensor dyc =
      dy.scalar_type() == xc.scalar_type() && dy.strides() == xc.strides() ? dy : at::empty_like(xc).copy_(dy);
  auto [a, bb] = effective_affine(weight, bias, scale, shift, N);
  const at::Tensor mean_f = as_float(mean), rstd_f = as_float(rstd);
  at::Tensor dx = at::empty_like(xc);
  at::Tensor s1 = at::zeros({N, C}, x.options().dtype(at::kFloat)), s2 = at::zeros_like(s1);
  GnsArgs p = make_args(xc, layout, groups, eps, a, bb);
  if (p.HW > 0 && N > 0) {
    p.mean = mean_f.data_ptr<float>();
    p.rstd = rstd_f.data_ptr<float>();
    p.dy = dyc.data_ptr();
    p.dx = dx.data_ptr();
    p.s1 = s1.data_ptr<float>();
    p.s2 = s2.data_ptr<float>();
    group_norm_silu_backward(p);
  }

  // parameter gradients, summed over n in order
  const at::Tensor w = as_float(weight), b = as_float(bias);
  const at::Tensor s = scale ? as_float(*scale) : at::Tensor();
  at::Tensor dweight = at::zeros({C}, w.options()), dbias = at::zeros({C}, w.options());
  at::Tensor dscale = at::empty({N, C}, w.options());
  const float *S1 = s1.data_ptr<float>(), *S2 = s2.data_ptr<float>(), *wp = w.data_ptr<float>(),
              *bp = b.data_ptr<float>(), *sp = scale ? s.data_ptr<float>() : nullptr;
  float *dw = dweight.data_ptr<float>(), *db = dbias.data_ptr<float>(), *ds = dscale.data_ptr<float>();
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = n * C + c;
      const float s1p = sp ? 1.f + sp[i] : 1.f;
      dw[c] += s1p * S2[i];
      db[c] += s1p * S1[i];
      ds[i] = wp[c] * S2[i] + bp[c] * S1[i];
    }
  }
  const auto mod_dtype = [&](const std::optional<at::Tensor>& t) {
    return t ? t->scalar_type() : weight.scalar_type();
  };
  return {like_input(x, xc, dx), dweight.to(weight.scalar_type()), dbias.to(bias.scalar_type()),
          dscale.to(mod_dtype(scale)), s1.to(mod_dtype(shift))};
}

}  // namespace hybengine_native
