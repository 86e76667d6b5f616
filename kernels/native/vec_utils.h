// Helpers for the per-capability kernel files: fp32 vectors loaded from / stored to fp32, bf16 or
// fp16 memory, SiLU pieces, fixed-order horizontal sums. Include only from *_kernel.cpp, inside
// nothing: everything here lives in hybengine_native::CPU_CAPABILITY.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "native_kernels.h"

namespace hybengine_native {
namespace CPU_CAPABILITY {

using fVec = at::vec::Vectorized<float>;
constexpr int64_t kLanes = fVec::size();  // fp32 lanes of one vector
constexpr int64_t kStep = 2 * kLanes;     // elements per step: two fp32 vectors = one bf16 vector

template <typename T>
inline float to_float(T v) {
  return static_cast<float>(v);
}

template <typename T>
inline T from_float(float v) {
  return static_cast<T>(v);
}

// kStep elements at p as two fp32 vectors.
template <typename T>
inline void load2(const T* p, fVec& lo, fVec& hi) {
  if constexpr (std::is_same_v<T, float>) {
    lo = fVec::loadu(p);
    hi = fVec::loadu(p + kLanes);
  } else {
    at::vec::load_to_float<T>(p, lo, hi);
  }
}

// kLanes elements at p as one fp32 vector.
template <typename T>
inline fVec load1(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return fVec::loadu(p);
  } else {
    fVec v;
    at::vec::load_to_float<T>(p, v);
    return v;
  }
}

// Two fp32 vectors to kStep elements at p (rounded to nearest even for bf16/fp16).
template <typename T>
inline void store2(T* p, const fVec& lo, const fVec& hi) {
  if constexpr (std::is_same_v<T, float>) {
    lo.store(p);
    hi.store(p + kLanes);
  } else {
    at::vec::convert_from_float<T>(lo, hi).store(p);
  }
}

// n <= kLanes elements at p (used for the ragged ends of rows); unused lanes are 0.
template <typename T>
inline fVec load_partial(const T* p, int64_t n) {
  alignas(64) float buf[kLanes] = {};
  for (int64_t i = 0; i < std::min(n, kLanes); ++i) buf[i] = to_float(p[i]);
  return fVec::loadu(buf);
}

template <typename T>
inline void store_partial(T* p, const fVec& v, int64_t n) {
  alignas(64) float buf[kLanes];
  v.store(buf);
  for (int64_t i = 0; i < std::min(n, kLanes); ++i) p[i] = from_float<T>(buf[i]);
}

// Lanes summed in lane order: the result depends only on the values, never on the thread count.
inline float hsum(const fVec& v) {
  alignas(64) float buf[kLanes];
  v.store(buf);
  float s = 0.f;
  for (int64_t i = 0; i < kLanes; ++i) s += buf[i];
  return s;
}

inline fVec sigmoid(const fVec& h) {
  const fVec one(1.f);
  return one / (one + h.neg().exp_u20());  // ATen's inline exp (20 ulp): no call, no spills
}

inline float sigmoid(float h) {
  return 1.f / (1.f + std::exp(-h));
}

// Chan et al. (1979): combine (count, mean, m2) of two disjoint sets; no E[x^2] - E[x]^2.
struct Moments {
  float count = 0.f, mean = 0.f, m2 = 0.f;
  inline void combine(float n_b, float mean_b, float m2_b) {
    const float n = count + n_b;
    if (n_b == 0.f) return;
    const float delta = mean_b - mean;
    mean += delta * (n_b / n);
    m2 += m2_b + delta * delta * (count * n_b / n);
    count = n;
  }
};

// at::parallel_for grain for tasks of `elems` elements each: at least at::internal::GRAIN_SIZE
// elements per parallel chunk, so small calls run inline instead of waking (and, on a busy host,
// waiting for) the other threads.
inline int64_t grain_for(int64_t elems) {
  constexpr int64_t kGrainElems = 32768;
  return std::max<int64_t>(1, (kGrainElems + std::max<int64_t>(1, elems) - 1) / std::max<int64_t>(1, elems));
}

template <typename Fn>
inline auto dispatch_dtype(Dtype dtype, Fn&& fn) {
  switch (dtype) {
    case Dtype::kBFloat16:
      return fn(c10::BFloat16{});
    case Dtype::kHalf:
      return fn(c10::Half{});
    default:
      return fn(float{});
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace hybengine_native
