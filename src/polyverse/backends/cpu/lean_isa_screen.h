// The instruction-set-specific half of the head's screen (lean_screen.h): bounds, candidates and
// the likeliest column of a screened row, vectorised.
//
// Included at the end of lean_isa.h, once per target inside its namespace (after its vector
// helpers), so it has no include guard.

// ---- the head's screen (lean_screen.h): its bounds and candidates, vectorised -------------------

#if LEAN_AVX512
inline vf vabs(vf v) { return _mm512_abs_ps(v); }
inline bool vany_ge(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ) != 0; }
inline float vmax_all(vf v) { return _mm512_reduce_max_ps(v); }
#else
inline vf vabs(vf v) { return _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff))); }
inline bool vany_ge(vf a, vf b) { return _mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GE_OQ)) != 0; }
inline float vmax_all(vf v) {
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  float top = t[0];
  for (int i = 1; i < 8; ++i) top = std::max(top, t[i]);
  return top;
}
#endif

// z [n] -> (the column of its first largest value, that value); a value that is not a number is
// passed over (vmax keeps the running maximum's lane where the loaded one is NaN)
inline std::pair<int64_t, float> first_largest(const float* z, int64_t n) {
  const int64_t whole = n / kLanes * kLanes;
  vf top = vset(-INFINITY);
  for (int64_t j = 0; j < whole; j += kLanes) top = vmax(vload(z + j), top);
  float zmax = vmax_all(top);
  for (int64_t j = whole; j < n; ++j) zmax = std::max(zmax, z[j]);
  int64_t first = 0;
  const vf zm = vset(zmax);
  while (first < whole && !vany_ge(vload(z + first), zm)) first += kLanes;
  while (first < n - 1 && !(z[first] >= zmax)) ++first;
  return {first, zmax};
}

// Column j's bound E_j = 1.001 sum_b sw_jb (alpha_b + beta_b l1_jb) (+ 1e-30) for one row
inline float screen_bound(int64_t j, const float* alpha, const float* beta, const float* sw, const uint8_t* l1,
                          int64_t blocks) {
  const int64_t p = j / kPanel, c = j % kPanel;
  float e = 0.0f;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t at = (p * blocks + b) * kPanel + c;
    e = std::fma(sw[at], std::fma(beta[b], static_cast<float>(l1[at]), alpha[b]), e);
  }
  return std::fma(e, 1.001f, 1e-30f);
}

// One row's candidates (ascending in ``out``): the columns j < vocab whose screened value z_j plus
// its bound E_j reaches the largest z_i - E_i, a lower bound of the row's largest exact value
// (every exact value lies within its bound). E_j is computed only where a looser bound (the row's
// largest alpha_b and beta_b times the column's s1, s2) lets the column reach; the lower bound
// starts at the column of the largest z and rises with every column bounded. false: more
// candidates than ``most``, or values that are not numbers (the full product decides).
bool screen_row(const float* z, const float* alpha, const float* beta, const float* s1, const float* s2,
                const float* m1, const float* m2, const float* sw, const uint8_t* l1, int64_t blocks, int64_t vocab, int64_t most,
                std::vector<int64_t>& out) {
  float amax = 0.0f, bmax = 0.0f, asum = 0.0f, bsum = 0.0f;
  for (int64_t b = 0; b < blocks; ++b) {
    amax = std::max(amax, alpha[b]);
    bmax = std::max(bmax, beta[b]);
    asum += alpha[b];
    bsum += beta[b];
  }
  asum *= 1.0001f;  // above the float sums' rounding
  bsum *= 1.0001f;
  const auto [first, zmax] = first_largest(z, vocab);  // the first column of the largest z
  float lower = z[first] - screen_bound(first, alpha, beta, sw, l1, blocks);
  if (!std::isfinite(lower)) return false;
  std::vector<std::pair<int64_t, float>> near;  // (column, E_j) of the columns the looser bound keeps
  const vf am = vset(amax), bm = vset(bmax), as = vset(asum), bs = vset(bsum);
  auto consider = [&](int64_t j) {
    const float e = screen_bound(j, alpha, beta, sw, l1, blocks);
    near.emplace_back(j, e);
    lower = std::max(lower, z[j] - e);
  };
  for (int64_t j0 = 0; j0 < vocab; j0 += kLanes) {
    if (j0 + kLanes <= vocab) {
      const vf zz = vload(z + j0);
      const vf loose = vadd(vmul(vadd(vmin(vmul(am, vload(s1 + j0)), vmul(as, vload(m1 + j0))),
                                 vmin(vmul(bm, vload(s2 + j0)), vmul(bs, vload(m2 + j0)))), vset(1.00101f)), vset(1e-30f));
      const vf t = vadd(vadd(zz, vmul(loose, vset(1.0001f))), vadd(vmul(vabs(zz), vset(2e-6f)), vset(2e-6f * std::fabs(lower))));
      if (!vany_ge(t, vset(lower))) continue;
    }
    for (int64_t j = j0; j < std::min(vocab, j0 + kLanes); ++j) {
      const float loose = (std::min(amax * s1[j], asum * m1[j]) + std::min(bmax * s2[j], bsum * m2[j])) * 1.00101f + 1e-30f;
      if (z[j] + loose * 1.0001f + 2e-6f * (std::fabs(z[j]) + std::fabs(lower)) >= lower) consider(j);
    }
    if (static_cast<int64_t>(near.size()) > 8 * most) return false;
  }
  for (const auto& [j, e] : near)
    if (z[j] + e + 1e-6f * (std::fabs(z[j]) + std::fabs(lower)) >= lower) {
      out.push_back(j);
      if (static_cast<int64_t>(out.size()) > most) return false;
    }
  return true;
}

// One row z [n]: the column of its first largest value and that value's softmax probability,
// 1 / sum_j e^(z_j - max) (lane sums, then the lanes; a value that is not a number is passed over)
inline std::pair<int64_t, float> likeliest(const float* z, int64_t n) {
  const auto [first, zmax] = first_largest(z, n);
  const int64_t whole = n / kLanes * kLanes;
  const vf shift = vset(zmax);
  vf total = vzero();
  for (int64_t j = 0; j < whole; j += kLanes) total = vadd(total, vexp(vsub(vload(z + j), shift)));
  float sum = vsum(total);
  for (int64_t j = whole; j < n; ++j) sum += std::exp(std::max(-87.0f, z[j] - zmax));  // NaN: -87
  return {first, 1.0f / sum};
}

