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
  Weight rough_;    // the head in int8: panels of 32 columns, a scale sw per column and block of 32
  torch::Tensor l1; // [n / 32, blocks, 32] uint8: sum of |w| per column and block <= 16 sw times it
  Weight exact;     // the model's packed head (shares its memory)
  // per column, sum over blocks of sw and of sw l1 (rounded up): with a row's largest alpha_b and
  // beta_b, a looser bound than E_j that costs two multiply-adds, to pass over most columns
  std::vector<float> s1, s2, m1, m2;  // and the largest sw and sw l1 over the blocks
  int64_t vocab;
  int64_t most;     // more candidates than this in a row: the row is left to the full product (-1)
  bool wide;

  // w [n, k]: the head's weights as the exact product holds them (bf16-rounded for a bf16 head),
  // padded as the model's head is
  Screen(const Model& model, const torch::Tensor& w_in, int64_t vocab, int64_t most)
      : rough_(pack(w_in, kI8, c10::nullopt)), exact(model.head()), vocab(vocab), most(most), wide(model.wide()) {
    TORCH_CHECK(exact.kind != kI8, "an int8 head is screened by itself");
    TORCH_CHECK(exact.n == rough_.n && exact.k == rough_.k, "the screen does not fit the head");
    const torch::Tensor w = w_in.detach().to(torch::kFloat32).contiguous();
    const int64_t n = rough_.n, k = rough_.k, blocks = k / 32;
    l1 = torch::empty({n / kPanel, blocks, kPanel}, torch::kUInt8);
    uint8_t* dst = l1.data_ptr<uint8_t>();
    for (int64_t j = 0; j < n; ++j)
      for (int64_t b = 0; b < blocks; ++b) {
        double total = 0.0;  // |w| <= 127 sw in the block, so the sum is at most 254 steps of 16 sw
        for (int i = 0; i < 32; ++i) total += std::fabs(w.data_ptr<float>()[j * k + b * 32 + i]);
        const int64_t at = ((j / kPanel) * blocks + b) * kPanel + j % kPanel;
        const double step = 16.0 * rough_.scale[at];
        dst[at] = step > 0.0 ? static_cast<uint8_t>(std::min(255.0, std::ceil(total * (1 + 1e-6) / step))) : 0;
      }
    s1.assign(n, 0.0f);
    s2.assign(n, 0.0f);
    m1.assign(n, 0.0f);
    m2.assign(n, 0.0f);
    auto up = [](double v) { return std::nextafter(static_cast<float>(v * (1 + 1e-6)), INFINITY); };
    for (int64_t j = 0; j < n; ++j) {
      double a = 0.0, b2 = 0.0, ma = 0.0, mb = 0.0;
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t at = ((j / kPanel) * blocks + b) * kPanel + j % kPanel;
        const double w = rough_.scale[at], wl = w * dst[at];
        a += w;
        b2 += wl;
        ma = std::max(ma, w);
        mb = std::max(mb, wl);
      }
      s1[j] = up(a);
      s2[j] = up(b2);
      m1[j] = up(ma);
      m2[j] = up(mb);
    }
  }

  // hidden [m, k] -> (argmax per row [m] int64, -1 where left to the full product; screened logits [m, n])
  std::tuple<torch::Tensor, torch::Tensor> top(const torch::Tensor& hidden_in) const {
    const torch::Tensor hidden = rows_of(hidden_in);
    const std::vector<float> a = as_multiplied(hidden);
    std::vector<float> sx;
    torch::Tensor zt = screened(a, hidden.size(0), &sx);
    return {settled(hidden, a, sx, zt, rough_.n), zt};
  }

  // hidden [m, k] -> the screened logits [m, n]: what a method drafts from, and what settle bounds
  torch::Tensor rough(const torch::Tensor& hidden_in) const {
    const torch::Tensor hidden = rows_of(hidden_in);
    return screened(as_multiplied(hidden), hidden.size(0), nullptr);
  }

  // hidden [m, k] and their screened logits z [m, >= vocab] (rough's, or its first vocab columns) ->
  // argmax per row [m] int64, -1 where left to the full product. Apart from rough: a method that
  // drafts from every row of a pass reads the exact argmax of the few rows verification walks.
  torch::Tensor settle(const torch::Tensor& hidden_in, const torch::Tensor& z_in) const {
    const torch::Tensor hidden = rows_of(hidden_in);
    const torch::Tensor zt = in_place(z_in);
    const int64_t m = hidden.size(0), k = rough_.k, blocks = k / 32;
    TORCH_CHECK(zt.dim() == 2 && zt.size(0) == m && zt.size(1) >= vocab && zt.size(1) <= rough_.n,
                "screened logits must be [rows, vocab .. n]");
    const std::vector<float> a = as_multiplied(hidden);
    std::vector<float> sx(m * blocks);  // x's int8 scales, as rough's product quantized the same rows
    std::vector<int8_t> scratch(32);
    for (int64_t r = 0; r < m; ++r)
      for (int64_t b = 0; b < blocks; ++b)
        sx[r * blocks + b] = wide ? avx512::quantize32(&a[r * k + b * 32], scratch.data())
                                  : avx2::quantize32(&a[r * k + b * 32], scratch.data());
    return settled(hidden, a, sx, zt, row_stride(zt));
  }

  // screened logits z [m, >= vocab] (rough's rows, read in place) -> (each row's likeliest column
  // [m] int64, its softmax probability over the vocabulary [m] float): how sure a row is of the token
  // a method drafts from it, without a softmax of the whole row
  std::tuple<torch::Tensor, torch::Tensor> likeliest(const torch::Tensor& z_in) const {
    const torch::Tensor zt = in_place(z_in);
    TORCH_CHECK(zt.dim() == 2 && zt.size(1) >= vocab, "screened logits must be [rows, >= vocab]");
    const int64_t m = zt.size(0), zs = row_stride(zt);
    auto index = torch::empty({m}, torch::kLong);
    auto prob = torch::empty({m}, torch::kFloat32);
    for (int64_t r = 0; r < m; ++r) {
      const auto [j, p] = wide ? avx512::likeliest(zt.data_ptr<float>() + r * zs, vocab)
                               : avx2::likeliest(zt.data_ptr<float>() + r * zs, vocab);
      index.data_ptr<int64_t>()[r] = j;
      prob.data_ptr<float>()[r] = p;
    }
    return {index, prob};
  }

 private:
  // screened logits as given: rows of a wider matrix (rough's, cut to the vocabulary) are read where
  // they lie, anything else as a float copy
  static torch::Tensor in_place(const torch::Tensor& z) {
    const bool direct = z.scalar_type() == torch::kFloat32 && z.dim() == 2 && z.stride(1) == 1 &&
                        z.stride(0) >= z.size(1);
    return direct ? z : z.to(torch::kFloat32).contiguous();
  }
  static int64_t row_stride(const torch::Tensor& z) { return z.size(0) > 1 ? z.stride(0) : z.size(1); }

  torch::Tensor rows_of(const torch::Tensor& hidden_in) const {
    const torch::Tensor hidden = hidden_in.to(torch::kFloat32).contiguous();
    TORCH_CHECK(hidden.dim() == 2 && hidden.size(1) == rough_.k, "hidden rows do not fit the head");
    return hidden;
  }

  // a [m, k] (as_multiplied) -> z [m, n] through the int8 head; sx (if given): the rows' int8 scales
  torch::Tensor screened(const std::vector<float>& a, int64_t m, std::vector<float>* sx) const {
    auto zt = torch::empty({m, rough_.n}, torch::kFloat32);
    if (m == 0) return zt;
    Rows rows;
    product(wide, rough_, rows, a.data(), m, zt.data_ptr<float>());
    if (sx) *sx = rows.scale_buf;
    return zt;
  }

  // the argmaxes of hidden [m, k] (a: as multiplied, sx: its int8 scales) from z, rows zs apart
  torch::Tensor settled(const torch::Tensor& hidden, const std::vector<float>& a, const std::vector<float>& sx,
                        const torch::Tensor& zt, int64_t zs) const {
    const int64_t m = hidden.size(0), k = rough_.k, blocks = k / 32;
    auto tops = torch::full({m}, -1, torch::kLong);
    if (m == 0) return tops;
    const float* x = hidden.data_ptr<float>();
    const float* z = zt.data_ptr<float>();
    std::vector<char> finite(m, 1);
    for (int64_t r = 0; r < m; ++r)
      for (int64_t i = 0; i < k; ++i)
        if (!std::isfinite(x[r * k + i])) finite[r] = 0;
    // the bound's per-row factors: E_j = sum_b sw_jb (alpha_b + beta_b l1_jb)
    const float u = 5.97e-8f, h = 0.5001f;
    const float fold = 32.0f * h * h + static_cast<float>(blocks + 2) * u * 32.0f * 127.0f * 127.0f;
    const float sums = static_cast<float>(k + 2) * u * 127.01f;
    std::vector<float> alpha(m * blocks), beta(m * blocks);
    for (int64_t r = 0; r < m; ++r)
      for (int64_t b = 0; b < blocks; ++b) {
        float total = 0.0f;
        for (int j = 0; j < 32; ++j) total += std::fabs(a[r * k + b * 32 + j]);
        const float s = sx[r * blocks + b];
        alpha[r * blocks + b] = (h + sums) * total * 1.0001f + fold * s;
        beta[r * blocks + b] = 16.0f * h * s;
      }
    const float* sw = rough_.scale;  // [panels, blocks, 32]
    const uint8_t* l1p = l1.data_ptr<uint8_t>();
    int64_t* out = tops.data_ptr<int64_t>();
#pragma omp parallel for schedule(static) num_threads(threads()) if (m > 1)
    for (int64_t r = 0; r < m; ++r) {
      if (!finite[r]) continue;
      std::vector<int64_t> chosen;
      const bool ok = wide ? avx512::screen_row(z + r * zs, &alpha[r * blocks], &beta[r * blocks], s1.data(), s2.data(), m1.data(), m2.data(),
                                                 sw, l1p, blocks, vocab, most, chosen)
                           : avx2::screen_row(z + r * zs, &alpha[r * blocks], &beta[r * blocks], s1.data(), s2.data(), m1.data(), m2.data(),
                                               sw, l1p, blocks, vocab, most, chosen);
      if (ok) out[r] = pick(x + r * k, chosen);
    }
    return tops;
  }

  // the rows as the exact product multiplies them (bf16-rounded for a bf16 head): [m, k]
  std::vector<float> as_multiplied(const torch::Tensor& hidden) const {
    const int64_t m = hidden.size(0), k = rough_.k;
    const float* x = hidden.data_ptr<float>();
    std::vector<float> a(m * k);
    for (int64_t i = 0; i < m * k; ++i) a[i] = exact.kind == kBF16 ? bf16_to_float(float_to_bf16(x[i])) : x[i];
    return a;
  }

  // the largest exact value among the chosen columns (ascending), the first of equals; -1 on a NaN
  int64_t pick(const float* x, const std::vector<int64_t>& chosen) const {
    Rows one;
    one.load(exact.kind, x, 1, exact.k, wide);
    std::unique_ptr<float[]> y(new float[rough_.n]);  // the chosen columns' panels written in place
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

// the screen's Python class, for lean.cpp's module
inline void bind_screen(pybind11::module& module) {
  namespace py = pybind11;
  py::class_<Screen>(module, "Screen")
      .def(py::init<const Model&, torch::Tensor, int64_t, int64_t>())
      .def("top", &Screen::top, py::call_guard<py::gil_scoped_release>())
      .def("rough", &Screen::rough, py::call_guard<py::gil_scoped_release>())
      .def("settle", &Screen::settle, py::call_guard<py::gil_scoped_release>())
      .def("likeliest", &Screen::likeliest, py::call_guard<py::gil_scoped_release>());
}
