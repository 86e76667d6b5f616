// Tensor-side helpers of the op files: which dense layout a tensor has, (B, C, P) strides.
#pragma once

#include <ATen/core/Tensor.h>

#include "native_kernels.h"

namespace hybengine_native {

enum class Layout { kContiguous, kChannelsLast, kOther };

// Dense (N, C, *spatial) layouts the kernels index directly: NCHW-contiguous, or channels-last
// (C innermost, then the spatial dims in order, then N), in any number of spatial dims.
inline Layout dense_layout(const at::Tensor& t) {
  if (t.is_contiguous()) return Layout::kContiguous;
  if (t.dim() < 3) return Layout::kOther;
  int64_t expected = 1;
  if (t.size(1) != 1 && t.stride(1) != 1) return Layout::kOther;
  expected = t.size(1);
  for (int64_t d = t.dim() - 1; d >= 2; --d) {
    if (t.size(d) != 1 && t.stride(d) != expected) return Layout::kOther;
    expected *= t.size(d);
  }
  if (t.size(0) != 1 && t.stride(0) != expected) return Layout::kOther;
  return Layout::kChannelsLast;
}

inline Dtype kernel_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return Dtype::kFloat;
    case at::kBFloat16:
      return Dtype::kBFloat16;
    case at::kHalf:
      return Dtype::kHalf;
    default:
      TORCH_CHECK(false, "hybengine native CPU kernels take float32, bfloat16 or float16 tensors, got ",
                  t.scalar_type());
  }
}

// An fp32, contiguous copy of t (t itself when it already is one).
inline at::Tensor as_float(const at::Tensor& t) {
  return t.to(at::kFloat).contiguous();
}

}  // namespace hybengine_native
