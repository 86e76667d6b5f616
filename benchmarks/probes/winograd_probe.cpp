// Winograd F(4x4, 3x3) forward of a 3x3 convolution (stride 1, padding 1) on channels-last fp32
// tensors: a probe of whether it beats oneDNN's direct convolution on the CPU at the U-Net's
// shapes (benchmarks/probes/winograd_probe.py builds and times it; nothing in hybengine uses it).
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

// out[r] = (B^T in)[r] for r < 6, per channel lane; in[i] at in + i*si, out[r] at out + r*so (the
// rows of B^T above). Strided in and out, so that the column pass reads the tile in place and the
// row pass writes V in place: no staging copies.
inline void bt6(const float* __restrict__ in, int64_t si, float* __restrict__ out, int64_t so) {
  for (int k = 0; k < kCB; ++k) {
    const float d0 = in[k], d1 = in[si + k], d2 = in[2 * si + k], d3 = in[3 * si + k], d4 = in[4 * si + k],
                d5 = in[5 * si + k];
    out[k] = 4.f * d0 - 5.f * d2 + d4;
    out[so + k] = -4.f * (d1 + d2) + d3 + d4;
    out[2 * so + k] = 4.f * (d1 - d2) - d3 + d4;
    out[3 * so + k] = -2.f * (d1 - d3) - d2 + d4;
    out[4 * so + k] = 2.f * (d1 - d3) - d2 + d4;
    out[5 * so + k] = 4.f * d1 - 5.f * d3 + d5;
  }
}

// out[r] = (A^T m)[r] + add for r < 4, per channel lane (the rows of A^T above); strided likewise.
inline void at6(const float* __restrict__ m, int64_t si, const float* __restrict__ add, float* __restrict__ out,
                int64_t so) {
  for (int k = 0; k < kCB; ++k) {
    const float m1 = m[si + k], m2 = m[2 * si + k], m3 = m[3 * si + k], m4 = m[4 * si + k];
    const float a = m1 + m2, b = m1 - m2, c = m3 + m4, d = m3 - m4;
    out[k] = m[k] + a + c + add[k];
    out[so + k] = b + 2.f * d + add[k];
    out[2 * so + k] = a + 4.f * c + add[k];
    out[3 * so + k] = b + 8.f * d + m[5 * si + k] + add[k];
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

// A caller's output buffer (a reused workspace): fp32, dense, of the expected shape.
void check_out(const at::Tensor& t, at::IntArrayRef shape) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.sizes() == shape,
              "winograd_probe: output buffer of shape ", shape, " (fp32, contiguous) expected, got ", t.sizes());
}

void check_input(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat && x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "winograd_probe: x must be a channels-last fp32 (N, C, H, W) tensor");
}

}  // namespace

// V (T, 36, C): B^T d B of every 6x6 input tile.
at::Tensor input_transform(const at::Tensor& x, const std::optional<at::Tensor>& out) {
  check_input(x);
  const Tiles tl = tiles_of(x);
  const int64_t C = x.size(1), T = tl.count();
  auto V = out.has_value() ? *out : at::empty({T, 36, C}, x.options());
  check_out(V, {T, 36, C});
  const float* xp = x.data_ptr<float>();
  float* vp = V.data_ptr<float>();
  at::parallel_for(0, T, 16, [&](int64_t t0, int64_t t1) {
    float d[6][6][kCB], u[6][6][kCB], v[6][kCB];  // d[i][j]: input row i, column j
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
        for (int j = 0; j < 6; ++j) bt6(d[0][j], 6 * kCB, u[0][j], 6 * kCB);  // u = B^T d, column by column
        for (int i = 0; i < 6; ++i) {  // v = u B: B^T applied to each row of u, written into V
          float* row = vp + (t * 36 + 6 * i) * C + c0;
          if (nc == kCB) {
            bt6(u[i][0], kCB, row, C);
          } else {
            bt6(u[i][0], kCB, v[0], kCB);
            for (int j = 0; j < 6; ++j) std::copy(v[j], v[j] + nc, row + j * C);
          }
        }
      }
    }
  });
  return V;
}

// M (T, 36, O): for each position p, M[:, p, :] = V[:, p, :] @ U[p]   (U: (36, C, O)).
at::Tensor gemms(const at::Tensor& V, const at::Tensor& U, const std::optional<at::Tensor>& out) {
  TORCH_CHECK(V.dim() == 3 && U.dim() == 3 && V.size(1) == 36 && U.size(0) == 36 && V.size(2) == U.size(1),
              "winograd_probe: V (T, 36, C) and U (36, C, O) expected");
  auto M = out.has_value() ? *out : at::empty({V.size(0), 36, U.size(2)}, V.options());
  check_out(M, {V.size(0), 36, U.size(2)});
  for (int64_t p = 0; p < 36; ++p) {
    auto out = M.select(1, p);  // (T, O), row stride 36*O: the GEMM's leading dimension
    at::mm_out(out, V.select(1, p), U[p]);
  }
  return M;
}

// y (N, O, H, W) channels-last, given: A^T m A of every tile's 36 positions, plus the bias.
at::Tensor output_transform(const at::Tensor& M, const std::optional<at::Tensor>& bias, const at::Tensor& y,
                            int64_t N, int64_t H, int64_t W) {
  const int64_t O = M.size(2), TH = (H + 3) / 4, TW = (W + 3) / 4, T = N * TH * TW;
  TORCH_CHECK(M.size(0) == T && M.size(1) == 36, "winograd_probe: M does not match (N, H, W)");
  TORCH_CHECK(y.sizes() == at::IntArrayRef({N, O, H, W}) && y.is_contiguous(at::MemoryFormat::ChannelsLast),
              "winograd_probe: y must be channels-last (N, O, H, W)");
  const float* mp = M.data_ptr<float>();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::zeros({O}, M.options());
  const float* bp = b.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, T, 16, [&](int64_t t0, int64_t t1) {
    float m[6][6][kCB], u[4][6][kCB], r[4][kCB], bias_blk[kCB], zero[kCB] = {};
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / (TH * TW), ty = (t / TW) % TH, tx = t % TW;
      const bool whole = 4 * ty + 4 <= H && 4 * tx + 4 <= W;
      for (int64_t c0 = 0; c0 < O; c0 += kCB) {
        const int64_t nc = std::min(kCB, O - c0);
        for (int k = 0; k < kCB; ++k) bias_blk[k] = k < nc ? bp[c0 + k] : 0.f;
        const float* tile = mp + t * 36 * O + c0;  // position p = 6i + j at tile + p*O
        if (nc < kCB) {  // a partial channel block: gathered, unused lanes zero
          for (int p = 0; p < 36; ++p) {
            for (int k = 0; k < kCB; ++k) m[p / 6][p % 6][k] = k < nc ? tile[p * O + k] : 0.f;
          }
        }
        for (int j = 0; j < 6; ++j) {  // u = A^T m, column by column, read in place when whole
          if (nc == kCB) {
            at6(tile + j * O, 6 * O, zero, u[0][j], 6 * kCB);
          } else {
            at6(m[0][j], 6 * kCB, zero, u[0][j], 6 * kCB);
          }
        }
        for (int i = 0; i < 4 && 4 * ty + i < H; ++i) {  // y = u A (+ bias), row by row
          float* out = yp + ((n * H + 4 * ty + i) * W + 4 * tx) * O + c0;
          if (whole && nc == kCB) {
            at6(u[i][0], kCB, bias_blk, out, O);
          } else {
            at6(u[i][0], kCB, bias_blk, r[0], kCB);
            for (int j = 0; j < 4 && 4 * tx + j < W; ++j) std::copy(r[j], r[j] + nc, out + j * O);
          }
        }
      }
    }
  });
  return y;
}

// The whole forward, allocating V, M and y as a plain op would (no workspace kept between calls).
at::Tensor forward(const at::Tensor& x, const at::Tensor& U, const std::optional<at::Tensor>& bias) {
  const at::Tensor M = gemms(input_transform(x, std::nullopt), U, std::nullopt);
  const at::Tensor y = at::empty({x.size(0), U.size(2), x.size(2), x.size(3)},
                                 x.options().memory_format(at::MemoryFormat::ChannelsLast));
  return output_transform(M, bias, y, x.size(0), x.size(2), x.size(3));
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.def("input_transform", &input_transform, py::arg("x"), py::arg("out") = py::none());
  m.def("gemms", &gemms, py::arg("V"), py::arg("U"), py::arg("out") = py::none());
  m.def("output_transform", &output_transform);
  m.def("forward", &forward);
}
