// Raw-pointer kernel interface shared by the per-capability kernel files and the op files.
//
// The kernel files (*_kernel.cpp) are compiled once per CPU capability (DEFAULT, AVX2, AVX512)
// with that capability's flags, each copy inside namespace hybengine_native::<capability>, the way
// ATen compiles its own CPU kernels; the op files (*_cpu.cpp, compiled once, no ISA flags) check
// and allocate tensors, fill these structs and call the copy that `at::get_cpu_capability()` (the
// ATen_CPU_CAPABILITY env var included) picks at run time. So one library runs on any x86-64 CPU
// and uses AVX-512 where the CPU has it, without -march=native.
#pragma once

#include <cstdint>
#include <string>

namespace hybengine_native {

enum class Dtype : int { kFloat = 0, kBFloat16 = 1, kHalf = 2 };

// One group_norm_silu call. x, y, dy, dx are dense in one of two layouts:
//   channels_last == false: (N, C, HW)   channels_last == true: (N, HW, C)
struct GnsArgs {
  Dtype dtype;
  int64_t N, C, HW, G;
  bool channels_last;
  float eps;
  const void* x;
  const float* a;   // (N, C) effective scale  w * (1 + s)
  const float* bb;  // (N, C) effective shift  b * (1 + s) + t
  // forward
  void* y = nullptr;
  float* mean = nullptr;  // (N, G): written by the forward, read by the backward
  float* rstd = nullptr;  // (N, G)
  // backward
  const void* dy = nullptr;
  void* dx = nullptr;
  float* s1 = nullptr;  // (N, C) out: sum_hw dh
  float* s2 = nullptr;  // (N, C) out: sum_hw dh * xhat
};

// One hybrid_loss forward. Image tensors are (B, I, P) and F is (B, I+K, P), each with its own
// strides (sb, sc, sp); y is (B, P) int64 contiguous; per-sample coefficients are fp32 (B,).
struct Strided {
  const void* data;
  Dtype dtype;
  int64_t sb, sc, sp;
};

struct LossArgs {
  int64_t B, I, K, P;
  Strided out, x_n, x;
  const int64_t* y;
  const float *c_skip, *c_out, *lam;
  float w_mask;
  int64_t ignore_index;
  void* dF;  // nullptr when no gradient is wanted; else out's dtype and strides
  int64_t dF_sb, dF_sc, dF_sp;
  float* denoise;     // (B,) out
  float* mask;        // (B,) out
  float* mask_scale;  // (B,) out: 1 / max(1, n_valid)
};

// hybrid_loss backward: dout[b, c] = factor[b, c] * dF[b, c] with factor (B, NC) fp32; dF and dout
// dense, (B, NC, P) or (B, P, NC) when channels_last.
struct LossBwdArgs {
  Dtype dtype;
  int64_t B, NC, P;
  bool channels_last;
  const void* dF;
  const float* factor;
  void* dout;
};

#define HYBENGINE_DECLARE_KERNELS(cap)              \
  namespace cap {                                   \
  void group_norm_silu_forward(const GnsArgs& args);  \
  void group_norm_silu_backward(const GnsArgs& args); \
  void hybrid_loss_forward(const LossArgs& args);     \
  void hybrid_loss_backward(const LossBwdArgs& args); \
  }

HYBENGINE_DECLARE_KERNELS(DEFAULT)
#ifdef HYBENGINE_HAVE_AVX2
HYBENGINE_DECLARE_KERNELS(AVX2)
#endif
#ifdef HYBENGINE_HAVE_AVX512
HYBENGINE_DECLARE_KERNELS(AVX512)
#endif

// Run-time dispatch (dispatch.cpp): the same four entry points, calling the copy compiled for
// kernel_capability().
void group_norm_silu_forward(const GnsArgs& args);
void group_norm_silu_backward(const GnsArgs& args);
void hybrid_loss_forward(const LossArgs& args);
void hybrid_loss_backward(const LossBwdArgs& args);

// The kernel copy that runs on this CPU: "AVX512", "AVX2" or "DEFAULT".
std::string kernel_capability();
// Capabilities compiled into this library, e.g. "DEFAULT AVX2 AVX512".
std::string compiled_capabilities();

}  // namespace hybengine_native
