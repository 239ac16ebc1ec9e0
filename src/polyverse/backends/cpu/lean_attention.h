// Attention over a request's KV cache, one row and a group's query heads at a time.
//
// Included by lean_isa.h inside each instruction set's namespace (after its vector helpers), so
// it has no include guard: it is compiled once per target.

// out[a] [c, c + W * kLanes) = the weighted sum of the values of the row's dense list (V: the
// values from coordinate c), in list order; W a constant, so that the sums stay in registers
template <int NQ, int W, typename T>
void weigh(const T* V, int64_t d, const int32_t* index, int64_t seen, float* const* dense, const vf* inv,
           float* const* out, int64_t c) {
  constexpr int64_t kLine = 64 / sizeof(T);  // elements per cache line
  vf acc[NQ][W];
  for (int a = 0; a < NQ; ++a) for (int u = 0; u < W; ++u) acc[a][u] = vzero();
  for (int64_t t = 0; t < seen; ++t) {
    const T* v = V + static_cast<int64_t>(index ? index[t] : t) * d;
    if (!index)  // far enough ahead to cover the memory's latency
      for (int64_t e = 0; e < W * kLanes; e += kLine)
        _mm_prefetch(reinterpret_cast<const char*>(v + kValuesAhead * d + e), _MM_HINT_T0);
    vf vv[W];
    for (int u = 0; u < W; ++u) vv[u] = vload(v + u * kLanes);
    for (int a = 0; a < NQ; ++a) {
      const vf p = vset(dense[a][t]);
      for (int u = 0; u < W; ++u) acc[a][u] = vfma(p, vv[u], acc[a][u]);
    }
  }
  for (int a = 0; a < NQ; ++a)
    for (int u = 0; u < W; ++u) vstore(out[a] + c + u * kLanes, vmul(acc[a][u], inv[a]));
}

// One query row of NQ heads that share a key/value head: out[a] [d] = softmax(q[a].K / sqrt d) V
// over the cells the row sees. Kt holds the head's keys in tiles of kTile cells, each tile [d, kTile]
// (the keys of a tile transposed: a vector of cells per d, and a tile's d vectors one after another,
// so the scores read the keys as one stream); V [cap, d] holds its values. Each key and value vector
// is loaded (and widened) once for the NQ queries. Scores are computed a vector of cells at a time
// for the first ``cells`` cells (each cell's dot product summed over d in order, the same in every
// lane and whatever NQ); the ``seen`` cells the row sees are ``index`` (``seen_cells``: its cells in
// position order, built once per row and pass) or, when ``index`` is null, cells 0 .. seen - 1. The
// softmax sums and the weighted sum of values run over that dense list: the same list, in the same
// order, as a pass in which the row sees every cell (plain decoding) gives, so the row's output is the
// same bits. scratch: NQ * 2 * (cells + kLanes) floats.
template <int NQ, typename T>
void attend(const float* const* q, const T* Kt, const T* V, int64_t d, const int32_t* index,
            int64_t seen, int64_t cells, float scale, float* scratch, float* const* out) {
  static_assert(kTile % kLanes == 0, "a vector of cells lies in one tile");
  const int64_t stride = 2 * (cells + kLanes);
  float* scores[NQ];
  float* dense[NQ];
  for (int a = 0; a < NQ; ++a) {
    scores[a] = scratch + a * stride;                                   // [cells rounded up]
    dense[a] = index ? scores[a] + cells + kLanes : scores[a];          // [seen rounded up]
  }
  // the key vector of cells j .. j + kLanes - 1 (j a multiple of kLanes) at coordinate t
  auto key = [&](int64_t j, int64_t t) { return Kt + (j / kTile) * d * kTile + t * kTile + j % kTile; };
  constexpr int64_t kBlock = 4 * kLanes;  // cells scored at once
  constexpr int64_t kLine = 64 / sizeof(T);  // elements per cache line
  if (!index)  // the first values, fetched while the scores are summed
    for (int64_t e = 0; e < std::min(seen, kValuesAhead) * d; e += kLine)
      _mm_prefetch(reinterpret_cast<const char*>(V + e), _MM_HINT_T0);
  const int64_t whole = cells / kLanes * kLanes;
  int64_t j0 = 0;
  for (; j0 + kBlock <= whole; j0 += kBlock) {  // four vectors of cells at once: independent chains
    vf acc[NQ][4];
    for (int a = 0; a < NQ; ++a) for (int u = 0; u < 4; ++u) acc[a][u] = vzero();
    // the next block's keys (kBlock * d elements, contiguous) are fetched while this one is summed
    const T* next = key(j0 + kBlock, 0);
    for (int64_t t = 0; t < d; ++t) {
      for (int64_t e = 0; e < kBlock; e += kLine)
        _mm_prefetch(reinterpret_cast<const char*>(next + t * kBlock + e), _MM_HINT_T0);
      const vf k0 = vload(key(j0, t)), k1 = vload(key(j0 + kLanes, t)), k2 = vload(key(j0 + 2 * kLanes, t)),
               k3 = vload(key(j0 + 3 * kLanes, t));
      for (int a = 0; a < NQ; ++a) {
        const vf qt = vset(q[a][t]);
        acc[a][0] = vfma(qt, k0, acc[a][0]);
        acc[a][1] = vfma(qt, k1, acc[a][1]);
        acc[a][2] = vfma(qt, k2, acc[a][2]);
        acc[a][3] = vfma(qt, k3, acc[a][3]);
      }
    }
    for (int a = 0; a < NQ; ++a)
      for (int u = 0; u < 4; ++u) vstore(scores[a] + j0 + u * kLanes, acc[a][u]);
  }
  for (int64_t j = j0; j < whole; j += kLanes) {
    vf acc[NQ];
    for (int a = 0; a < NQ; ++a) acc[a] = vzero();
    for (int64_t t = 0; t < d; ++t) {
      const vf kt = vload(key(j, t));
      for (int a = 0; a < NQ; ++a) acc[a] = vfma(vset(q[a][t]), kt, acc[a]);
    }
    for (int a = 0; a < NQ; ++a) vstore(scores[a] + j, acc[a]);
  }
  if (whole < cells) {  // the last cells, fewer than a vector: the same fused multiply-adds per lane
    const int64_t rest = cells - whole;
    vf acc[NQ];
    for (int a = 0; a < NQ; ++a) acc[a] = vzero();
    for (int64_t t = 0; t < d; ++t) {
      const vf kt = vload_part(key(whole, t), rest);
      for (int a = 0; a < NQ; ++a) acc[a] = vfma(vset(q[a][t]), kt, acc[a]);
    }
    for (int a = 0; a < NQ; ++a) vstore(scores[a] + whole, acc[a]);  // scores has room for a whole vector
  }
  const int64_t blocks = (seen + kLanes - 1) / kLanes;
  const vf sc = vset(scale);
  vf inv[NQ];
  for (int a = 0; a < NQ; ++a) {  // each query's softmax over its dense list
    float* dn = dense[a];
    if (index)
      for (int64_t t = 0; t < seen; ++t) dn[t] = scores[a][index[t]];
    for (int64_t j = seen; j < blocks * kLanes; ++j) dn[j] = -INFINITY;
    vf most = vset(-INFINITY);
    for (int64_t b = 0; b < blocks; ++b) {
      const vf v = vmul(vload(dn + b * kLanes), sc);
      vstore(dn + b * kLanes, v);
      most = vmax(most, v);
    }
    alignas(64) float lanes[kLanes];
    vstore(lanes, most);
    float top = -INFINITY;
    for (int64_t l = 0; l < kLanes; ++l) top = std::max(top, lanes[l]);
    const vf shift = vset(top);
    for (int64_t b = 0; b < blocks; ++b) vstore(dn + b * kLanes, vexp(vsub(vload(dn + b * kLanes), shift)));
    for (int64_t j = seen; j < blocks * kLanes; ++j) dn[j] = 0.0f;  // padding: no weight
    vf total = vzero();
    for (int64_t b = 0; b < blocks; ++b) total = vadd(total, vload(dn + b * kLanes));
    inv[a] = vset(1.0f / vsum(total));
  }
  for (int64_t c = 0; c < d; c += 4 * kLanes) {  // 4 vectors of the head's values at a time
    switch (std::min<int64_t>(4, (d - c) / kLanes)) {
      case 4: weigh<NQ, 4>(V + c, d, index, seen, dense, inv, out, c); break;
      case 3: weigh<NQ, 3>(V + c, d, index, seen, dense, inv, out, c); break;
      case 2: weigh<NQ, 2>(V + c, d, index, seen, dense, inv, out, c); break;
      default: weigh<NQ, 1>(V + c, d, index, seen, dense, inv, out, c); break;
    }
  }
}

// attend for n (1 to 4) heads of one key/value group
template <typename T>
void attend_heads(int n, const float* const* q, const T* Kt, const T* V, int64_t d, const int32_t* index,
                  int64_t seen, int64_t cells, float scale, float* scratch, float* const* out) {
  switch (n) {
    case 1: attend<1>(q, Kt, V, d, index, seen, cells, scale, scratch, out); break;
    case 2: attend<2>(q, Kt, V, d, index, seen, cells, scale, scratch, out); break;
    case 3: attend<3>(q, Kt, V, d, index, seen, cells, scale, scratch, out); break;
    default: attend<4>(q, Kt, V, d, index, seen, cells, scale, scratch, out); break;
  }
}
