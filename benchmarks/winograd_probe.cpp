// Winograd F(4x4, 3x3) forward of a 3x3 convolution (stride 1, padding 1) on channels-last fp32
// tensors: a probe of whether it beats oneDNN's direct convolution on the CPU at the U-Net's
// shapes (benchmarks/winograd_probe.py builds and times it; nothing in hybengine uses it).
//
// Each 4x4 output tile comes from a 6x6 input tile d (origin (4ty-1, 4tx-1), zeros outside):
//
//     y_tile = A^T [ U ⊙ V ] A,   V = B^T d B   (per input channel),   U = G g G^T   (per (in, out))
//     with the elementwise product summed over input channels: for each of the 36 positions p,
//     M[t, p, :] = V[t, p, :] @ U[p]   (T x C) @ (C x O): 36 GEMMs, 4x fewer multiplies than direct
//
//     B^T = [4  0 -5  0  1  0]   G = [ 1/4     0     0 ]   A^T = [1  1  1  1  1  0]
//           [0 -4 -4  1  1  0]       [-1/6  -1/6  -1/6 ]         [0  1 -1  2 -2  0]
//           [0  4 -4 -1  1  0]       [-1/6   1/6  -1/6 ]         [0  1  1  4  4  0]
//           [0 -2 -1  2  1  0]       [1/24  1/12   1/6 ]         [0  1 -1  8 -8  1]
//           [0  2 -1 -2  1  0]       [1/24 -1/12   1/6 ]
//           [0  4  0 -5  0  1]       [ 0     0     1   ]
//
// (Lavin & Gray 2016.) U is made in Python (float64, then fp32). Layouts: V (T, 36, C) and
// M (T, 36, O), tile-major, so each transform streams one tile's 36 rows in address order; the
// GEMMs read V[:, p, :] with a row stride of 36*C, which BLAS takes as its leading dimension.
// Only the forward is probed: the data gradient is the same computation with the flipped
// kernel, and the weight gradient's GEMMs have the same small inner sizes.

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>

namespace {

constexpr int64_t kCB = 16;  // channels per vector block (one AVX-512 register of fp32)

// r = B^T column of six values, per channel lane (rows of B^T above).
inline void bt6(const float (&d)[6][kCB], float (&r)[6][kCB]) {
  for (int k = 0; k < kCB; ++k) {
    const float d0 = d[0][k], d1 = d[1][k], d2 = d[2][k], d3 = d[3][k], d4 = d[4][k], d5 = d[5][k];
    r[0][k] = 4.f * d0 - 5.f * d2 + d4;
    r[1][k] = -4.f * (d1 + d2) + d3 + d4;
    r[2][k] = 4.f * (d1 - d2) - d3 + d4;
    r[3][k] = -2.f * (d1 - d3) - d2 + d4;
    r[4][k] = 2.f * (d1 - d3) - d2 + d4;
    r[5][k] = 4.f * d1 - 5.f * d3 + d5;
  }
}

// r = A^T column of six values (rows of A^T above), plus `add` per lane.
inline void at6(const float (&m)[6][kCB], const float* add, float (&r)[4][kCB]) {
  for (int k = 0; k < kCB; ++k) {
    const float a = m[1][k] + m[2][k], b = m[1][k] - m[2][k], c = m[3][k] + m[4][k], d = m[3][k] - m[4][k];
    r[0][k] = m[0][k] + a + c + add[k];
    r[1][k] = b + 2.f * d + add[k];
    r[2][k] = a + 4.f * c + add[k];
    r[3][k] = b + 8.f * d + m[5][k] + add[k];
  }
}

struct Tiles {
  int64_t N, H, W, TH, TW;
  int64_t count() const { return N * TH * TW; }
};

Tiles tiles_of(const at::Tensor& x) {
  const int64_t H = x.size(2), W = x.size(3);
  return {x.size(0), H, W, (H + 3) / 4, (W + 3) / 4};
}

void check_input(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat && x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "winograd_probe: x must be a channels-last fp32 (N, C, H, W) tensor");
}

}  // namespace

// V (T, 36, C): B^T d B of every 6x6 input tile.
at::Tensor input_transform(const at::Tensor& x) {
  check_input(x);
  const Tiles tl = tiles_of(x);
  const int64_t C = x.size(1), T = tl.count();
  auto V = at::empty({T, 36, C}, x.options());
  const float* xp = x.data_ptr<float>();
  float* vp = V.data_ptr<float>();
  at::parallel_for(0, T, 16, [&](int64_t t0, int64_t t1) {
    float d[6][6][kCB], col[6][kCB], r[6][kCB], u[6][6][kCB];  // d[i][j]: input row i, column j
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / (tl.TH * tl.TW), ty = (t / tl.TW) % tl.TH, tx = t % tl.TW;
      for (int64_t c0 = 0; c0 < C; c0 += kCB) {
        const int64_t nc = std::min(kCB, C - c0);
        const bool interior = nc == kCB && ty > 0 && tx > 0 && 4 * ty + 5 <= tl.H && 4 * tx + 5 <= tl.W;
        for (int i = 0; i < 6; ++i) {
          const int64_t h = 4 * ty - 1 + i;
          for (int j = 0; j < 6; ++j) {
            const int64_t w = 4 * tx - 1 + j;
            const float* src = xp + ((n * tl.H + h) * tl.W + w) * C + c0;
            if (interior) {  // the common case: a straight copy the compiler vectorizes
              for (int k = 0; k < kCB; ++k) d[i][j][k] = src[k];
            } else {
              const bool inside = h >= 0 && h < tl.H && w >= 0 && w < tl.W;
              for (int k = 0; k < kCB; ++k) d[i][j][k] = inside && k < nc ? src[k] : 0.f;
            }
          }
        }
        for (int j = 0; j < 6; ++j) {  // u = B^T d, column by column
          for (int i = 0; i < 6; ++i) std::copy(d[i][j], d[i][j] + kCB, col[i]);
          bt6(col, r);
          for (int i = 0; i < 6; ++i) std::copy(r[i], r[i] + kCB, u[i][j]);
        }
        for (int i = 0; i < 6; ++i) {  // v = u B: row i of u times B, i.e. B^T applied to u's row
          bt6(u[i], r);
          for (int j = 0; j < 6; ++j) std::copy(r[j], r[j] + nc, vp + (t * 36 + 6 * i + j) * C + c0);
        }
      }
    }
  });
  return V;
}

// M (T, 36, O): for each position p, M[:, p, :] = V[:, p, :] @ U[p]   (U: (36, C, O)).
at::Tensor gemms(const at::Tensor& V, const at::Tensor& U) {
  TORCH_CHECK(V.dim() == 3 && U.dim() == 3 && V.size(1) == 36 && U.size(0) == 36 && V.size(2) == U.size(1),
              "winograd_probe: V (T, 36, C) and U (36, C, O) expected");
  auto M = at::empty({V.size(0), 36, U.size(2)}, V.options());
  for (int64_t p = 0; p < 36; ++p) {
    auto out = M.select(1, p);  // (T, O), row stride 36*O: the GEMM's leading dimension
    at::mm_out(out, V.select(1, p), U[p]);
  }
  return M;
}

// y (N, O, H, W) channels-last: A^T m A of every tile's 36 positions, plus the bias.
at::Tensor output_transform(const at::Tensor& M, const std::optional<at::Tensor>& bias, int64_t N, int64_t H,
                            int64_t W) {
  const int64_t O = M.size(2), TH = (H + 3) / 4, TW = (W + 3) / 4, T = N * TH * TW;
  TORCH_CHECK(M.size(0) == T && M.size(1) == 36, "winograd_probe: M does not match (N, H, W)");
  auto y = at::empty({N, O, H, W}, M.options().memory_format(at::MemoryFormat::ChannelsLast));
  const float* mp = M.data_ptr<float>();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::zeros({O}, M.options());
  const float* bp = b.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, T, 16, [&](int64_t t0, int64_t t1) {
    float m[6][6][kCB], col[6][kCB], r[4][kCB], u[4][6][kCB], bias_blk[kCB], zero[kCB] = {};
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / (TH * TW), ty = (t / TW) % TH, tx = t % TW;
      for (int64_t c0 = 0; c0 < O; c0 += kCB) {
        const int64_t nc = std::min(kCB, O - c0);
        for (int k = 0; k < kCB; ++k) bias_blk[k] = k < nc ? bp[c0 + k] : 0.f;
        for (int p = 0; p < 36; ++p) {
          const float* src = mp + (t * 36 + p) * O + c0;
          if (nc == kCB) {
            for (int k = 0; k < kCB; ++k) m[p / 6][p % 6][k] = src[k];
          } else {
            for (int k = 0; k < kCB; ++k) m[p / 6][p % 6][k] = k < nc ? src[k] : 0.f;
          }
        }
        for (int j = 0; j < 6; ++j) {  // u = A^T m, column by column
          for (int i = 0; i < 6; ++i) std::copy(m[i][j], m[i][j] + kCB, col[i]);
          at6(col, zero, r);
          for (int i = 0; i < 4; ++i) std::copy(r[i], r[i] + kCB, u[i][j]);
        }
        for (int i = 0; i < 4 && 4 * ty + i < H; ++i) {  // y = u A (+ bias), row by row
          at6(u[i], bias_blk, r);
          for (int j = 0; j < 4 && 4 * tx + j < W; ++j) {
            std::copy(r[j], r[j] + nc, yp + ((n * H + 4 * ty + i) * W + 4 * tx + j) * O + c0);
          }
        }
      }
    }
  });
  return y;
}

at::Tensor forward(const at::Tensor& x, const at::Tensor& U, const std::optional<at::Tensor>& bias) {
  return output_transform(gemms(input_transform(x), U), bias, x.size(0), x.size(2), x.size(3));
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("input_transform", &input_transform);
  m.def("gemms", &gemms);
  m.def("output_transform", &output_transform);
  m.def("forward", &forward);
}
