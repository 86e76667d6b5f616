// The operator library `hybengine_native` (libhybengine_native.so): schemas, CPU registrations,
// and the run-time choice of the kernel copy compiled for this CPU.
//
// These ops are the "native" bodies of the Python custom ops hybengine::group_norm_silu_fwd/_bwd
// and hybengine::hybrid_loss_fwd/_bwd (kernels/native/__init__.py registers them through
// `backends.register_native`), with the same argument lists and results as their math bodies.
// They live in their own namespace so that the public op names, schemas, fake and autograd
// registrations stay the single Python definitions in kernels/*.py.

#include <ATen/Version.h>
#include <torch/library.h>
#include <torch/version.h>

#include <optional>
#include <string>
#include <tuple>

#include "native_kernels.h"

namespace hybengine_native {

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_silu_fwd(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& shift, int64_t groups, double eps);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_norm_silu_bwd(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
    const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift, const at::Tensor& mean,
    const at::Tensor& rstd, int64_t groups, double eps);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> hybrid_loss_fwd(
    const at::Tensor& out, const at::Tensor& x_n, const at::Tensor& x, const at::Tensor& y, const at::Tensor& c_skip,
    const at::Tensor& c_out, const at::Tensor& lam, double w_mask, int64_t ignore_index, bool need_grad);
at::Tensor hybrid_loss_bwd(const at::Tensor& dF, const at::Tensor& g_denoise, const at::Tensor& g_mask,
                           const at::Tensor& mask_scale, int64_t n_img);

namespace {

enum class Cap { kDefault, kAvx2, kAvx512 };

// ATen's own choice (cpuinfo, capped by the ATEN_CPU_CAPABILITY env var), limited to the copies
// this library was compiled with.
Cap pick_capability() {
  const std::string aten = at::get_cpu_capability();
#ifdef HYBENGINE_HAVE_AVX512
  if (aten == "AVX512") return Cap::kAvx512;
#endif
#ifdef HYBENGINE_HAVE_AVX2
  if (aten == "AVX512" || aten == "AVX2") return Cap::kAvx2;
#endif
  return Cap::kDefault;
}

Cap capability() {
  static const Cap cap = pick_capability();
  return cap;
}

template <typename Args>
void run(const Args& args, void (*fn_default)(const Args&), void (*fn_avx2)(const Args&),
         void (*fn_avx512)(const Args&)) {
  switch (capability()) {
    case Cap::kAvx512:
      return fn_avx512(args);
    case Cap::kAvx2:
      return fn_avx2(args);
    default:
      return fn_default(args);
  }
}

#ifdef HYBENGINE_HAVE_AVX2
#define HYB_AVX2(fn) &AVX2::fn
#else
#define HYB_AVX2(fn) &DEFAULT::fn
#endif
#ifdef HYBENGINE_HAVE_AVX512
#define HYB_AVX512(fn) &AVX512::fn
#else
#define HYB_AVX512(fn) HYB_AVX2(fn)
#endif
#define HYB_RUN(fn, args) run(args, &DEFAULT::fn, HYB_AVX2(fn), HYB_AVX512(fn))

std::string info() {
  return "torch " TORCH_VERSION "; kernels compiled: " + compiled_capabilities() + "; running: " + kernel_capability();
}

}  // namespace

void group_norm_silu_forward(const GnsArgs& args) { HYB_RUN(group_norm_silu_forward, args); }
void group_norm_silu_backward(const GnsArgs& args) { HYB_RUN(group_norm_silu_backward, args); }
void hybrid_loss_forward(const LossArgs& args) { HYB_RUN(hybrid_loss_forward, args); }
void hybrid_loss_backward(const LossBwdArgs& args) { HYB_RUN(hybrid_loss_backward, args); }

std::string kernel_capability() {
  switch (capability()) {
    case Cap::kAvx512:
      return "AVX512";
    case Cap::kAvx2:
      return "AVX2";
    default:
      return "DEFAULT";
  }
}

std::string compiled_capabilities() {
  std::string caps = "DEFAULT";
#ifdef HYBENGINE_HAVE_AVX2
  caps += " AVX2";
#endif
#ifdef HYBENGINE_HAVE_AVX512
  caps += " AVX512";
#endif
  return caps;
}

}  // namespace hybengine_native

TORCH_LIBRARY(hybengine_native, m) {
  m.def(
      "group_norm_silu_fwd(Tensor x, Tensor weight, Tensor bias, Tensor? scale, Tensor? shift, int groups, "
      "float eps) -> (Tensor, Tensor, Tensor)");
  m.def(
      "group_norm_silu_bwd(Tensor dy, Tensor x, Tensor weight, Tensor bias, Tensor? scale, Tensor? shift, "
      "Tensor mean, Tensor rstd, int groups, float eps) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "hybrid_loss_fwd(Tensor out, Tensor x_n, Tensor x, Tensor y, Tensor c_skip, Tensor c_out, Tensor lam, "
      "float w_mask, int ignore_index, bool need_grad) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("hybrid_loss_bwd(Tensor dF, Tensor g_denoise, Tensor g_mask, Tensor mask_scale, int n_img) -> Tensor");
  m.def("info() -> str", &hybengine_native::info);
}

TORCH_LIBRARY_IMPL(hybengine_native, CPU, m) {
  m.impl("group_norm_silu_fwd", &hybengine_native::group_norm_silu_fwd);
  m.impl("group_norm_silu_bwd", &hybengine_native::group_norm_silu_bwd);
  m.impl("hybrid_loss_fwd", &hybengine_native::hybrid_loss_fwd);
  m.impl("hybrid_loss_bwd", &hybengine_native::hybrid_loss_bwd);
}
