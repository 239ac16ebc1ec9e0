// The instruction-set-specific half of lean.cpp: products, dot products and row sweeps.
//
// Included twice by lean.cpp, once per target (AVX-512 with BF16 and VNNI; AVX2 with FMA), each
// time inside a namespace of its own and a `#pragma GCC target` region, with LEAN_AVX512 set to 1
// or 0. Everything here is written so that a row's result never depends on the other rows of the
// same call: each row keeps its own accumulators and sums over k in one fixed order.
//
// Weight formats (packed by lean.cpp, the same bytes for both targets):
//   fp32  [n / 32, k, 32]            float
//   bf16  [n / 32, k / 2, 32, 2]     bf16 pairs along k (vdpbf16ps's operand order)
//   int8  [n / 32, k / 4, 32, 4]     int8 quads along k (vpdpbusd's), stored as w + 128 (vpdpbusd
//         takes its unsigned operand from the weights and broadcasts the signed activations), with
//         scales [n / 32, k / 32, 32] float per block of 32 k and output column.
// The int8 product sums each block of 32 k exactly in integers on both targets and folds it into
// float in the same order, so AVX-512 and AVX2 give the same bits there.

#if LEAN_AVX512
constexpr int kRows = 12;    // rows per sweep: 24 accumulators of 16 floats fit the 32 registers
constexpr int kRowsI8 = 16;  // int8: one accumulator of 16 columns per row (GCC spills more)
constexpr int kBothHalves = 2;  // int8 sweeps of up to this many rows take a panel's two halves at once
#else
constexpr int kRows = 6;     // 12 accumulators of 8 floats fit the 16 registers
constexpr int kRowsI8 = 6;
constexpr int kBothHalves = 2;  // fp32 and bf16 sweeps of up to this many rows take both halves of a panel at once
#endif

// ---- fp32 weights ------------------------------------------------------------------------------

template <int M>
void panel_f32(const float* x, int64_t k, const float* w, float* y, int64_t n) {
#if LEAN_AVX512
  __m512 lo[M], hi[M];
  for (int r = 0; r < M; ++r) { lo[r] = _mm512_setzero_ps(); hi[r] = _mm512_setzero_ps(); }
  for (int64_t i = 0; i < k; ++i) {
    const float* wi = w + i * kPanel;
    _mm_prefetch(reinterpret_cast<const char*>(wi + kAhead), _MM_HINT_T1);
    _mm_prefetch(reinterpret_cast<const char*>(wi + kAhead + 16), _MM_HINT_T1);
    const __m512 w0 = _mm512_loadu_ps(wi), w1 = _mm512_loadu_ps(wi + 16);
    for (int r = 0; r < M; ++r) {
      const __m512 b = _mm512_set1_ps(x[r * k + i]);
      lo[r] = _mm512_fmadd_ps(b, w0, lo[r]);
      hi[r] = _mm512_fmadd_ps(b, w1, hi[r]);
    }
  }
  for (int r = 0; r < M; ++r) { _mm512_storeu_ps(y + r * n, lo[r]); _mm512_storeu_ps(y + r * n + 16, hi[r]); }
#else
  constexpr int H = M <= kBothHalves ? 2 : 1;  // halves of the panel (16 columns each) per pass over k
  for (int h0 = 0; h0 < 2; h0 += H) {
    __m256 a[H][M], b[H][M];
    for (int h = 0; h < H; ++h)
      for (int r = 0; r < M; ++r) { a[h][r] = _mm256_setzero_ps(); b[h][r] = _mm256_setzero_ps(); }
    for (int64_t i = 0; i < k; ++i)
      for (int h = 0; h < H; ++h) {
        const float* wi = w + i * kPanel + (h0 + h) * 16;
        if (H == 1 && h0 == 0) {  // the first of two passes fetches both halves' lines
          _mm_prefetch(reinterpret_cast<const char*>(wi + kAhead), _MM_HINT_T1);
          _mm_prefetch(reinterpret_cast<const char*>(wi + kAhead + 16), _MM_HINT_T1);
        }
        const __m256 w0 = _mm256_loadu_ps(wi), w1 = _mm256_loadu_ps(wi + 8);
        for (int r = 0; r < M; ++r) {
          const __m256 xb = _mm256_set1_ps(x[r * k + i]);
          a[h][r] = _mm256_fmadd_ps(xb, w0, a[h][r]);
          b[h][r] = _mm256_fmadd_ps(xb, w1, b[h][r]);
        }
      }
    for (int h = 0; h < H; ++h)
      for (int r = 0; r < M; ++r) {
        _mm256_storeu_ps(y + r * n + (h0 + h) * 16, a[h][r]);
        _mm256_storeu_ps(y + r * n + (h0 + h) * 16 + 8, b[h][r]);
      }
  }
#endif
}

// ---- bf16 weights: x rounded to bf16 per row, products summed in float ------------------------

#if LEAN_AVX512
// How far ahead of an M-row sweep's weight stream to fetch, and into which cache: the best of 2 to
// 8 KiB into L1, L2 or non-temporal, per row count (Zen 4, weights streamed from memory). The sweep's
// pace sets how early a line must be asked for: one row runs best a page ahead into L2, two rows
// into L1, and more rows, whose arithmetic leaves the memory more time, 6 KiB ahead into L2.
template <int M> constexpr int kBf16Hint = M == 2 ? _MM_HINT_T0 : _MM_HINT_T1;
template <int M> constexpr int64_t kBf16Ahead = M <= 2 ? kAheadBf16 : kAheadBf16 * 3 / 2;
#endif

template <int M>
void panel_bf16(const uint16_t* x, int64_t k, const uint16_t* w, float* y, int64_t n) {
  const int64_t k2 = k / 2;
#if LEAN_AVX512
  __m512 lo[M], hi[M];
  for (int r = 0; r < M; ++r) { lo[r] = _mm512_setzero_ps(); hi[r] = _mm512_setzero_ps(); }
  const uint32_t* xp = reinterpret_cast<const uint32_t*>(x);  // [M, k / 2] bf16 pairs
  constexpr auto hint = static_cast<_mm_hint>(kBf16Hint<M>);
  for (int64_t i = 0; i < k2; ++i) {
    const uint16_t* wi = w + i * 2 * kPanel;
    _mm_prefetch(reinterpret_cast<const char*>(wi + kBf16Ahead<M>), hint);
    _mm_prefetch(reinterpret_cast<const char*>(wi + kBf16Ahead<M> + 32), hint);
    const __m512bh w0 = (__m512bh)_mm512_loadu_si512(wi);
    const __m512bh w1 = (__m512bh)_mm512_loadu_si512(wi + 32);
    for (int r = 0; r < M; ++r) {
      const __m512bh b = (__m512bh)_mm512_set1_epi32(static_cast<int>(xp[r * k2 + i]));
      lo[r] = _mm512_dpbf16_ps(lo[r], b, w0);
      hi[r] = _mm512_dpbf16_ps(hi[r], b, w1);
    }
  }
  for (int r = 0; r < M; ++r) { _mm512_storeu_ps(y + r * n, lo[r]); _mm512_storeu_ps(y + r * n + 16, hi[r]); }
#else
  const __m256i high = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  constexpr int H = M <= kBothHalves ? 2 : 1;  // halves of the panel (16 columns each) per pass over k
  for (int h0 = 0; h0 < 2; h0 += H) {
    __m256 a[H][M], b[H][M];
    for (int h = 0; h < H; ++h)
      for (int r = 0; r < M; ++r) { a[h][r] = _mm256_setzero_ps(); b[h][r] = _mm256_setzero_ps(); }
    for (int64_t i = 0; i < k2; ++i)
      for (int h = 0; h < H; ++h) {
        const uint16_t* wi = w + i * 2 * kPanel + (h0 + h) * 32;  // 16 columns x 2
        if (H == 1 && h0 == 0) {  // the first of two passes fetches both halves' lines
          _mm_prefetch(reinterpret_cast<const char*>(wi + kAheadBf16), _MM_HINT_T1);
          _mm_prefetch(reinterpret_cast<const char*>(wi + kAheadBf16 + 32), _MM_HINT_T1);
        }
        const __m256i p0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wi));
        const __m256i p1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wi + 16));
        const __m256 e0 = _mm256_castsi256_ps(_mm256_slli_epi32(p0, 16)), o0 = _mm256_castsi256_ps(_mm256_and_si256(p0, high));
        const __m256 e1 = _mm256_castsi256_ps(_mm256_slli_epi32(p1, 16)), o1 = _mm256_castsi256_ps(_mm256_and_si256(p1, high));
        for (int r = 0; r < M; ++r) {
          const uint16_t* xr = x + r * k + 2 * i;
          const __m256 xe = _mm256_set1_ps(bf16_to_float(xr[0])), xo = _mm256_set1_ps(bf16_to_float(xr[1]));
          a[h][r] = _mm256_fmadd_ps(xo, o0, _mm256_fmadd_ps(xe, e0, a[h][r]));
          b[h][r] = _mm256_fmadd_ps(xo, o1, _mm256_fmadd_ps(xe, e1, b[h][r]));
        }
      }
    for (int h = 0; h < H; ++h)
      for (int r = 0; r < M; ++r) {
        _mm256_storeu_ps(y + r * n + (h0 + h) * 16, a[h][r]);
        _mm256_storeu_ps(y + r * n + (h0 + h) * 16 + 8, b[h][r]);
      }
  }
#endif
}

#if LEAN_AVX512
// 13 to 16 rows in one sweep: 16 of the panel's 32 columns at a time, one accumulator per row, so
// that all rows share each weight load and the panel streams from memory at the pace of all their
// arithmetic (two sweeps of 8 rows would wait on memory in the first and not in the second). Each
// column's sum is the same chain of vdpbf16ps as in panel_bf16, so the same bits.
// x: the M rows' bf16 pairs pair by pair ([k / 2, M] 32-bit units: row r's pair i at i * M + r)
template <int M>
void panel_bf16_wide(const int32_t* x, int64_t k, const uint16_t* w, float* y, int64_t n) {
  const int64_t k2 = k / 2;
  for (int half = 0; half < 2; ++half) {
    __m512 acc[M];
    for (int r = 0; r < M; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t i = 0; i < k2; ++i) {
      const uint16_t* wi = w + i * 2 * kPanel + half * 32;  // this half's cache line of the pair
      _mm_prefetch(reinterpret_cast<const char*>(wi + kAheadWide), _MM_HINT_T1);
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(wi);
      const int32_t* xi = x + i * M;
      for (int r = 0; r < M; ++r) acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_set1_epi32(xi[r]), wv);
    }
    for (int r = 0; r < M; ++r) _mm512_storeu_ps(y + r * n + half * 16, acc[r]);
  }
}
#endif

// ---- int8 weights: x quantized per row and block of 32, exact integer sums per block ------------

// Each block of 32 k is summed exactly in int32, then folded into float as (sum * x's scale) *
// w's scale, the same operations in the same order on both targets (so the same bits).
// x: the M rows' int8 values quad by quad ([k / 4, M] int32: row r's quad i at i * M + r), so that
// every row's operand is one base pointer and a constant offset
template <int M>
void panel_i8(const int32_t* x, const float* xs, const int32_t* xz, int64_t k, const uint8_t* w, const float* ws,
              float* y, int64_t n) {
  const int64_t blocks = k / 32;
#if LEAN_AVX512
  // 16 of the panel's 32 columns at a time, one accumulator per row: M rows share each weight load,
  // and x's quads come as broadcast operands of vpdpbusd (weights unsigned, x signed); the weights'
  // +128 is taken back by starting each block's sum at -128 * (x's block sum). Up to kBothHalves
  // rows take both halves at once instead: a few rows wait on memory, which then streams whole
  // lines in order (each column's operations the same, so the same bits).
  if constexpr (M <= kBothHalves) {
    alignas(64) float acc[2][M][16];
    for (int h = 0; h < 2; ++h)
      for (int r = 0; r < M; ++r) _mm512_store_ps(acc[h][r], _mm512_setzero_ps());
    for (int64_t blk = 0; blk < blocks; ++blk) {
      __m512i s0[M], s1[M];
      for (int r = 0; r < M; ++r) s0[r] = s1[r] = _mm512_set1_epi32(xz[r * blocks + blk]);
      for (int64_t t = 0; t < 8; ++t) {
        const int64_t i = blk * 8 + t;
        const uint8_t* wi = w + i * 4 * kPanel;
        _mm_prefetch(reinterpret_cast<const char*>(wi + 4 * kAhead), _MM_HINT_T1);
        _mm_prefetch(reinterpret_cast<const char*>(wi + 4 * kAhead + 64), _MM_HINT_T1);
        const __m512i w0 = _mm512_loadu_si512(wi), w1 = _mm512_loadu_si512(wi + 64);
        const int32_t* xi = x + i * M;
#pragma GCC unroll 32
        for (int r = 0; r < M; ++r) {
          asm("vpdpbusd %[x]%{1to16%}, %[w], %[acc]" : [acc] "+v"(s0[r]) : [w] "v"(w0), [x] "m"(xi[r]));
          asm("vpdpbusd %[x]%{1to16%}, %[w], %[acc]" : [acc] "+v"(s1[r]) : [w] "v"(w1), [x] "m"(xi[r]));
        }
      }
      const __m512 sc0 = _mm512_loadu_ps(ws + blk * kPanel), sc1 = _mm512_loadu_ps(ws + blk * kPanel + 16);
      for (int r = 0; r < M; ++r) {
        const __m512 xsr = _mm512_set1_ps(xs[r * blocks + blk]);
        const __m512 f0 = _mm512_mul_ps(_mm512_cvtepi32_ps(s0[r]), xsr), f1 = _mm512_mul_ps(_mm512_cvtepi32_ps(s1[r]), xsr);
        _mm512_store_ps(acc[0][r], _mm512_fmadd_ps(f0, sc0, _mm512_load_ps(acc[0][r])));
        _mm512_store_ps(acc[1][r], _mm512_fmadd_ps(f1, sc1, _mm512_load_ps(acc[1][r])));
      }
    }
    for (int h = 0; h < 2; ++h)
      for (int r = 0; r < M; ++r) _mm512_storeu_ps(y + r * n + h * 16, _mm512_load_ps(acc[h][r]));
    return;
  }
  for (int half = 0; half < 2; ++half) {
    alignas(64) float acc[M][16];
    for (int r = 0; r < M; ++r) _mm512_store_ps(acc[r], _mm512_setzero_ps());
    for (int64_t blk = 0; blk < blocks; ++blk) {
      __m512i s[M];
      for (int r = 0; r < M; ++r) s[r] = _mm512_set1_epi32(xz[r * blocks + blk]);
      for (int64_t t = 0; t < 8; ++t) {
        const int64_t i = blk * 8 + t;  // quad index along k
        const uint8_t* wi = w + i * 4 * kPanel + half * 64;
        _mm_prefetch(reinterpret_cast<const char*>(wi + 4 * kAhead), _MM_HINT_T1);
        const __m512i wv = _mm512_loadu_si512(wi);
        const int32_t* xi = x + i * M;
        // written out: the compiler neither folds the broadcast into vpdpbusd nor keeps the
        // accumulators in place through the intrinsic (two register moves per row and quad)
#pragma GCC unroll 32
        for (int r = 0; r < M; ++r)
          asm("vpdpbusd %[x]%{1to16%}, %[w], %[acc]" : [acc] "+v"(s[r]) : [w] "v"(wv), [x] "m"(xi[r]));
      }
      const __m512 sc = _mm512_loadu_ps(ws + blk * kPanel + half * 16);
      for (int r = 0; r < M; ++r) {
        const __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(s[r]), _mm512_set1_ps(xs[r * blocks + blk]));
        _mm512_store_ps(acc[r], _mm512_fmadd_ps(f, sc, _mm512_load_ps(acc[r])));
      }
    }
    for (int r = 0; r < M; ++r) _mm512_storeu_ps(y + r * n + half * 16, _mm512_load_ps(acc[r]));
  }
#else
  alignas(64) float acc[M][kPanel];
  for (int r = 0; r < M; ++r) for (int c = 0; c < kPanel; ++c) acc[r][c] = 0.0f;
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));  // stored w + 128 -> w
  for (int64_t blk = 0; blk < blocks; ++blk) {
    for (int q = 0; q < 4; ++q) {  // 8 of the panel's 32 columns at a time
      __m256i s[M];
      for (int r = 0; r < M; ++r) s[r] = _mm256_setzero_si256();
      for (int64_t t = 0; t < 8; ++t) {
        const int64_t i = blk * 8 + t;
        const __m256i wq = _mm256_xor_si256(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i * 4 * kPanel + q * 32)), flip);
        for (int r = 0; r < M; ++r) {
          const __m256i xb = _mm256_set1_epi32(x[i * M + r]);
          // |x| * (w * sign x): at most 127 * 127 * 2 per pair, no int16 saturation; exact sums
          const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(xb, xb), _mm256_sign_epi8(wq, xb));
          s[r] = _mm256_add_epi32(s[r], _mm256_madd_epi16(p, ones));
        }
      }
      const __m256 sc = _mm256_loadu_ps(ws + blk * kPanel + q * 8);
      for (int r = 0; r < M; ++r) {
        const __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(s[r]), _mm256_set1_ps(xs[r * blocks + blk]));
        _mm256_store_ps(acc[r] + q * 8, _mm256_fmadd_ps(f, sc, _mm256_load_ps(acc[r] + q * 8)));
      }
    }
  }
  for (int r = 0; r < M; ++r) std::memcpy(y + r * n, acc[r], kPanel * sizeof(float));
  (void)xz;  // the AVX2 sums take signed weights (no +128 to take back)
#endif
}

// ---- sweeps: every panel of a weight for all rows, split between threads ------------------------

// one panel (32 output columns) for the M rows from row0
template <int M>
void one_panel(const Weight& W, const Rows& x, int64_t row0, int64_t p, float* y) {
  const int64_t k = W.k, n = W.n, blocks = k / 32;
  float* yp = y + row0 * n + p * kPanel;
  if (W.kind == kF32) {
    if constexpr (M <= kRows) panel_f32<M>(x.f32 + row0 * k, k, W.f32 + p * k * kPanel, yp, n);
  } else if (W.kind == kBF16) {
    if constexpr (M <= kRows) panel_bf16<M>(x.bf16 + row0 * k, k, W.bf16 + p * k * kPanel, yp, n);
  } else {
    panel_i8<M>(x.quads + row0 * k / 4, x.scale + row0 * blocks, x.zero + row0 * blocks, k, W.u8 + p * k * kPanel,
                W.scale + p * blocks * kPanel, yp, n);
  }
}

using Panel = void (*)(const Weight&, const Rows&, int64_t, int64_t, float*);

template <int... Ms>
constexpr std::array<Panel, sizeof...(Ms)> panels(std::integer_sequence<int, Ms...>) {
  return {one_panel<Ms + 1>...};
}

// y [m, n] = x [m, k] @ W^T. The rows go in sweeps of nearly equal size (17 rows at 12 -> 8 + 9;
// int8 takes more rows per sweep on AVX-512: one accumulator per row and 16 columns, and so does
// bf16 from 13 to 16 rows); every sweep runs on a panel while it is in cache, so the weights are
// read from memory once per product.
void product(const Weight& W, Rows& x, int64_t m, float* y) {
  static constexpr auto table = panels(std::make_integer_sequence<int, kRowsI8>{});
  const int64_t most = W.kind == kI8 ? kRowsI8 : kRows;
  const int64_t count = (m + most - 1) / most, quads = W.k / 4;
  std::vector<int64_t> first(count), size(count);
  for (int64_t s = 0, done = 0; s < count; ++s) {
    size[s] = (m - done) / (count - s);
    first[s] = done;
    done += size[s];
  }
#if LEAN_AVX512
  if (W.kind == kBF16 && m > kRows && m <= 16) {  // one sweep of 16 columns at a time (panel_bf16_wide)
    const int64_t pairs = W.k / 2;
    x.quad_buf.resize(m * pairs);
    const int32_t* src = reinterpret_cast<const int32_t*>(x.bf16);
    for (int64_t i = 0; i < pairs; ++i)
      for (int64_t r = 0; r < m; ++r) x.quad_buf[i * m + r] = src[r * pairs + i];
    using Wide = void (*)(const int32_t*, int64_t, const uint16_t*, float*, int64_t);
    static constexpr Wide wide[] = {panel_bf16_wide<13>, panel_bf16_wide<14>, panel_bf16_wide<15>,
                                    panel_bf16_wide<16>};
    const Wide run = wide[m - 13];
    const int64_t panels = W.n / kPanel;
#pragma omp parallel for schedule(static) num_threads(threads())
    for (int64_t p = 0; p < panels; ++p) run(x.quad_buf.data(), W.k, W.bf16 + p * W.k * kPanel, y + p * kPanel, W.n);
    return;
  }
#endif
  if (W.kind == kI8) {  // each sweep's rows interleaved quad by quad (panel_i8's x)
    x.quad_buf.resize(m * quads);
    const int32_t* src = reinterpret_cast<const int32_t*>(x.i8);
#pragma omp parallel for schedule(static) num_threads(threads()) if (count > 1)
    for (int64_t s = 0; s < count; ++s) {
      int32_t* dst = x.quad_buf.data() + first[s] * quads;
      for (int64_t i = 0; i < quads; ++i)
        for (int64_t r = 0; r < size[s]; ++r) dst[i * size[s] + r] = src[(first[s] + r) * quads + i];
    }
    x.quads = x.quad_buf.data();
  }
  const int64_t panels = W.n / kPanel;
#pragma omp parallel for schedule(static) num_threads(threads())
  for (int64_t p = 0; p < panels; ++p)
    for (int64_t s = 0; s < count; ++s) table[size[s] - 1](W, x, first[s], p, y);
}

// ---- attention ---------------------------------------------------------------------------------

#if LEAN_AVX512
constexpr int64_t kLanes = 16;
using vf = __m512;
inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
inline vf vload(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
inline void vstore(float* p, vf v) { _mm512_storeu_ps(p, v); }
inline vf vset(float a) { return _mm512_set1_ps(a); }
inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
inline vf vmin(vf a, vf b) { return _mm512_min_ps(a, b); }
inline float vsum(vf v) { return _mm512_reduce_add_ps(v); }
inline vf vclamp(vf x, float lo, float hi) { return _mm512_min_ps(_mm512_max_ps(x, vset(lo)), vset(hi)); }
inline vf vround(vf x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline vf vpow2(vf p, vf n) { return _mm512_scalef_ps(p, n); }  // p * 2^n
#else
constexpr int64_t kLanes = 8;
using vf = __m256;
inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
inline vf vload(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline void vstore(float* p, vf v) { _mm256_storeu_ps(p, v); }
inline vf vset(float a) { return _mm256_set1_ps(a); }
inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm256_sub_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
inline vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
inline vf vmin(vf a, vf b) { return _mm256_min_ps(a, b); }
inline float vsum(vf v) {
  const __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 q = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(q, _mm_shuffle_ps(q, q, 1)));
}
inline vf vclamp(vf x, float lo, float hi) { return _mm256_min_ps(_mm256_max_ps(x, vset(lo)), vset(hi)); }
inline vf vround(vf x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline vf vpow2(vf p, vf n) {  // p * 2^n, n an integer in [-126, 127]
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
#endif

// the first n (< kLanes) values at p, the other lanes 0, reading nothing past p + n
#if LEAN_AVX512
inline vf vload_part(const float* p, int64_t n) { return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p); }
inline vf vload_part(const uint16_t* p, int64_t n) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << n) - 1), p));
}
#else
template <typename T>
inline vf vload_part(const T* p, int64_t n) {
  alignas(32) T tmp[kLanes] = {};
  for (int64_t j = 0; j < n; ++j) tmp[j] = p[j];
  return vload(tmp);
}
#endif


// e^x, about 1 ulp; x clamped to [-87, 88] (below: a weight of about 1.6e-38)
inline vf vexp(vf x) {
  x = vclamp(x, -87.0f, 88.0f);
  const vf n = vround(vmul(x, vset(1.44269504088896341f)));
  vf r = vfma(n, vset(-0.693359375f), x);  // x - n ln 2 in two steps
  r = vfma(n, vset(2.12194440e-4f), r);
  vf p = vset(1.0f / 720);
  for (const float c : {1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) p = vfma(p, r, vset(c));
  return vpow2(p, n);
}

#include "lean_attention.h"  // NOLINT: once per target, inside its namespace

// ---- per-row elementwise work, vectorized (each element on its own: rows stay independent) ------

// mid [q, I] = silu(gate) * up from gu [q, 2 I] (gate columns first)
void silu_mul(const float* gu, int64_t q, int64_t inter, float* mid) {
  const vf one = vset(1.0f);
#pragma omp parallel for schedule(static) num_threads(threads()) if (q >= kSpread)
  for (int64_t i = 0; i < q; ++i) {
    const float* g = gu + i * 2 * inter;
    const float* u = g + inter;
    float* o = mid + i * inter;
    int64_t j = 0;
    for (; j + kLanes <= inter; j += kLanes) {
      const vf gv = vload(g + j);
      const vf e = vexp(vsub(vzero(), gv));
#if LEAN_AVX512
      vstore(o + j, vmul(_mm512_div_ps(gv, vadd(one, e)), vload(u + j)));
#else
      vstore(o + j, vmul(_mm256_div_ps(gv, vadd(one, e)), vload(u + j)));
#endif
    }
    for (; j < inter; ++j) o[j] = g[j] / (1.0f + std::exp(-g[j])) * u[j];
  }
}

// x [n] float -> bf16, round to nearest even (the scalar float_to_bf16's bits for finite x)
void to_bf16(const float* x, int64_t n, uint16_t* out) {
  int64_t i = 0;
#if LEAN_AVX512
  for (; i + 16 <= n; i += 16) {
    const __m512i u = _mm512_castps_si512(_mm512_loadu_ps(x + i));
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), odd), 16);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm512_cvtepi32_epi16(r));
  }
#else
  for (; i + 8 <= n; i += 8) {
    const __m256i u = _mm256_castps_si256(_mm256_loadu_ps(x + i));
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), odd), 16);
    const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), packed);
  }
#endif
  for (; i < n; ++i) out[i] = float_to_bf16(x[i]);
}

// x [32] -> int8 [32] and its scale: max |x| / 127, each value rounded to nearest even of x / scale
float quantize32(const float* x, int8_t* out) {
  vf top = vzero();
  for (int j = 0; j < 32; j += kLanes) {
    const vf v = vload(x + j);
    top = vmax(top, vmax(v, vsub(vzero(), v)));
  }
  alignas(64) float lanes[kLanes];
  vstore(lanes, top);
  float t = 0.0f;
  for (int j = 0; j < kLanes; ++j) t = std::max(t, lanes[j]);
  const float s = t / 127.0f;
  const vf inv = vset(s > 0.0f ? 1.0f / s : 0.0f);
  alignas(64) float scaled[32];
  for (int j = 0; j < 32; j += kLanes) {
#if LEAN_AVX512
    vstore(scaled + j, _mm512_roundscale_ps(vmul(vload(x + j), inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#else
    vstore(scaled + j, _mm256_round_ps(vmul(vload(x + j), inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
  }
  for (int j = 0; j < 32; ++j) out[j] = static_cast<int8_t>(std::max(-127.0f, std::min(127.0f, scaled[j])));
  return s;
}

#include "lean_isa_screen.h"  // NOLINT: once per target, inside its namespace
