// What a pass knows of each request it carries: its rows, its own cache, and the cells each of its
// rows sees. Included by lean.cpp inside namespace lean.

// The cells one row of a pass sees, in position order (ties in cache order), built once per row and
// pass (every layer and head reads the same list): ``dense`` when they are cells 0 .. count - 1
// (plain decoding), else ``index``. Cache order is position order except after a Multiverse merge,
// where paths run in parallel interleave their cells and paths run one after another do not:
// ordered by position, the Conclusion sums the same list either way.
struct Seen {
  std::vector<int32_t> index;
  int64_t count = 0;
  bool dense = true;
};

inline Seen seen_cells(const uint8_t* visible, const int64_t* positions, int64_t cells) {
  Seen s;
  for (int64_t j = 0; j < cells; ++j)
    if (!visible || visible[j]) s.index.push_back(static_cast<int32_t>(j));
  s.count = static_cast<int64_t>(s.index.size());
  bool ordered = true;
  for (int64_t t = 1; t < s.count && ordered; ++t) ordered = positions[s.index[t - 1]] <= positions[s.index[t]];
  if (!ordered)
    std::stable_sort(s.index.begin(), s.index.end(), [&](int32_t a, int32_t b) { return positions[a] < positions[b]; });
  for (int64_t t = 0; t < s.count && s.dense; ++t) s.dense = s.index[t] == t;
  if (s.dense) s.index.clear();
  return s;
}

// one request's part of a pass: its rows and its own cache
struct Segment {
  int64_t first = 0, q = 0, past = 0, cap = 0;  // rows [first, first + q); cells 0 .. past + q - 1
  void* K = nullptr;  // [L, Hkv, cap / kTile, D, kTile] float, or IEEE half (uint16)
  void* V = nullptr;  // [L, Hkv, cap, D] likewise
  bool half = false;
  int64_t* cp = nullptr;  // [cap] each cell's position
  const uint8_t* vis = nullptr;  // [q, past + q] or null: a causal chain after the cache
};
