// Fused GroupNorm + affine + per-sample modulation + SiLU on the CPU: forward and backward.
// Compiled once per CPU capability (see native_kernels.h); the op wrapper is group_norm_silu_cpu.cpp.
//
// x is (N, C, HW) (NCHW) or (N, HW, C) (channels-last). Group g of sample n holds the CG = C/G
// channels g*CG .. g*CG+CG-1 over all HW pixels, M = CG*HW elements; a = w*(1+s), bb = b*(1+s)+t
// per (n, c) come precomputed in fp32.
//
// forward
//     mean, m2 = statistics of the group in fp32: each tile of the group (kTile elements, or
//                kTile/C pixels of all channels when channels-last) is two-pass (its mean, then
//                its centered sums of d = x - mean and d^2, corrected two-pass form, while it sits
//                in L1), tiles are Chan-combined in order; never E[x^2] - E[x]^2
//     rstd = 1/sqrt(m2/M + eps)
//     xhat = (x - mean) * rstd,   h = xhat*a + bb,   y = h * sigmoid(h)
//
// backward (recomputes xhat, h from x, mean, rstd; nothing else is saved; with an fp32 dx the
// first pass parks dh in dx, so the second pass computes no sigmoid)
//     sig = sigmoid(h),   dh = dy * sig * (1 + h*(1 - sig))
//     S1[n,c] = sum_hw dh,   S2[n,c] = sum_hw dh*xhat                  (fp32, per channel)
//     c1 = sum_{c in g} a*S1 / M,   c2 = sum_{c in g} a*S2 / M
//     dx = rstd * (dh*a - c1 - xhat*c2)
//     (the parameter gradients follow from S1, S2 in group_norm_silu_cpu.cpp)
//
// Parallelism (at::parallel_for): NCHW, one task per group (statistics then output while the
// group is in L2) when there are enough groups, else tasks per tile / per channel plane;
// channels-last, one task per sample when there are enough samples, else tasks per (sample,
// pixel tile), with per-tile partials either way. Tiles depend only on the
// shape and partials are combined in a fixed order, so every result is bitwise the same whatever
// the thread count and whichever schedule ran.

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "vec_utils.h"

namespace hybengine_native {
namespace CPU_CAPABILITY {
namespace {

constexpr int64_t kTile = 2048;  // statistics tile: 8 KB of fp32, stays in L1 between its two passes

// The backward's per-element core: xhat = (x - mean)*rstd, h = xhat*a + bb,
// dh = dy * sig * (1 + h*(1 - sig)) with sig = sigmoid(h). Returns dh; xhat through `xhat`.
inline fVec silu_grad(const fVec& x, const fVec& dy, const fVec& mean, const fVec& rstd, const fVec& a, const fVec& bb,
                      fVec& xhat) {
  const fVec one(1.f);
  xhat = (x - mean) * rstd;
  const fVec h = at::vec::fmadd(xhat, a, bb);
  const fVec sig = sigmoid(h);
  return dy * sig * at::vec::fmadd(h, one - sig, one);
}

inline float silu_grad(float x, float dy, float mean, float rstd, float a, float bb, float& xhat) {
  xhat = (x - mean) * rstd;
  const float h = xhat * a + bb;
  const float sig = sigmoid(h);
  return dy * sig * (1.f + h * (1.f - sig));
}

// Enough independent groups to give every thread a few: then one task per group.
inline bool per_group_tasks(int64_t groups) {
  return groups >= 4 * static_cast<int64_t>(at::get_num_threads());
}

// ----------------------------------------------------------------------------- NCHW

// Two-pass moments of the contiguous x[0, len).
template <typename T>
Moments tile_moments(const T* x, int64_t len) {
  fVec acc_lo(0.f), acc_hi(0.f);
  int64_t i = 0;
  for (; i + kStep <= len; i += kStep) {
    fVec lo, hi;
    load2(x + i, lo, hi);
    acc_lo += lo;
    acc_hi += hi;
  }
  float sum = hsum(acc_lo + acc_hi);
  for (; i < len; ++i) sum += to_float(x[i]);
  const float mean = sum / static_cast<float>(len);

  // second pass: d = x - mean; the corrected two-pass form (Chan, Golub & LeVeque 1983) also
  // adds sum(d)/len back to the mean, removing the rounding error of the first-pass sum
  const fVec vmean(mean);
  fVec m_lo(0.f), m_hi(0.f), d_lo(0.f), d_hi(0.f);
  i = 0;
  for (; i + kStep <= len; i += kStep) {
    fVec lo, hi;
    load2(x + i, lo, hi);
    lo = lo - vmean;
    hi = hi - vmean;
    d_lo += lo;
    d_hi += hi;
    m_lo = at::vec::fmadd(lo, lo, m_lo);
    m_hi = at::vec::fmadd(hi, hi, m_hi);
  }
  float m2 = hsum(m_lo + m_hi), dsum = hsum(d_lo + d_hi);
  for (; i < len; ++i) {
    const float d = to_float(x[i]) - mean;
    dsum += d;
    m2 += d * d;
  }
  const float n = static_cast<float>(len);
  Moments m;
  m.combine(n, mean + dsum / n, std::max(0.f, m2 - dsum * dsum / n));
  return m;
}

// y = silu((x - mean) * A + B) over one channel plane (A = rstd*a, B = bb).
template <typename T>
void silu_affine_plane(const T* x, T* y, int64_t len, float mean, float A, float B) {
  const fVec vmean(mean), vA(A), vB(B);
  int64_t i = 0;
  for (; i + kStep <= len; i += kStep) {
    fVec lo, hi;
    load2(x + i, lo, hi);
    lo = at::vec::fmadd(lo - vmean, vA, vB);
    hi = at::vec::fmadd(hi - vmean, vA, vB);
    store2(y + i, lo * sigmoid(lo), hi * sigmoid(hi));
  }
  for (; i < len; ++i) {
    const float h = (to_float(x[i]) - mean) * A + B;
    y[i] = from_float<T>(h * sigmoid(h));
  }
}

// Backward, first pass over one plane: (S1, S2) = sums of dh and dh*xhat; with dh_out (fp32
// only), dh is also kept there for the second pass, which then needs no second sigmoid.
template <typename T>
void plane_sums(const T* x, const T* dy, int64_t len, float mean, float rstd, float a, float bb,
                float* s1, float* s2, float* dh_out) {
  const fVec vmean(mean), vrstd(rstd), va(a), vbb(bb);
  fVec s1_lo(0.f), s1_hi(0.f), s2_lo(0.f), s2_hi(0.f);
  int64_t i = 0;
  for (; i + kStep <= len; i += kStep) {
    fVec x_lo, x_hi, d_lo, d_hi, xh_lo, xh_hi;
    load2(x + i, x_lo, x_hi);
    load2(dy + i, d_lo, d_hi);
    const fVec dh_lo = silu_grad(x_lo, d_lo, vmean, vrstd, va, vbb, xh_lo);
    const fVec dh_hi = silu_grad(x_hi, d_hi, vmean, vrstd, va, vbb, xh_hi);
    if (dh_out != nullptr) store2(dh_out + i, dh_lo, dh_hi);
    s1_lo += dh_lo;
    s1_hi += dh_hi;
    s2_lo = at::vec::fmadd(dh_lo, xh_lo, s2_lo);
    s2_hi = at::vec::fmadd(dh_hi, xh_hi, s2_hi);
  }
  float t1 = hsum(s1_lo + s1_hi), t2 = hsum(s2_lo + s2_hi);
  for (; i < len; ++i) {
    float xhat;
    const float dh = silu_grad(to_float(x[i]), to_float(dy[i]), mean, rstd, a, bb, xhat);
    if (dh_out != nullptr) dh_out[i] = dh;
    t1 += dh;
    t2 += dh * xhat;
  }
  *s1 = t1;
  *s2 = t2;
}

// Backward, second pass over one plane: dx = dh*P - R - xhat*Q  (P = rstd*a, R = rstd*c1, Q = rstd*c2).
template <typename T>
void plane_dx(const T* x, const T* dy, T* dx, int64_t len, float mean, float rstd, float a, float bb,
              float P, float Q, float R) {
  const fVec vmean(mean), vrstd(rstd), va(a), vbb(bb), vP(P), vQ(Q), vR(R);
  auto dx_of = [&](const fVec& xv, const fVec& dyv) {
    fVec xhat;
    const fVec dh = silu_grad(xv, dyv, vmean, vrstd, va, vbb, xhat);
    return at::vec::fmsub(dh, vP, at::vec::fmadd(xhat, vQ, vR));
  };
  int64_t i = 0;
  for (; i + kStep <= len; i += kStep) {
    fVec x_lo, x_hi, d_lo, d_hi;
    load2(x + i, x_lo, x_hi);
    load2(dy + i, d_lo, d_hi);
    store2(dx + i, dx_of(x_lo, d_lo), dx_of(x_hi, d_hi));
  }
  for (; i < len; ++i) {
    float xhat;
    const float dh = silu_grad(to_float(x[i]), to_float(dy[i]), mean, rstd, a, bb, xhat);
    dx[i] = from_float<T>(dh * P - (xhat * Q + R));
  }
}

// The second pass when the first kept dh (fp32) in dx: dx = dh*P - R - xhat*Q, in place.
template <typename T>
void plane_dx_cached(const T* x, float* dx, int64_t len, float mean, float rstd, float P, float Q, float R) {
  const fVec vmean(mean), vrstd(rstd), vP(P), vQ(Q), vR(R);
  int64_t i = 0;
  for (; i + kStep <= len; i += kStep) {
    fVec x_lo, x_hi, dh_lo, dh_hi;
    load2(x + i, x_lo, x_hi);
    load2(dx + i, dh_lo, dh_hi);
    const fVec xh_lo = (x_lo - vmean) * vrstd, xh_hi = (x_hi - vmean) * vrstd;
    store2(dx + i, at::vec::fmsub(dh_lo, vP, at::vec::fmadd(xh_lo, vQ, vR)),
           at::vec::fmsub(dh_hi, vP, at::vec::fmadd(xh_hi, vQ, vR)));
  }
  for (; i < len; ++i) {
    const float xhat = (to_float(x[i]) - mean) * rstd;
    dx[i] = dx[i] * P - (xhat * Q + R);
  }
}

// dh kept between the backward's passes: only where dx is fp32 (a bf16 dx would round it).
template <typename T>
inline float* dh_cache(T* dx) {
  if constexpr (std::is_same_v<T, float>) {
    return dx;
  } else {
    return nullptr;
  }
}

template <typename T>
void forward_nchw(const GnsArgs& p) {
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  const int64_t C = p.C, HW = p.HW, G = p.G, CG = C / G, M = CG * HW, NG = p.N * G;
  const int64_t tiles = (M + kTile - 1) / kTile;

  auto finish_stats = [&](int64_t ng, const Moments& m) {
    p.mean[ng] = m.mean;
    p.rstd[ng] = 1.f / std::sqrt(m.m2 / static_cast<float>(M) + p.eps);
  };
  auto output_plane = [&](int64_t ng, int64_t c_in_group) {
    const int64_t n = ng / G, c = (ng % G) * CG + c_in_group, nc = n * C + c;
    silu_affine_plane(x + nc * HW, y + nc * HW, HW, p.mean[ng], p.rstd[ng] * p.a[nc], p.bb[nc]);
  };

  if (per_group_tasks(NG)) {
    at::parallel_for(0, NG, grain_for(M), [&](int64_t begin, int64_t end) {
      for (int64_t ng = begin; ng < end; ++ng) {
        const T* xg = x + ng * M;
        Moments m;
        for (int64_t t = 0; t < tiles; ++t) {
          const Moments tm = tile_moments(xg + t * kTile, std::min(kTile, M - t * kTile));
          m.combine(tm.count, tm.mean, tm.m2);
        }
        finish_stats(ng, m);
        for (int64_t c = 0; c < CG; ++c) output_plane(ng, c);
      }
    });
    return;
  }
  // Few groups: tiles in parallel, combined in order (same arithmetic as above), then planes.
  std::vector<Moments> part(NG * tiles);
  at::parallel_for(0, NG * tiles, grain_for(kTile), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t ng = i / tiles, t = i % tiles;
      part[i] = tile_moments(x + ng * M + t * kTile, std::min(kTile, M - t * kTile));
    }
  });
  for (int64_t ng = 0; ng < NG; ++ng) {
    Moments m;
    for (int64_t t = 0; t < tiles; ++t) m.combine(part[ng * tiles + t].count, part[ng * tiles + t].mean, part[ng * tiles + t].m2);
    finish_stats(ng, m);
  }
  at::parallel_for(0, NG * CG, grain_for(HW), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) output_plane(i / CG, i % CG);
  });
}

template <typename T>
void backward_nchw(const GnsArgs& p) {
  const T* x = static_cast<const T*>(p.x);
  const T* dy = static_cast<const T*>(p.dy);
  T* dx = static_cast<T*>(p.dx);
  const int64_t C = p.C, HW = p.HW, G = p.G, CG = C / G, NG = p.N * G;
  const float inv_m = 1.f / static_cast<float>(CG * HW);

  auto sums_plane = [&](int64_t ng, int64_t c_in_group) {
    const int64_t n = ng / G, nc = n * C + (ng % G) * CG + c_in_group;
    float* cache = dh_cache(dx);
    plane_sums(x + nc * HW, dy + nc * HW, HW, p.mean[ng], p.rstd[ng], p.a[nc], p.bb[nc], p.s1 + nc, p.s2 + nc,
               cache ? cache + nc * HW : nullptr);
  };
  auto c1c2 = [&](int64_t ng, float& c1, float& c2) {
    const int64_t nc0 = (ng / G) * C + (ng % G) * CG;
    c1 = 0.f;
    c2 = 0.f;
    for (int64_t c = 0; c < CG; ++c) {
      c1 += p.a[nc0 + c] * p.s1[nc0 + c];
      c2 += p.a[nc0 + c] * p.s2[nc0 + c];
    }
    c1 *= inv_m;
    c2 *= inv_m;
  };
  auto dx_plane = [&](int64_t ng, int64_t c_in_group, float c1, float c2) {
    const int64_t n = ng / G, nc = n * C + (ng % G) * CG + c_in_group;
    const float rstd = p.rstd[ng], a = p.a[nc];
    if (float* cache = dh_cache(dx)) {
      plane_dx_cached(x + nc * HW, cache + nc * HW, HW, p.mean[ng], rstd, rstd * a, rstd * c2, rstd * c1);
    } else {
      plane_dx(x + nc * HW, dy + nc * HW, dx + nc * HW, HW, p.mean[ng], rstd, a, p.bb[nc], rstd * a, rstd * c2,
               rstd * c1);
    }
  };

  if (per_group_tasks(NG)) {
    at::parallel_for(0, NG, grain_for(2 * CG * HW), [&](int64_t begin, int64_t end) {
      for (int64_t ng = begin; ng < end; ++ng) {
        for (int64_t c = 0; c < CG; ++c) sums_plane(ng, c);
        float c1, c2;
        c1c2(ng, c1, c2);
        for (int64_t c = 0; c < CG; ++c) dx_plane(ng, c, c1, c2);
      }
    });
    return;
  }
  at::parallel_for(0, NG * CG, grain_for(HW), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) sums_plane(i / CG, i % CG);
  });
  std::vector<float> c12(2 * NG);
  for (int64_t ng = 0; ng < NG; ++ng) c1c2(ng, c12[2 * ng], c12[2 * ng + 1]);
  at::parallel_for(0, NG * CG, grain_for(HW), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) dx_plane(i / CG, i % CG, c12[2 * (i / CG)], c12[2 * (i / CG) + 1]);
  });
}

// ----------------------------------------------------------------------------- channels-last

// Rows of C contiguous channels: per-channel vector work, channels C0.. in steps of kLanes.
// `fn(c, n_lanes)` handles channels [c, c + n_lanes) with n_lanes == kLanes except at the end.
//
// Every channels-last pass walks a tile's rows in address order (rows outer, channel blocks
// inner), so the hardware prefetchers stream it; per-channel constants and accumulators are small
// fp32 arrays that stay in L1. (Channel blocks outer and rows inner, with register accumulators,
// read memory with a stride of C elements, and perf showed those loops stalled on their loads;
// the rows before and after the change are in benchmarks/results/group_norm_silu.csv, each with
// its commit; the later rows have the inline exp of vec_utils.h too.)
template <typename Fn>
inline void for_channel_blocks(int64_t C, Fn&& fn) {
  int64_t c = 0;
  for (; c + kLanes <= C; c += kLanes) fn(c, kLanes);
  if (c < C) fn(c, C - c);
}

template <typename T>
inline fVec load_ch(const T* p, int64_t n) {
  return n == kLanes ? load1(p) : load_partial(p, n);
}

template <typename T>
inline void store_ch(T* p, const fVec& v, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    v.store(p, n);
  } else {
    at::vec::convert_from_float<T>(v, v).store(p, n);
  }
}

// Per-channel fp32 state (n <= kLanes lanes at p).
inline fVec load_f(const float* p, int64_t n) {
  return n == kLanes ? fVec::loadu(p) : fVec::loadu(p, n);
}

inline int64_t cl_tile_pixels(int64_t C) {
  return std::max<int64_t>(1, kTile / C);
}

// Rows of C = NB * kLanes fp32 channels with NB <= kMaxBlocks (16-64 channels with AVX-512,
// 8-16 with AVX2) take register passes: a tile's per-channel constants and running sums live in
// fVec arrays of compile-time size with the block loop unrolled, instead of being loaded from (and
// the sums stored back to) the small L1 arrays on every row, where each row's read-modify-write
// of a sum waits on the previous row's store. kMaxBlocks keeps the backward's first pass (6*NB
// vectors) within the register file (32 zmm / 16 ymm); wider rows would spill, and measured no
// faster (benchmarks/results/native_ab.csv, the rows from when 96 and 128 channels took these
// passes too). Each lane does the same operations in the same order as the generic passes, so the
// results are bitwise the same. NB == 0 selects the generic passes (any C, bf16 and fp16).
constexpr int kMaxBlocks = kLanes >= 16 ? 4 : 2;

template <typename T, typename Fn>
inline void dispatch_blocks(int64_t C, Fn&& fn) {
  if constexpr (std::is_same_v<T, float>) {
    if (C % kLanes == 0) {
      switch (C / kLanes) {
        case 1: return fn(std::integral_constant<int, 1>{});
        case 2: return fn(std::integral_constant<int, 2>{});
        case 3: if constexpr (kMaxBlocks >= 3) return fn(std::integral_constant<int, 3>{}); break;
        case 4: if constexpr (kMaxBlocks >= 4) return fn(std::integral_constant<int, 4>{}); break;
        default: break;
      }
    }
  }
  fn(std::integral_constant<int, 0>{});
}

#define HYB_UNROLL _Pragma("GCC unroll 8")

// n fp32 vectors from p (n = NB, compile-time).
template <int NB>
inline void load_blocks(const float* p, fVec (&v)[NB]) {
  HYB_UNROLL for (int b = 0; b < NB; ++b) v[b] = fVec::loadu(p + b * kLanes);
}

// Per-group two-pass moments of pixels [p0, p1) of one sample (rows of C), into part[g]; the
// tile (kTile elements) stays in L1 between its two passes.
template <int NB, typename T>
void cl_tile_moments(const T* xs, int64_t C, int64_t G, int64_t p0, int64_t p1, float* sum, float* dsum, float* m2c,
                     Moments* part) {
  const int64_t rows = p1 - p0, CG = C / G;
  const float inv_rows = 1.f / static_cast<float>(rows);
  if constexpr (NB > 0) {  // the same two passes, sums in registers
    fVec s[NB], ds[NB], m2[NB];
    HYB_UNROLL for (int b = 0; b < NB; ++b) s[b] = ds[b] = m2[b] = fVec(0.f);
    for (int64_t r = p0; r < p1; ++r) {
      HYB_UNROLL for (int b = 0; b < NB; ++b) s[b] = s[b] + fVec::loadu(xs + r * C + b * kLanes);
    }
    HYB_UNROLL for (int b = 0; b < NB; ++b) s[b].store(sum + b * kLanes);
    for (int64_t c = 0; c < C; ++c) sum[c] *= inv_rows;  // first-pass channel means
    load_blocks(sum, s);
    for (int64_t r = p0; r < p1; ++r) {
      HYB_UNROLL for (int b = 0; b < NB; ++b) {
        const fVec d = fVec::loadu(xs + r * C + b * kLanes) - s[b];
        ds[b] = ds[b] + d;
        m2[b] = at::vec::fmadd(d, d, m2[b]);
      }
    }
    HYB_UNROLL for (int b = 0; b < NB; ++b) {
      ds[b].store(dsum + b * kLanes);
      m2[b].store(m2c + b * kLanes);
    }
  } else {
    std::fill(sum, sum + C, 0.f);
    std::fill(dsum, dsum + C, 0.f);
    std::fill(m2c, m2c + C, 0.f);
    for (int64_t r = p0; r < p1; ++r) {
      for_channel_blocks(C, [&](int64_t c, int64_t nl) {
        (load_f(sum + c, nl) + load_ch(xs + r * C + c, nl)).store(sum + c, nl);
      });
    }
    for (int64_t c = 0; c < C; ++c) sum[c] *= inv_rows;  // first-pass channel means
    for (int64_t r = p0; r < p1; ++r) {
      for_channel_blocks(C, [&](int64_t c, int64_t nl) {
        const fVec d = load_ch(xs + r * C + c, nl) - load_f(sum + c, nl);
        (load_f(dsum + c, nl) + d).store(dsum + c, nl);
        at::vec::fmadd(d, d, load_f(m2c + c, nl)).store(m2c + c, nl);
      });
    }
  }
  for (int64_t c = 0; c < C; ++c) {  // corrected two-pass, as in tile_moments
    sum[c] += dsum[c] * inv_rows;
    m2c[c] = std::max(0.f, m2c[c] - dsum[c] * dsum[c] * inv_rows);
  }
  // channels -> group: equal counts, so mean_g = mean of channel means and
  // m2_g = sum m2_c + rows * sum (mean_c - mean_g)^2
  for (int64_t g = 0; g < G; ++g) {
    float mg = 0.f;
    for (int64_t c = g * CG; c < (g + 1) * CG; ++c) mg += sum[c];
    mg /= static_cast<float>(CG);
    float m2 = 0.f, spread = 0.f;
    for (int64_t c = g * CG; c < (g + 1) * CG; ++c) {
      m2 += m2c[c];
      spread += (sum[c] - mg) * (sum[c] - mg);
    }
    part[g] = Moments{};
    part[g].combine(static_cast<float>(rows * CG), mg, m2 + static_cast<float>(rows) * spread);
  }
}

// Per-sample tasks when there are enough samples: a sample's tiles are read for the statistics
// and again for the output (or dx) while they are still in this core's caches. Otherwise each
// phase runs over all (sample, tile) pairs in parallel. Both schedules do the same arithmetic in
// the same order.
inline bool per_sample_tasks(int64_t N) {
  return N >= 2 * static_cast<int64_t>(at::get_num_threads());
}

template <int NB, typename T>
void forward_cl_impl(const GnsArgs& p) {
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  const int64_t N = p.N, C = p.C, HW = p.HW, G = p.G, CG = C / G;
  const int64_t tp = cl_tile_pixels(C), tiles = (HW + tp - 1) / tp;
  std::vector<Moments> part(N * tiles * G);
  std::vector<float> meanc(N * C), A(N * C);  // per channel: the group's mean, and A = rstd*a

  auto stats_tile = [&](int64_t i, float* sum, float* dsum, float* m2c) {
    const int64_t n = i / tiles, t = i % tiles;
    cl_tile_moments<NB>(x + n * HW * C, C, G, t * tp, std::min(HW, (t + 1) * tp), sum, dsum, m2c, part.data() + i * G);
  };
  auto finish_sample = [&](int64_t n) {  // tiles combined in order
    for (int64_t g = 0; g < G; ++g) {
      Moments m;
      for (int64_t t = 0; t < tiles; ++t) {
        const Moments& pm = part[(n * tiles + t) * G + g];
        m.combine(pm.count, pm.mean, pm.m2);
      }
      const float rstd = 1.f / std::sqrt(m.m2 / static_cast<float>(CG * HW) + p.eps);
      p.mean[n * G + g] = m.mean;
      p.rstd[n * G + g] = rstd;
      for (int64_t c = g * CG; c < (g + 1) * CG; ++c) {
        meanc[n * C + c] = m.mean;
        A[n * C + c] = rstd * p.a[n * C + c];
      }
    }
  };
  auto output_tile = [&](int64_t i) {
    const int64_t n = i / tiles, t = i % tiles;
    const float *mc = meanc.data() + n * C, *Ac = A.data() + n * C, *Bc = p.bb + n * C;
    const int64_t r0 = t * tp, r1 = std::min(HW, (t + 1) * tp);
    if constexpr (NB > 0) {
      fVec vm[NB], vA[NB], vB[NB];
      load_blocks(mc, vm);
      load_blocks(Ac, vA);
      load_blocks(Bc, vB);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t row = (n * HW + r) * C;
        HYB_UNROLL for (int b = 0; b < NB; ++b) {
          const fVec h = at::vec::fmadd(fVec::loadu(x + row + b * kLanes) - vm[b], vA[b], vB[b]);
          (h * sigmoid(h)).store(y + row + b * kLanes);
        }
      }
      return;
    }
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t row = (n * HW + r) * C;
      for_channel_blocks(C, [&](int64_t c, int64_t nl) {
        const fVec h = at::vec::fmadd(load_ch(x + row + c, nl) - load_f(mc + c, nl), load_f(Ac + c, nl),
                                      load_f(Bc + c, nl));
        store_ch(y + row + c, h * sigmoid(h), nl);
      });
    }
  };

  if (per_sample_tasks(N)) {
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> sum(C), dsum(C), m2c(C);
      for (int64_t n = begin; n < end; ++n) {
        for (int64_t t = 0; t < tiles; ++t) stats_tile(n * tiles + t, sum.data(), dsum.data(), m2c.data());
        finish_sample(n);
        for (int64_t t = 0; t < tiles; ++t) output_tile(n * tiles + t);
      }
    });
    return;
  }
  at::parallel_for(0, N * tiles, grain_for(tp * C), [&](int64_t begin, int64_t end) {
    std::vector<float> sum(C), dsum(C), m2c(C);
    for (int64_t i = begin; i < end; ++i) stats_tile(i, sum.data(), dsum.data(), m2c.data());
  });
  for (int64_t n = 0; n < N; ++n) finish_sample(n);
  at::parallel_for(0, N * tiles, grain_for(tp * C), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) output_tile(i);
  });
}

template <int NB, typename T>
void backward_cl_impl(const GnsArgs& p) {
  const T* x = static_cast<const T*>(p.x);
  const T* dy = static_cast<const T*>(p.dy);
  T* dx = static_cast<T*>(p.dx);
  const int64_t N = p.N, C = p.C, HW = p.HW, G = p.G, CG = C / G;
  const int64_t tp = cl_tile_pixels(C), tiles = (HW + tp - 1) / tp;
  const float inv_m = 1.f / static_cast<float>(CG * HW);
  float* const cache = dh_cache(dx);  // dh kept in dx between the passes when it is fp32
  // per (n, c): the group's mean and rstd, to recompute xhat with channel vectors
  std::vector<float> meanc(N * C), rstdc(N * C);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; ++c) {
      meanc[n * C + c] = p.mean[n * G + c / CG];
      rstdc[n * C + c] = p.rstd[n * G + c / CG];
    }
  }

  std::vector<float> part(2 * N * tiles * C);  // per-tile channel sums S1, S2
  std::vector<float> P(N * C), Q(N * C), R(N * C);  // dx = dh*P - (xhat*Q + R)

  auto sums_tile = [&](int64_t i) {
    const int64_t n = i / tiles, t = i % tiles;
    float* s1 = part.data() + i * C;
    float* s2 = part.data() + (N * tiles + i) * C;
    std::fill(s1, s1 + C, 0.f);
    std::fill(s2, s2 + C, 0.f);
    const float *mc = meanc.data() + n * C, *rc = rstdc.data() + n * C, *ac = p.a + n * C, *bc = p.bb + n * C;
    const int64_t r0 = t * tp, r1 = std::min(HW, (t + 1) * tp);
    if constexpr (NB > 0) {  // fp32: dh is kept in dx (cache) for the second pass
      fVec vm[NB], vr[NB], va[NB], vb[NB], a1[NB], a2[NB];
      load_blocks(mc, vm);
      load_blocks(rc, vr);
      load_blocks(ac, va);
      load_blocks(bc, vb);
      HYB_UNROLL for (int b = 0; b < NB; ++b) a1[b] = a2[b] = fVec(0.f);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t row = (n * HW + r) * C;
        HYB_UNROLL for (int b = 0; b < NB; ++b) {
          fVec xhat;
          const int64_t off = row + b * kLanes;
          const fVec dh = silu_grad(fVec::loadu(x + off), fVec::loadu(dy + off), vm[b], vr[b], va[b], vb[b], xhat);
          dh.store(cache + off);
          a1[b] = a1[b] + dh;
          a2[b] = at::vec::fmadd(dh, xhat, a2[b]);
        }
      }
      HYB_UNROLL for (int b = 0; b < NB; ++b) {
        a1[b].store(s1 + b * kLanes);
        a2[b].store(s2 + b * kLanes);
      }
      return;
    }
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t row = (n * HW + r) * C;
      for_channel_blocks(C, [&](int64_t c, int64_t nl) {
        fVec xhat;
        const fVec dh = silu_grad(load_ch(x + row + c, nl), load_ch(dy + row + c, nl), load_f(mc + c, nl),
                                  load_f(rc + c, nl), load_f(ac + c, nl), load_f(bc + c, nl), xhat);
        if (cache != nullptr) dh.store(cache + row + c, nl);
        (load_f(s1 + c, nl) + dh).store(s1 + c, nl);
        at::vec::fmadd(dh, xhat, load_f(s2 + c, nl)).store(s2 + c, nl);
      });
    }
  };
  auto finish_sample = [&](int64_t n) {  // tiles summed in order, then the coefficients
    float *s1 = p.s1 + n * C, *s2 = p.s2 + n * C;
    std::fill(s1, s1 + C, 0.f);
    std::fill(s2, s2 + C, 0.f);
    for (int64_t t = 0; t < tiles; ++t) {  // tile rows in address order; per channel, tiles in order
      const float *p1 = part.data() + (n * tiles + t) * C, *p2 = part.data() + (N * tiles + n * tiles + t) * C;
      for (int64_t c = 0; c < C; ++c) {
        s1[c] += p1[c];
        s2[c] += p2[c];
      }
    }
    for (int64_t g = 0; g < G; ++g) {
      float c1 = 0.f, c2 = 0.f;
      for (int64_t c = g * CG; c < (g + 1) * CG; ++c) {
        c1 += p.a[n * C + c] * p.s1[n * C + c];
        c2 += p.a[n * C + c] * p.s2[n * C + c];
      }
      const float rstd = p.rstd[n * G + g];
      for (int64_t c = g * CG; c < (g + 1) * CG; ++c) {
        P[n * C + c] = rstd * p.a[n * C + c];
        Q[n * C + c] = rstd * c2 * inv_m;
        R[n * C + c] = rstd * c1 * inv_m;
      }
    }
  };
  auto dx_tile = [&](int64_t i) {
    const int64_t n = i / tiles, t = i % tiles;
    const float *mc = meanc.data() + n * C, *rc = rstdc.data() + n * C, *ac = p.a + n * C, *bc = p.bb + n * C;
    const float *Pc = P.data() + n * C, *Qc = Q.data() + n * C, *Rc = R.data() + n * C;
    const int64_t r0 = t * tp, r1 = std::min(HW, (t + 1) * tp);
    if constexpr (NB > 0) {  // fp32: dh from the first pass, in dx
      fVec vm[NB], vr[NB], vP[NB], vQ[NB], vR[NB];
      load_blocks(mc, vm);
      load_blocks(rc, vr);
      load_blocks(Pc, vP);
      load_blocks(Qc, vQ);
      load_blocks(Rc, vR);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t row = (n * HW + r) * C;
        HYB_UNROLL for (int b = 0; b < NB; ++b) {
          const int64_t off = row + b * kLanes;
          const fVec xhat = (fVec::loadu(x + off) - vm[b]) * vr[b];
          at::vec::fmsub(fVec::loadu(cache + off), vP[b], at::vec::fmadd(xhat, vQ[b], vR[b])).store(cache + off);
        }
      }
      return;
    }
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t row = (n * HW + r) * C;
      for_channel_blocks(C, [&](int64_t c, int64_t nl) {
        const fVec vP = load_f(Pc + c, nl), vQ = load_f(Qc + c, nl), vR = load_f(Rc + c, nl);
        fVec xhat, dh;
        if (cache != nullptr) {  // dh from the first pass: no sigmoid here
          xhat = (load_ch(x + row + c, nl) - load_f(mc + c, nl)) * load_f(rc + c, nl);
          dh = load_f(cache + row + c, nl);
        } else {
          dh = silu_grad(load_ch(x + row + c, nl), load_ch(dy + row + c, nl), load_f(mc + c, nl), load_f(rc + c, nl),
                         load_f(ac + c, nl), load_f(bc + c, nl), xhat);
        }
        store_ch(dx + row + c, at::vec::fmsub(dh, vP, at::vec::fmadd(xhat, vQ, vR)), nl);
      });
    }
  };

  if (per_sample_tasks(N)) {
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        for (int64_t t = 0; t < tiles; ++t) sums_tile(n * tiles + t);
        finish_sample(n);
        for (int64_t t = 0; t < tiles; ++t) dx_tile(n * tiles + t);
      }
    });
    return;
  }
  at::parallel_for(0, N * tiles, grain_for(tp * C), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) sums_tile(i);
  });
  for (int64_t n = 0; n < N; ++n) finish_sample(n);
  at::parallel_for(0, N * tiles, grain_for(tp * C), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) dx_tile(i);
  });
}

template <typename T>
void forward_cl(const GnsArgs& p) {
  dispatch_blocks<T>(p.C, [&](auto nb) { forward_cl_impl<decltype(nb)::value, T>(p); });
}

template <typename T>
void backward_cl(const GnsArgs& p) {
  dispatch_blocks<T>(p.C, [&](auto nb) { backward_cl_impl<decltype(nb)::value, T>(p); });
}

}  // namespace

void group_norm_silu_forward(const GnsArgs& args) {
  dispatch_dtype(args.dtype, [&](auto tag) {
    using T = decltype(tag);
    args.channels_last ? forward_cl<T>(args) : forward_nchw<T>(args);
  });
}

void group_norm_silu_backward(const GnsArgs& args) {
  dispatch_dtype(args.dtype, [&](auto tag) {
    using T = decltype(tag);
    args.channels_last ? backward_cl<T>(args) : backward_nchw<T>(args);
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace hybengine_native
