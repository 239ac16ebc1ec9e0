// A lean Llama-family forward pass for CPU decoding: one call per pass, products on packed
// fp32, bf16 or int8 weights streamed once for all rows of the pass.
//
// A transformers pass of a small model spends much of its time outside the products (Python,
// module calls, cache bookkeeping); this file runs the whole decoder (embedding, RMS norms, the
// fused q/k/v product, rotary positions, the KV cache write, attention over the cache under the
// pass's visibility mask, the output product, the fused gate/up product, SiLU, the down product)
// in C++, and the LM head on the rows asked for.
//
// Every row is computed on its own: products keep per-row accumulators and sum over k in a fixed
// order, attention visits the cells a row sees in cache order, norms sum in order. A row's hidden
// state and logits are the same bits whatever other rows share the pass, so a method's draft
// tokens are verified against exactly what a 1-token pass computes.
//
// The instruction-set part (lean_isa.h) is compiled twice, for AVX-512 (with BF16 and VNNI) and
// for AVX2 + FMA; the caller picks one per model (`isa`), the AVX-512 one only where the CPU has it.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <array>
#include <memory>
#include <cmath>
#include <cstring>
#include <mutex>
#include <sys/mman.h>
#include <utility>
#include <vector>

namespace lean {

constexpr int64_t kPanel = 32;    // output columns per packed panel
constexpr int64_t kAhead = 8192;  // elements prefetched ahead of the weight stream (fp32: 32 KiB)
constexpr int64_t kAheadBf16 = 2048;  // bf16 elements ahead (4 KiB: a page; measured best of 2 to 32 KiB for one row)
constexpr int64_t kAheadWide = 4096;  // bf16 elements ahead of a 16-column sweep (8 KiB: its half-line stream escapes the hardware prefetcher)
enum Kind { kF32 = 0, kBF16 = 1, kI8 = 2 };
constexpr int64_t kSpread = 8;    // rows from which per-row work (norms, conversions) is split between threads
constexpr int64_t kTile = 16;     // cells per key tile (the cache's capacity is a multiple of it; lean.KEY_TILE)
constexpr int64_t kValuesAhead = 32;  // cells prefetched ahead of attention's value stream

inline int threads() { return std::max(1, at::get_num_threads()); }

inline uint16_t float_to_bf16(float f) {  // round to nearest even (NaN kept quiet)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float bf16_to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// A packed weight [n, k]: its panels and, for int8, per-block scales.
struct Weight {
  int kind = kF32;
  int64_t n = 0, k = 0;
  torch::Tensor data, scales, bias;  // kept alive; the pointers below point into them
  const float* f32 = nullptr;
  const uint16_t* bf16 = nullptr;
  const uint8_t* u8 = nullptr;  // int8 weights + 128
  const float* scale = nullptr;
  const float* b = nullptr;  // bias [n] or null
};

// A pass's activations for one product, in the weight's kind: x [m, k] as fp32, bf16 or int8
// with one scale per row and block of 32 (and -128 times the block's sum, which takes back the
// weights' stored +128).
struct Rows {
  const float* f32 = nullptr;
  const uint16_t* bf16 = nullptr;
  const int8_t* i8 = nullptr;
  const float* scale = nullptr;
  const int32_t* zero = nullptr;
  const int32_t* quads = nullptr;  // int8 quads (or bf16 pairs) rearranged per sweep by the product
  std::vector<uint16_t> bf16_buf;
  std::vector<int8_t> i8_buf;
  std::vector<float> scale_buf;
  std::vector<int32_t> zero_buf, quad_buf;

  void load(int kind, const float* x, int64_t m, int64_t k, bool wide);
};

}  // namespace lean

// ---- the two instruction sets ------------------------------------------------------------------

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx512vnni,fma,f16c")
namespace lean::avx512 {
#define LEAN_AVX512 1
#include "lean_isa.h"
#undef LEAN_AVX512
}  // namespace lean::avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace lean::avx2 {
#define LEAN_AVX512 0
#include "lean_isa.h"
#undef LEAN_AVX512
}  // namespace lean::avx2
#pragma GCC pop_options

namespace lean {

void Rows::load(int kind, const float* x, int64_t m, int64_t k, bool wide) {
  f32 = x;
  if (kind == kBF16) {
    bf16_buf.resize(m * k);
    uint16_t* out = bf16_buf.data();
#pragma omp parallel for schedule(static) num_threads(threads()) if (m >= kSpread)
    for (int64_t r = 0; r < m; ++r) {
      if (wide) avx512::to_bf16(x + r * k, k, out + r * k);
      else avx2::to_bf16(x + r * k, k, out + r * k);
    }
    bf16 = bf16_buf.data();
  } else if (kind == kI8) {
    const int64_t blocks = k / 32;
    i8_buf.resize(m * k);
    scale_buf.resize(m * blocks);
    zero_buf.resize(m * blocks);
#pragma omp parallel for schedule(static) num_threads(threads()) if (m >= kSpread)
    for (int64_t r = 0; r < m; ++r)
      for (int64_t blk = 0; blk < blocks; ++blk) {
        const float* xb = x + r * k + blk * 32;
        int8_t* out = i8_buf.data() + r * k + blk * 32;
        if (!wide) {
          scale_buf[r * blocks + blk] = avx2::quantize32(xb, out);
          continue;
        }
        scale_buf[r * blocks + blk] = avx512::quantize32(xb, out);
        int32_t total = 0;  // the AVX-512 sums start at -128 times it (its weights are stored + 128)
        for (int j = 0; j < 32; ++j) total += out[j];
        zero_buf[r * blocks + blk] = -128 * total;
      }
    i8 = i8_buf.data();
    scale = scale_buf.data();
    zero = zero_buf.data();
  }
}

#include "lean_pack.h"

// y [m, n] = x [m, k] @ W^T (+ bias) on the chosen instruction set
void product(bool wide, const Weight& W, Rows& rows, const float* x, int64_t m, float* y) {
  rows.load(W.kind, x, m, W.k, wide);
  if (wide) avx512::product(W, rows, m, y);
  else avx2::product(W, rows, m, y);
  if (W.b)
    for (int64_t r = 0; r < m; ++r)
      for (int64_t j = 0; j < W.n; ++j) y[r * W.n + j] += W.b[j];
}

// ---- the model -----------------------------------------------------------------------------------

// float -> IEEE half bits, round to nearest even (the cache of bf16 and int8 passes)
inline uint16_t half_of(float x) { return c10::Half(x).x; }

#include "lean_segments.h"

struct Layer {
  torch::Tensor norm1, norm2;  // [H]
  Weight qkv, o, gate_up, down;
};

class Model {
 public:
  Model(int64_t hidden, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t inter, double eps,
        double rope_scaling, torch::Tensor inv_freq, torch::Tensor embed, torch::Tensor final_norm, bool wide)
      : H_(hidden), Hq_(heads), Hkv_(kv_heads), D_(head_dim), I_(inter), eps_(static_cast<float>(eps)),
        rope_scaling_(static_cast<float>(rope_scaling)), wide_(wide) {
    TORCH_CHECK(D_ % 16 == 0, "head_dim must be a multiple of 16");
    TORCH_CHECK(Hq_ % Hkv_ == 0, "query heads must be a multiple of key/value heads");
    inv_freq_ = inv_freq.detach().to(torch::kFloat32).contiguous();
    TORCH_CHECK(inv_freq_.numel() == D_ / 2, "inv_freq must have head_dim / 2 entries");
    embed_ = embed.detach().to(torch::kFloat32).contiguous();
    final_norm_ = final_norm.detach().to(torch::kFloat32).contiguous();
  }

  void add_layer(torch::Tensor norm1, torch::Tensor norm2, torch::Tensor wqkv, c10::optional<torch::Tensor> bqkv,
                 torch::Tensor wo, torch::Tensor wgu, torch::Tensor wdown, int kind) {
    Layer L;
    L.norm1 = norm1.detach().to(torch::kFloat32).contiguous();
    L.norm2 = norm2.detach().to(torch::kFloat32).contiguous();
    L.qkv = pack(wqkv, kind, bqkv);
    L.o = pack(wo, kind, c10::nullopt);
    L.gate_up = pack(wgu, kind, c10::nullopt);
    L.down = pack(wdown, kind, c10::nullopt);
    TORCH_CHECK(L.qkv.n == (Hq_ + 2 * Hkv_) * D_ && L.qkv.k == H_, "q/k/v weight does not fit the config");
    TORCH_CHECK(L.gate_up.n == 2 * I_ && L.down.k == I_ && L.down.n == H_ && L.o.n == H_, "weights do not fit the config");
    layers_.push_back(std::move(L));
  }

  void set_head(torch::Tensor w, int kind) { head_ = pack(w, kind, c10::nullopt); }

  int64_t layers() const { return static_cast<int64_t>(layers_.size()); }
  bool wide() const { return wide_; }
  const Weight& head() const { return head_; }

  // ids [q] int64, pos [q] int64, visible [q, past + q] bool (undefined: a causal chain after the
  // cache), kcache [L, Hkv, capacity / kTile, D, kTile] (keys in tiles of cells, each transposed)
  // and vcache [L, Hkv, capacity, D] float32 or float16 with capacity >= past + q, cell_pos
  // [capacity] int64 (each cell's position; the pass writes its own) -> hidden [q, H] after the
  // final norm; the pass's keys and values are written at cells past .. past + q - 1.
  torch::Tensor forward(const torch::Tensor& ids, const torch::Tensor& pos, const c10::optional<torch::Tensor>& visible,
                        torch::Tensor kcache, torch::Tensor vcache, torch::Tensor cell_pos, int64_t past) {
    return forward_many(ids, pos, {visible}, {kcache}, {vcache}, {cell_pos}, {past}, {ids.numel()});
  }

  // Several requests in one pass: segment s holds rows [sum of counts before s, + counts[s]) of ids
  // and pos, reads and writes its own cache (visible[s], kcache[s], vcache[s], cell_pos[s], past[s]
  // as in forward). The products stream each weight once for the rows of every segment; a row's
  // arithmetic is the same whatever its batch mates (products sum each row alone, attention reads
  // its own segment's cells only). -> hidden [sum of counts, H]
  torch::Tensor forward_many(const torch::Tensor& ids, const torch::Tensor& pos,
                             const std::vector<c10::optional<torch::Tensor>>& visible,
                             const std::vector<torch::Tensor>& kcache, const std::vector<torch::Tensor>& vcache,
                             const std::vector<torch::Tensor>& cell_pos, const std::vector<int64_t>& past,
                             const std::vector<int64_t>& counts) {
    TORCH_CHECK(!layers_.empty(), "the model has no layers");
    const int64_t S = static_cast<int64_t>(counts.size());
    TORCH_CHECK(S > 0 && static_cast<int64_t>(visible.size()) == S && static_cast<int64_t>(kcache.size()) == S &&
                static_cast<int64_t>(vcache.size()) == S && static_cast<int64_t>(cell_pos.size()) == S &&
                static_cast<int64_t>(past.size()) == S, "one visibility, cache, positions and past per segment");
    const int64_t q = ids.numel();
    TORCH_CHECK(pos.numel() == q, "positions do not fit the ids");
    TORCH_CHECK(ids.scalar_type() == torch::kLong && pos.scalar_type() == torch::kLong, "ids and positions are int64");
    const int64_t* idp = ids.data_ptr<int64_t>();
    const int64_t* pp = pos.data_ptr<int64_t>();
    const int64_t V = embed_.size(0), QKV = (Hq_ + 2 * Hkv_) * D_;
    for (int64_t i = 0; i < q; ++i) TORCH_CHECK(idp[i] >= 0 && idp[i] < V, "token id out of range");

    std::vector<Segment> seg(S);
    std::vector<torch::Tensor> vis_keep(S);
    int64_t row = 0, most = 0;
    for (int64_t s = 0; s < S; ++s) {
      Segment& g = seg[s];
      g.first = row;
      g.q = counts[s];
      g.past = past[s];
      row += g.q;
      const int64_t cells = g.past + g.q;
      const torch::Tensor& k = kcache[s];
      const torch::Tensor& v = vcache[s];
      g.cap = v.size(2);
      TORCH_CHECK(g.q >= 0 && g.past >= 0, "negative segment size");
      TORCH_CHECK((k.scalar_type() == torch::kFloat32 || k.scalar_type() == torch::kHalf) &&
                  v.scalar_type() == k.scalar_type() && k.is_contiguous() && v.is_contiguous(),
                  "the cache must be contiguous float32 or float16 keys and values");
      TORCH_CHECK(k.dim() == 5 && k.size(0) == layers() && k.size(1) == Hkv_ && k.size(2) * kTile == g.cap &&
                  k.size(3) == D_ && k.size(4) == kTile &&
                  v.size(0) == layers() && v.size(1) == Hkv_ && v.size(3) == D_ && g.cap >= cells,
                  "cache does not fit the pass");
      TORCH_CHECK(cell_pos[s].scalar_type() == torch::kLong && cell_pos[s].is_contiguous() && cell_pos[s].numel() >= cells,
                  "cell positions must be int64 [capacity]");
      g.half = k.scalar_type() == torch::kHalf;
      g.K = k.data_ptr();
      g.V = v.data_ptr();
      g.cp = cell_pos[s].data_ptr<int64_t>();
      if (visible[s].has_value() && visible[s]->defined()) {
        vis_keep[s] = visible[s]->to(torch::kBool).contiguous();
        TORCH_CHECK(vis_keep[s].size(0) == g.q && vis_keep[s].size(1) == cells, "visibility mask must be [q, past + q]");
        g.vis = reinterpret_cast<const uint8_t*>(vis_keep[s].data_ptr<bool>());
      }
      for (int64_t i = 0; i < g.q; ++i) g.cp[g.past + i] = pp[g.first + i];  // the pass's cells, for attention's order
      most = std::max(most, cells);
    }
    TORCH_CHECK(row == q, "segment sizes do not add up to the ids");
    std::vector<int64_t> row_seg(q);
    for (int64_t s = 0; s < S; ++s)
      for (int64_t i = 0; i < seg[s].q; ++i) row_seg[seg[s].first + i] = s;

    auto out = torch::empty({q, H_}, torch::kFloat32);
    if (q == 0) return out;
    std::vector<float> h(q * H_), a(q * H_), qkv(q * QKV), att(q * Hq_ * D_), gu(q * 2 * I_), mid(q * I_);
    const float* emb = embed_.data_ptr<float>();
    for (int64_t i = 0; i < q; ++i) std::memcpy(&h[i * H_], emb + idp[i] * H_, H_ * sizeof(float));

    // rotary cos / sin per row: [q, D / 2]
    const int64_t half = D_ / 2;
    std::vector<float> cs(q * half), sn(q * half);
    const float* inv = inv_freq_.data_ptr<float>();
    for (int64_t i = 0; i < q; ++i)
      for (int64_t j = 0; j < half; ++j) {
        const float f = static_cast<float>(pp[i]) * inv[j];
        cs[i * half + j] = std::cos(f) * rope_scaling_;
        sn[i * half + j] = std::sin(f) * rope_scaling_;
      }

    // attention work items, segment by segment, key/value head major within a segment: a head's keys
    // and values stay in cache while every row of its group reads them. An item is one row and up
    // to 4 query heads of a group, which share each key and value load (even where the threads then
    // get unequal shares: one row's 3 groups on 2 threads beat its 9 heads); a pass with fewer
    // groups than threads splits them head by head, so that every thread has work.
    const int64_t groups = Hq_ / Hkv_, items = q * Hkv_;
    const int64_t per = items >= threads() ? std::min<int64_t>(groups, 4) : 1;
    const int64_t chunks = (groups + per - 1) / per;                                   // items per row and group
    std::vector<int64_t> work_start(S);  // the first work item of each segment
    for (int64_t s = 0, t = 0; s < S; t += seg[s].q * Hkv_ * chunks, ++s) work_start[s] = t;
    std::vector<Seen> seen(q);  // per row of the pass
    for (int64_t s = 0; s < S; ++s) {
      const Segment& g = seg[s];
      for (int64_t i = 0; i < g.q; ++i) {
        const int64_t cells = g.vis ? g.past + g.q : g.past + i + 1;
        seen[g.first + i] = seen_cells(g.vis ? g.vis + i * (g.past + g.q) : nullptr, g.cp, cells);
      }
    }
    const int64_t work = q * Hkv_ * chunks;
    const float scale = 1.0f / std::sqrt(static_cast<float>(D_));
    Rows rows;
    for (int64_t l = 0; l < layers(); ++l) {
      const Layer& L = layers_[l];
      norm(h.data(), L.norm1.data_ptr<float>(), q, a.data());
      product(wide_, L.qkv, rows, a.data(), q, qkv.data());
      // rotary positions and the cache writes, row by row: split between the threads from kSpread
      // rows (a barrier follows: a row's attention reads the cells its segment's other rows wrote)
      auto place = [&](int64_t r) {
        const Segment& g = seg[row_seg[r]];
        const int64_t i = r - g.first, layer = l * Hkv_ * g.cap * D_;
        float* x = &qkv[r * QKV];
        for (int64_t hh = 0; hh < Hq_ + Hkv_; ++hh) rope(x + hh * D_, &cs[r * half], &sn[r * half]);
        for (int64_t kv = 0; kv < Hkv_; ++kv) {
          const float* key = x + (Hq_ + kv) * D_;
          const float* val = x + (Hq_ + Hkv_ + kv) * D_;
          const int64_t c = g.past + i;  // the row's cell: keys at (its tile, t, its lane)
          const int64_t kat = layer + kv * D_ * g.cap + c / kTile * D_ * kTile + c % kTile;
          const int64_t vat = layer + (kv * g.cap + c) * D_;
          if (g.half) {
            uint16_t* Kh = static_cast<uint16_t*>(g.K);
            uint16_t* Vh = static_cast<uint16_t*>(g.V);
            for (int64_t t = 0; t < D_; ++t) Kh[kat + t * kTile] = half_of(key[t]);
            for (int64_t t = 0; t < D_; ++t) Vh[vat + t] = half_of(val[t]);
          } else {
            float* Kf = static_cast<float*>(g.K);
            for (int64_t t = 0; t < D_; ++t) Kf[kat + t * kTile] = key[t];
            std::memcpy(static_cast<float*>(g.V) + vat, val, D_ * sizeof(float));
          }
        }
      };
      if (q < kSpread)
        for (int64_t r = 0; r < q; ++r) place(r);
#pragma omp parallel num_threads(threads())
      {
        if (q >= kSpread) {
#pragma omp for schedule(static)
          for (int64_t r = 0; r < q; ++r) place(r);
        }
        std::vector<float> scratch(4 * 2 * (most + 16));
        // items cost as many cells as their segment holds: taken one by one as threads free, so
        // that requests of unequal lengths do not leave one thread waiting at the layer's end
#pragma omp for schedule(dynamic)
        for (int64_t t = 0; t < work; ++t) {
          const int64_t s = static_cast<int64_t>(std::upper_bound(work_start.begin(), work_start.end(), t) -
                                                 work_start.begin()) - 1;
          const Segment& g = seg[s];
          const int64_t u = t - work_start[s];
          const int64_t kv = u / (g.q * chunks), rest = u % (g.q * chunks), i = rest / chunks;
          const int64_t h0 = kv * groups + (rest % chunks) * per, n = std::min(per, (kv + 1) * groups - h0);
          const int64_t cells = g.vis ? g.past + g.q : g.past + i + 1;
          const Seen& row = seen[g.first + i];
          const int32_t* index = row.dense ? nullptr : row.index.data();
          const float* qs[4];
          float* os[4];
          for (int64_t a = 0; a < n; ++a) {
            qs[a] = &qkv[(g.first + i) * QKV + (h0 + a) * D_];
            os[a] = &att[((g.first + i) * Hq_ + h0 + a) * D_];
          }
          const int64_t kat = (l * Hkv_ + kv) * D_ * g.cap, vat = (l * Hkv_ + kv) * g.cap * D_;
          if (g.half) {
            const uint16_t* Kh = static_cast<const uint16_t*>(g.K) + kat;
            const uint16_t* Vh = static_cast<const uint16_t*>(g.V) + vat;
            if (wide_) avx512::attend_heads(n, qs, Kh, Vh, D_, index, row.count, cells, scale, scratch.data(), os);
            else avx2::attend_heads(n, qs, Kh, Vh, D_, index, row.count, cells, scale, scratch.data(), os);
          } else {
            const float* Kf = static_cast<const float*>(g.K) + kat;
            const float* Vf = static_cast<const float*>(g.V) + vat;
            if (wide_) avx512::attend_heads(n, qs, Kf, Vf, D_, index, row.count, cells, scale, scratch.data(), os);
            else avx2::attend_heads(n, qs, Kf, Vf, D_, index, row.count, cells, scale, scratch.data(), os);
          }
        }
      }
      product(wide_, L.o, rows, att.data(), q, a.data());
      add(h.data(), a.data(), q);
      norm(h.data(), L.norm2.data_ptr<float>(), q, a.data());
      product(wide_, L.gate_up, rows, a.data(), q, gu.data());
      if (wide_) avx512::silu_mul(gu.data(), q, I_, mid.data());
      else avx2::silu_mul(gu.data(), q, I_, mid.data());
      product(wide_, L.down, rows, mid.data(), q, a.data());
      add(h.data(), a.data(), q);
    }
    norm(h.data(), final_norm_.data_ptr<float>(), q, out.data_ptr<float>());
    return out;
  }

  // hidden [m, H] -> logits [m, V] through the packed LM head
  torch::Tensor project(const torch::Tensor& hidden_in) {
    TORCH_CHECK(head_.n > 0, "no LM head set");
    const torch::Tensor hidden = hidden_in.to(torch::kFloat32).contiguous();
    TORCH_CHECK(hidden.dim() == 2 && hidden.size(1) == head_.k, "hidden rows do not fit the head");
    const int64_t m = hidden.size(0);
    auto out = torch::empty({m, head_.n}, torch::kFloat32);
    if (m == 0) return out;
    Rows rows;
    product(wide_, head_, rows, hidden.data_ptr<float>(), m, out.data_ptr<float>());
    return out;
  }

 private:
  // h [q, H] += a [q, H]
  void add(float* h, const float* a, int64_t q) const {
#pragma omp parallel for schedule(static) num_threads(threads()) if (q >= kSpread)
    for (int64_t i = 0; i < q; ++i)
      for (int64_t j = 0; j < H_; ++j) h[i * H_ + j] += a[i * H_ + j];
  }

  void norm(const float* x, const float* w, int64_t q, float* y) const {
#pragma omp parallel for schedule(static) num_threads(threads()) if (q >= kSpread)
    for (int64_t i = 0; i < q; ++i) {
      const float* xi = x + i * H_;
      float ss = 0.0f;
      for (int64_t j = 0; j < H_; ++j) ss += xi[j] * xi[j];
      const float r = 1.0f / std::sqrt(ss / static_cast<float>(H_) + eps_);
      for (int64_t j = 0; j < H_; ++j) y[i * H_ + j] = w[j] * (xi[j] * r);
    }
  }

  void rope(float* x, const float* c, const float* s) const {
    const int64_t half = D_ / 2;
    for (int64_t j = 0; j < half; ++j) {
      const float a = x[j], b = x[j + half];
      x[j] = a * c[j] - b * s[j];
      x[j + half] = b * c[j] + a * s[j];
    }
  }

  int64_t H_, Hq_, Hkv_, D_, I_;
  float eps_, rope_scaling_;
  bool wide_;
  torch::Tensor inv_freq_, embed_, final_norm_;
  std::vector<Layer> layers_;
  Weight head_;
};

// One packed weight kept for repeated products: a small network beside the pass (a draft head),
// whose weights a pass has just pushed out of the caches, streams them in the pass's own kinds
struct Linear {
  Weight W;
  bool wide;
  Linear(const torch::Tensor& w, const c10::optional<torch::Tensor>& bias, int kind, bool wide)
      : W(pack(w, kind, bias)), wide(wide) {}
  // x [m, k] -> y [m, n]
  torch::Tensor forward(const torch::Tensor& x_in) const {
    const torch::Tensor x = x_in.to(torch::kFloat32).contiguous();
    TORCH_CHECK(x.dim() == 2 && x.size(1) == W.k, "x must be [m, k] with the weight's k");
    auto y = torch::empty({x.size(0), W.n}, torch::kFloat32);
    Rows rows;
    if (x.size(0)) product(wide, W, rows, x.data_ptr<float>(), x.size(0), y.data_ptr<float>());
    return y;
  }
};

// x [m, k] @ w [n, k]^T through a packed weight of the given kind, for tests of the products alone
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, int kind, bool wide) {
  return Linear(w, c10::nullopt, kind, wide).forward(x);
}

#include "lean_screen.h"

}  // namespace lean

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  namespace py = pybind11;
  py::class_<lean::Model>(module, "Model")
      .def(py::init<int64_t, int64_t, int64_t, int64_t, int64_t, double, double, torch::Tensor, torch::Tensor,
                    torch::Tensor, bool>())
      .def("add_layer", &lean::Model::add_layer)
      .def("set_head", &lean::Model::set_head)
      .def("layers", &lean::Model::layers)
      .def("wide", &lean::Model::wide)
      .def("forward", &lean::Model::forward, py::call_guard<py::gil_scoped_release>())
      .def("forward_many", &lean::Model::forward_many, py::call_guard<py::gil_scoped_release>())
      .def("project", &lean::Model::project, py::call_guard<py::gil_scoped_release>());
  py::class_<lean::Linear>(module, "Linear")
      .def(py::init<torch::Tensor, c10::optional<torch::Tensor>, int, bool>())
      .def("forward", &lean::Linear::forward, py::call_guard<py::gil_scoped_release>());
  lean::bind_screen(module);
  module.def("linear", &lean::linear, "x [m, k] @ w [n, k]^T on packed weights of a kind (0 fp32, 1 bf16, 2 int8)");
}
