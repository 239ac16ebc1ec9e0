// A float32 product for passes of few rows on AVX-512 CPUs: y [m, n] = x [m, k] @ w [n, k]^T.
//
// The weight is packed once into panels of 32 output columns, [n / 32, k, 32], so that one
// panel streams through memory in order while every row of x is multiplied against it. Each row
// keeps its own 32 accumulators (two zmm registers) and sums over k in the same order whatever m
// is: a row's result does not depend on which other rows share the product (the 1-token pass of
// plain decoding and a 9-token Jacobi pass give bit-identical rows). Rows go 12 at a time (24
// accumulators fit the 32 registers); a software prefetch 32 KiB ahead into L2 keeps the stream
// busy (faster than prefetching into L1 on 3 to 16 rows).

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <vector>

namespace {

constexpr int64_t kPanel = 32;       // output columns per panel
constexpr int64_t kAhead = 8192;     // floats prefetched ahead of the stream (32 KiB), into L2
constexpr int64_t kMaxRows = 12;     // rows per sweep over the weight

template <int M>
void panel(const float* x, int64_t k, const float* w, float* y, int64_t n) {
  // x [M, k] row-major, w one panel [k, 32], y [M, n] with this panel's 32 columns written
  __m512 lo[M], hi[M];
  for (int r = 0; r < M; ++r) {
    lo[r] = _mm512_setzero_ps();
    hi[r] = _mm512_setzero_ps();
  }
  for (int64_t i = 0; i < k; ++i) {
    const float* wi = w + i * kPanel;
    _mm_prefetch(reinterpret_cast<const char*>(wi + kAhead), _MM_HINT_T1);
    _mm_prefetch(reinterpret_cast<const char*>(wi + kAhead + 16), _MM_HINT_T1);
    const __m512 w0 = _mm512_loadu_ps(wi);
    const __m512 w1 = _mm512_loadu_ps(wi + 16);
    for (int r = 0; r < M; ++r) {
      const __m512 b = _mm512_set1_ps(x[r * k + i]);
      lo[r] = _mm512_fmadd_ps(b, w0, lo[r]);
      hi[r] = _mm512_fmadd_ps(b, w1, hi[r]);
    }
  }
  for (int r = 0; r < M; ++r) {
    _mm512_storeu_ps(y + r * n, lo[r]);
    _mm512_storeu_ps(y + r * n + 16, hi[r]);
  }
}

template <int M>
void sweep(const float* x, int64_t k, const float* packed, float* y, int64_t n) {
  at::parallel_for(0, n / kPanel, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      panel<M>(x, k, packed + p * k * kPanel, y + p * kPanel, n);
    }
  });
}

using Sweep = void (*)(const float*, int64_t, const float*, float*, int64_t);
constexpr Sweep kSweeps[kMaxRows] = {sweep<1>, sweep<2>, sweep<3>, sweep<4>, sweep<5>, sweep<6>,
                                     sweep<7>, sweep<8>, sweep<9>, sweep<10>, sweep<11>, sweep<12>};

}  // namespace

// w [n, k] float32 -> [n / 32, k, 32]
torch::Tensor pack(const torch::Tensor& w) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == torch::kFloat32, "pack wants a 2D float32 weight");
  const int64_t n = w.size(0), k = w.size(1);
  TORCH_CHECK(n % kPanel == 0, "pack wants a multiple of 32 output columns, got ", n);
  return w.reshape({n / kPanel, kPanel, k}).transpose(1, 2).contiguous();
}

// x [..., k] float32, packed [n / 32, k, 32], optional bias [n] -> y [..., n]
torch::Tensor linear(const torch::Tensor& x_in, const torch::Tensor& packed, const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(x_in.dim() >= 1 && x_in.scalar_type() == torch::kFloat32 && x_in.device().is_cpu(), "x must be float32 on CPU");
  TORCH_CHECK(packed.dim() == 3 && packed.size(2) == kPanel && packed.size(1) == x_in.size(-1), "packed weight does not fit x");
  const torch::Tensor x = x_in.contiguous();
  const int64_t k = x.size(-1), m = k ? x.numel() / k : 0, n = packed.size(0) * kPanel;
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = n;
  auto y = torch::empty(shape, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = packed.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  // sweeps of nearly equal size: 17 rows -> 8 + 9
  const int64_t sweeps = (m + kMaxRows - 1) / kMaxRows;
  for (int64_t s = 0, done = 0; s < sweeps; ++s) {
    const int64_t rows = (m - done) / (sweeps - s);
    kSweeps[rows - 1](xp + done * k, k, wp, yp + done * n, n);
    done += rows;
  }
  if (bias.has_value() && bias->defined()) {
    y.add_(*bias);
  }
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("pack", &pack, "w [n, k] -> panels [n / 32, k, 32]");
  module.def("linear", &linear, "x [..., k] @ w^T (+ bias) through its panels -> [..., n]",
             pybind11::arg("x"), pybind11::arg("packed"), pybind11::arg("bias") = pybind11::none());
}
