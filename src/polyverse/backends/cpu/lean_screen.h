// The exact argmax of the LM head without its full product: an int8 copy of the head screens the
// vocabulary, a proven bound on its error keeps every column that could be the largest, and those
// columns alone go through the head's own kernel. Included by lean.cpp inside namespace lean,
// after Model.
//
// A greedy pass reads one token per row: the head's argmax. Streaming an int8 copy instead of the
// bf16 or fp32 head reads half or a quarter of the bytes, and the argmax stays the head's own, bit
// for bit: a column j leaves the running only where its screened value plus its error bound E_j is
// below some other column's screened value minus that column's bound, so every column that could
// be the largest (the first of equals included) is computed exactly and compared there.
//
// The bound, per row and column j, over blocks b of 32 inputs, a = the row as the exact kernel
// multiplies it (bf16-rounded for a bf16 head), w = the exact head's weights, x's and w's int8
// scales sx_b and sw_jb (rounding error at most half a step, with h = 0.5 and a little to spare):
//   |screen - a.w| <= sum_b  h sx_b L1_jb + h sw_jb A_b + 32 h^2 sx_b sw_jb
// (L1_jb = sum |w| over the block, A_b = sum |a| over it), plus the float rounding of the screen's
// per-block folding and of the exact kernel's sums (at most k + 2 roundings of |a|.|w|, and
// |w| <= 127 sw_jb in a block), each a multiple of sw_jb.

struct Screen {
  Weight rough;     // the head in int8: panels of 32 columns, a scale sw per column and block of 32
  torch::Tensor l1; // [n / 32, blocks, 32] uint8: sum of |w| per column and block <= 16 sw times it
  Weight exact;     // the model's packed head (shares its memory)
  int64_t vocab;
  int64_t most;     // more candidates than this in a row: the row is left to the full product (-1)
  bool wide;

  // w [n, k]: the head's weights as the exact product holds them (bf16-rounded for a bf16 head),
  // padded as the model's head is
  Screen(const Model& model, const torch::Tensor& w_in, int64_t vocab, int64_t most)
      : rough(pack(w_in, kI8, c10::nullopt)), exact(model.head()), vocab(vocab), most(most), wide(model.wide()) {
    TORCH_CHECK(exact.kind != kI8, "an int8 head is screened by itself");
    TORCH_CHECK(exact.n == rough.n && exact.k == rough.k, "the screen does not fit the head");
    const torch::Tensor w = w_in.detach().to(torch::kFloat32).contiguous();
    const int64_t n = rough.n, k = rough.k, blocks = k / 32;
    l1 = torch::empty({n / kPanel, blocks, kPanel}, torch::kUInt8);
    uint8_t* dst = l1.data_ptr<uint8_t>();
    for (int64_t j = 0; j < n; ++j)
      for (int64_t b = 0; b < blocks; ++b) {
        double total = 0.0;  // |w| <= 127 sw in the block, so the sum is at most 254 steps of 16 sw
        for (int i = 0; i < 32; ++i) total += std::fabs(w.data_ptr<float>()[j * k + b * 32 + i]);
        const int64_t at = ((j / kPanel) * blocks + b) * kPanel + j % kPanel;
        const double step = 16.0 * rough.scale[at];
        dst[at] = step > 0.0 ? static_cast<uint8_t>(std::min(255.0, std::ceil(total * (1 + 1e-6) / step))) : 0;
      }
  }

  // hidden [m, k] -> (argmax per row [m] int64, -1 where left to the full product; screened logits [m, n])
  std::tuple<torch::Tensor, torch::Tensor> top(const torch::Tensor& hidden_in) const {
    const torch::Tensor hidden = hidden_in.to(torch::kFloat32).contiguous();
    TORCH_CHECK(hidden.dim() == 2 && hidden.size(1) == rough.k, "hidden rows do not fit the head");
    const int64_t m = hidden.size(0), k = rough.k, n = rough.n, blocks = k / 32, panels = n / kPanel;
    auto tops = torch::full({m}, -1, torch::kLong);
    auto zt = torch::empty({m, n}, torch::kFloat32);
    if (m == 0) return {tops, zt};
    const float* x = hidden.data_ptr<float>();
    float* z = zt.data_ptr<float>();
    std::vector<float> a(m * k);  // the rows as the exact product multiplies them
    std::vector<char> finite(m, 1);
    for (int64_t r = 0; r < m; ++r)
      for (int64_t i = 0; i < k; ++i) {
        const float v = x[r * k + i];
        a[r * k + i] = exact.kind == kBF16 ? bf16_to_float(float_to_bf16(v)) : v;
        if (!std::isfinite(v)) finite[r] = 0;
      }
    Rows rows;
    product(wide, rough, rows, a.data(), m, z);
    // the bound's per-row factors: E_j = sum_b sw_jb (alpha_b + beta_b l1_jb)
    const float u = 5.97e-8f, h = 0.5001f;
    const float fold = 32.0f * h * h + static_cast<float>(blocks + 2) * u * 32.0f * 127.0f * 127.0f;
    const float sums = static_cast<float>(k + 2) * u * 127.01f;
    std::vector<float> alpha(m * blocks), beta(m * blocks);
    for (int64_t r = 0; r < m; ++r)
      for (int64_t b = 0; b < blocks; ++b) {
        float total = 0.0f;
        for (int j = 0; j < 32; ++j) total += std::fabs(a[r * k + b * 32 + j]);
        const float sx = rows.scale[r * blocks + b];
        alpha[r * blocks + b] = (h + sums) * total * 1.0001f + fold * sx;
        beta[r * blocks + b] = 16.0f * h * sx;
      }
    std::vector<float> bound(m * n);
    const int T = threads();
    std::vector<float> lows(T * m, -INFINITY);
    const float* sw = rough.scale;  // [panels, blocks, 32]
    const uint8_t* l1p = l1.data_ptr<uint8_t>();
#pragma omp parallel num_threads(T)
    {
      float* low = lows.data() + omp_get_thread_num() * m;
#pragma omp for schedule(static)
      for (int64_t p = 0; p < panels; ++p) {
        if (wide) avx512::screen_panel(sw, l1p, alpha.data(), beta.data(), z, m, n, blocks, vocab, p, bound.data(), low);
        else avx2::screen_panel(sw, l1p, alpha.data(), beta.data(), z, m, n, blocks, vocab, p, bound.data(), low);
      }
    }
    int64_t* out = tops.data_ptr<int64_t>();
#pragma omp parallel for schedule(static) num_threads(T) if (m > 1)
    for (int64_t r = 0; r < m; ++r) {
      float lower = -INFINITY;
      for (int t = 0; t < T; ++t) lower = std::max(lower, lows[t * m + r]);
      if (!finite[r] || !std::isfinite(lower)) continue;
      std::vector<int64_t> chosen;
      if (wide) avx512::screen_keep(z + r * n, bound.data() + r * n, vocab, lower, most, chosen);
      else avx2::screen_keep(z + r * n, bound.data() + r * n, vocab, lower, most, chosen);
      if (static_cast<int64_t>(chosen.size()) <= most) out[r] = pick(x + r * k, chosen);
    }
    return {tops, zt};
  }

 private:
  // the largest exact value among the chosen columns (ascending), the first of equals; -1 on a NaN
  int64_t pick(const float* x, const std::vector<int64_t>& chosen) const {
    Rows one;
    one.load(exact.kind, x, 1, exact.k, wide);
    std::unique_ptr<float[]> y(new float[rough.n]);  // the chosen columns' panels written in place
    int64_t best = -1, done = -1;
    float top = -INFINITY;
    for (const int64_t j : chosen) {
      const int64_t p = j / kPanel;
      if (p != done) {  // the candidate's panel through the head's own kernel: the bits project gives
        if (wide) avx512::one_panel<1>(exact, one, 0, p, y.get());
        else avx2::one_panel<1>(exact, one, 0, p, y.get());
        done = p;
      }
      if (std::isnan(y[j])) return -1;
      if (best < 0 || y[j] > top) { best = j; top = y[j]; }
    }
    return best;
  }
};
