// Fused joint loss (EDM denoise term + masked cross-entropy) on the CPU: per-sample terms and dF
// in one pass over F. Compiled once per CPU capability (see native_kernels.h); the op wrapper is
// hybrid_loss_cpu.cpp.
//
// F = out is (B, I+K, P) (I image channels, K classes, P = H*W pixels, NCHW or channels-last).
// Per sample b (scalars c_skip, c_out, lam of sample b; valid = y != ignore_index):
//
// forward, one pass over F that also writes the gradient
//     r       = c_skip * x_n + c_out * F[:I] - x              # D_x - x
//     denoise = lam * sum r^2 / (I*P)
//     z       = F[I:],  m = max_k z,  e = exp(z - m),  se = sum_k e
//     ce      = m + log(se) - z[y]                            # per valid pixel
//     mask    = w_mask * sum_valid ce / n_valid,  n_valid = max(1, #valid)
//     dF[:I]  = 2 * lam * c_out * r / (I*P)                   # d denoise / dF
//     dF[I:]  = w_mask * (e/se - onehot(y)) * valid           # d mask / dF, times n_valid
//     mask_scale = 1 / n_valid
//
// backward (g_denoise, g_mask: upstream grads, (B,)); the op wrapper folds them into factor[b, c]
//     dout[:, :I] = g_denoise * dF[:, :I],   dout[:, I:] = (g_mask * mask_scale) * dF[:, I:]
//
// Work: vectors of kLanes pixels; the channels of a pixel block are gathered into fp32 rows
// (a contiguous vector load for NCHW, strided loads for channels-last), so one code path serves
// both layouts and every dtype. Tasks are (sample, chunk of kChunk pixels), each writing its
// partial sums; they are added per sample in chunk order: deterministic, no atomics.

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "vec_utils.h"

namespace hybengine_native {
namespace CPU_CAPABILITY {
namespace {

constexpr int64_t kChunk = 1024;  // pixels per task

// n <= kLanes values of row (b, c) from pixel p0 on, as fp32; lanes >= n are 0.
inline fVec gather(const Strided& t, int64_t b, int64_t c, int64_t p0, int64_t n) {
  return dispatch_dtype(t.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* src = static_cast<const T*>(t.data) + b * t.sb + c * t.sc + p0 * t.sp;
    if (t.sp == 1) return n == kLanes ? load1(src) : load_partial(src, n);
    alignas(64) float buf[kLanes] = {};
    for (int64_t i = 0; i < n; ++i) buf[i] = to_float(src[i * t.sp]);
    return fVec::loadu(buf);
  });
}

// The first n lanes of v to row (b, c) of dF from pixel p0 on.
inline void scatter(const LossArgs& a, Dtype dtype, int64_t b, int64_t c, int64_t p0, int64_t n, const fVec& v) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    T* dst = static_cast<T*>(a.dF) + b * a.dF_sb + c * a.dF_sc + p0 * a.dF_sp;
    if (a.dF_sp == 1 && n == kLanes) {
      if constexpr (std::is_same_v<T, float>) {
        v.store(dst);
      } else {
        at::vec::convert_from_float<T>(v, v).store(dst, kLanes);
      }
      return;
    }
    alignas(64) float buf[kLanes];
    v.store(buf);
    for (int64_t i = 0; i < n; ++i) dst[i * a.dF_sp] = from_float<T>(buf[i]);
  });
}

// Sums (r^2, ce, n_valid) over pixels [p0, p1) of sample b, writing dF there when asked.
void loss_chunk(const LossArgs& a, int64_t b, int64_t p0, int64_t p1, std::vector<fVec>& z, float* sums) {
  const int64_t I = a.I, K = a.K;
  const fVec c_skip(a.c_skip[b]), c_out(a.c_out[b]), zero(0.f), one(1.f);
  const fVec coef(2.f * a.lam[b] * a.c_out[b] / static_cast<float>(I * a.P));
  const fVec w_mask(a.w_mask);
  fVec r2(0.f), ce(0.f), n_valid(0.f);
  alignas(64) float ycls[kLanes], valid[kLanes];
  for (int64_t p = p0; p < p1; p += kLanes) {
    const int64_t n = std::min(kLanes, p1 - p);

    // denoise: r = c_skip*x_n + c_out*F[:I] - x
    for (int64_t c = 0; c < I; ++c) {
      const fVec r = at::vec::fmadd(c_skip, gather(a.x_n, b, c, p, n),
                                    at::vec::fmsub(c_out, gather(a.out, b, c, p, n), gather(a.x, b, c, p, n)));
      r2 = at::vec::fmadd(r, r, r2);  // padded lanes: r = 0
      if (a.dF != nullptr) scatter(a, a.out.dtype, b, c, p, n, coef * r);
    }

    // mask: cross-entropy over the K class rows of the block
    for (int64_t i = 0; i < kLanes; ++i) {
      const int64_t yi = i < n ? a.y[b * a.P + p + i] : a.ignore_index;
      const bool ok = yi != a.ignore_index;
      valid[i] = ok ? 1.f : 0.f;
      ycls[i] = ok ? static_cast<float>(yi) : -1.f;
    }
    const fVec yv = fVec::loadu(ycls), vv = fVec::loadu(valid);
    fVec m(-std::numeric_limits<float>::infinity()), z_y(0.f);
    for (int64_t k = 0; k < K; ++k) {
      z[k] = gather(a.out, b, I + k, p, n);
      m = at::vec::maximum(m, z[k]);
      z_y = fVec::blendv(z_y, z[k], yv == fVec(static_cast<float>(k)));
    }
    fVec se(0.f);
    for (int64_t k = 0; k < K; ++k) {
      z[k] = (z[k] - m).exp();
      se += z[k];
    }
    ce = at::vec::fmadd(m + se.log() - z_y, vv, ce);
    n_valid += vv;
    if (a.dF != nullptr) {
      const fVec scale = w_mask * vv / se;
      for (int64_t k = 0; k < K; ++k) {
        const fVec onehot = yv.eq(fVec(static_cast<float>(k)));
        scatter(a, a.out.dtype, b, I + k, p, n, at::vec::fmsub(z[k], scale, w_mask * vv * onehot));
      }
    }
  }
  sums[0] = hsum(r2);
  sums[1] = hsum(ce);
  sums[2] = hsum(n_valid);
}

template <typename T>
void backward_impl(const LossBwdArgs& a) {
  const T* src = static_cast<const T*>(a.dF);
  T* dst = static_cast<T*>(a.dout);
  const int64_t NC = a.NC, P = a.P;
  if (!a.channels_last) {  // planes (b, c), one factor each
    at::parallel_for(0, a.B * NC, grain_for(P), [&](int64_t begin, int64_t end) {
      for (int64_t bc = begin; bc < end; ++bc) {
        const T* s = src + bc * P;
        T* d = dst + bc * P;
        const float f = a.factor[bc];
        const fVec vf(f);
        int64_t i = 0;
        for (; i + kStep <= P; i += kStep) {
          fVec lo, hi;
          load2(s + i, lo, hi);
          store2(d + i, lo * vf, hi * vf);
        }
        for (; i < P; ++i) d[i] = from_float<T>(to_float(s[i]) * f);
      }
    });
    return;
  }
  // channels-last: sample b is P rows of NC; element j of it takes factor[b, j % NC]. Blocks of
  // L = NC * kStep elements start on a row and hold whole vectors, so one pattern serves them all.
  const int64_t L = NC * kStep, per_sample = P * NC, blocks = (per_sample + L - 1) / L;
  at::parallel_for(0, a.B * blocks, grain_for(L), [&](int64_t begin, int64_t end) {
    std::vector<float> pattern(L);
    int64_t pattern_b = -1;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / blocks, j0 = (i % blocks) * L, j1 = std::min(per_sample, j0 + L);
      if (b != pattern_b) {
        for (int64_t j = 0; j < L; ++j) pattern[j] = a.factor[b * NC + j % NC];
        pattern_b = b;
      }
      const T* s = src + b * per_sample;
      T* d = dst + b * per_sample;
      int64_t j = j0;
      for (; j + kStep <= j1; j += kStep) {
        fVec lo, hi;
        load2(s + j, lo, hi);
        store2(d + j, lo * fVec::loadu(pattern.data() + (j - j0)),
               hi * fVec::loadu(pattern.data() + (j - j0) + kLanes));
      }
      for (; j < j1; ++j) d[j] = from_float<T>(to_float(s[j]) * pattern[j - j0]);
    }
  });
}

}  // namespace

void hybrid_loss_forward(const LossArgs& a) {
  const int64_t chunks = (a.P + kChunk - 1) / kChunk;
  std::vector<float> part(3 * a.B * chunks);
  at::parallel_for(0, a.B * chunks, grain_for(kChunk * (a.I * 3 + a.K)), [&](int64_t begin, int64_t end) {
    std::vector<fVec> z(a.K);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / chunks, p0 = (i % chunks) * kChunk;
      loss_chunk(a, b, p0, std::min(a.P, p0 + kChunk), z, part.data() + 3 * i);
    }
  });
  for (int64_t b = 0; b < a.B; ++b) {
    float r2 = 0.f, ce = 0.f, n_valid = 0.f;
    for (int64_t t = 0; t < chunks; ++t) {
      r2 += part[3 * (b * chunks + t)];
      ce += part[3 * (b * chunks + t) + 1];
      n_valid += part[3 * (b * chunks + t) + 2];
    }
    n_valid = std::max(n_valid, 1.f);
    a.denoise[b] = a.lam[b] * r2 / static_cast<float>(a.I * a.P);
    a.mask[b] = a.w_mask * ce / n_valid;
    a.mask_scale[b] = 1.f / n_valid;
  }
}

void hybrid_loss_backward(const LossBwdArgs& a) {
  dispatch_dtype(a.dtype, [&](auto tag) { backward_impl<decltype(tag)>(a); });
}

}  // namespace CPU_CAPABILITY
}  // namespace hybengine_native
