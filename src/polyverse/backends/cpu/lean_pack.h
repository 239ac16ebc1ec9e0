// Packing a float weight into the panels of a weight type (lean.cpp's Weight), once per model.
// Included by lean.cpp inside namespace lean.

// ---- where packed weights live ------------------------------------------------------------------

// Packed weights are carved from 2 MiB-aligned chunks that the kernel is asked to back with huge
// pages (madvise; where it declines, they are ordinary pages): a pass streams every weight once,
// and with 4 KiB pages each of the tens of thousands of pages it crosses costs a TLB miss and
// stops the hardware prefetcher at its end. A chunk lives while a tensor carved from it does.
class Chunks {
 public:
  // an uninitialised tensor of `sizes` and `dtype`, 64-byte aligned, in a chunk
  torch::Tensor empty(at::IntArrayRef sizes, at::ScalarType dtype) {
    const size_t bytes = (static_cast<size_t>(c10::multiply_integers(sizes)) * c10::elementSize(dtype) + 63) / 64 * 64;
    std::lock_guard<std::mutex> hold(lock_);
    if (bytes > kChunk) return carve(fresh(bytes), 0, sizes, dtype);  // a weight larger than a chunk: its own
    if (!chunk_ || used_ + bytes > kChunk) { chunk_ = fresh(kChunk); used_ = 0; }
    used_ += bytes;
    return carve(chunk_, used_ - bytes, sizes, dtype);
  }

 private:
  static constexpr size_t kHuge = size_t(2) << 20, kChunk = size_t(64) << 20;
  static std::shared_ptr<char> fresh(size_t bytes) {
    const size_t size = (bytes + kHuge - 1) / kHuge * kHuge;
    char* p = static_cast<char*>(std::aligned_alloc(kHuge, size));
    TORCH_CHECK(p != nullptr, "out of memory packing a weight (", size, " bytes)");
    madvise(p, size, MADV_HUGEPAGE);
    return std::shared_ptr<char>(p, [](char* q) { std::free(q); });
  }
  static torch::Tensor carve(const std::shared_ptr<char>& chunk, size_t at, at::IntArrayRef sizes,
                             at::ScalarType dtype) {
    return torch::from_blob(chunk.get() + at, sizes, [keep = chunk](void*) {}, torch::dtype(dtype));
  }
  std::mutex lock_;
  std::shared_ptr<char> chunk_;
  size_t used_ = 0;
};

inline torch::Tensor packed_empty(at::IntArrayRef sizes, at::ScalarType dtype) {
  static Chunks chunks;
  return chunks.empty(sizes, dtype);
}

// ---- packing -------------------------------------------------------------------------------------

// w [n, k] float32 -> a Weight of the given kind (bias [n] or undefined)
Weight pack(const torch::Tensor& w_in, int kind, const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(w_in.dim() == 2, "pack wants a 2D weight");
  const torch::Tensor w = w_in.detach().to(torch::kFloat32).contiguous();
  const int64_t n = w.size(0), k = w.size(1);
  TORCH_CHECK(n % kPanel == 0, "pack wants a multiple of 32 output columns, got ", n);
  TORCH_CHECK(k % 32 == 0, "pack wants a multiple of 32 input columns, got ", k);
  Weight W;
  W.kind = kind;
  W.n = n;
  W.k = k;
  const float* src = w.data_ptr<float>();
  if (kind == kF32) {
    W.data = packed_empty({n / kPanel, k, kPanel}, torch::kFloat32);  // [n/32, k, 32]
    W.data.copy_(w.reshape({n / kPanel, kPanel, k}).transpose(1, 2));
    W.f32 = W.data.data_ptr<float>();
  } else if (kind == kBF16) {
    W.data = packed_empty({n / kPanel, k / 2, kPanel, 2}, torch::kInt16);
    uint16_t* dst = reinterpret_cast<uint16_t*>(W.data.data_ptr<int16_t>());
    for (int64_t p = 0; p < n / kPanel; ++p)
      for (int64_t i = 0; i < k / 2; ++i)
        for (int64_t c = 0; c < kPanel; ++c)
          for (int64_t t = 0; t < 2; ++t)
            dst[((p * (k / 2) + i) * kPanel + c) * 2 + t] = float_to_bf16(src[(p * kPanel + c) * k + 2 * i + t]);
    W.bf16 = dst;
  } else if (kind == kI8) {
    const int64_t blocks = k / 32;
    W.data = packed_empty({n / kPanel, k / 4, kPanel, 4}, torch::kUInt8);
    W.scales = packed_empty({n / kPanel, blocks, kPanel}, torch::kFloat32);
    uint8_t* dst = W.data.data_ptr<uint8_t>();
    float* sc = W.scales.data_ptr<float>();
    for (int64_t p = 0; p < n / kPanel; ++p) {
      for (int64_t c = 0; c < kPanel; ++c) {
        const float* row = src + (p * kPanel + c) * k;
        for (int64_t blk = 0; blk < blocks; ++blk) {
          float top = 0.0f;
          for (int j = 0; j < 32; ++j) top = std::max(top, std::fabs(row[blk * 32 + j]));
          const float s = top / 127.0f;
          const float inv = s > 0.0f ? 1.0f / s : 0.0f;
          for (int j = 0; j < 32; ++j) {
            const int64_t kk = blk * 32 + j;
            const int q = static_cast<int>(std::max(-127.0f, std::min(127.0f, std::nearbyint(row[kk] * inv))));
            dst[((p * (k / 4) + kk / 4) * kPanel + c) * 4 + kk % 4] = static_cast<uint8_t>(q + 128);
          }
          sc[(p * blocks + blk) * kPanel + c] = s;
        }
      }
    }
    W.u8 = dst;
    W.scale = sc;
  } else {
    TORCH_CHECK(false, "unknown weight kind ", kind);
  }
  if (bias.has_value() && bias->defined()) {
    W.bias = bias->detach().to(torch::kFloat32).contiguous();
    TORCH_CHECK(W.bias.numel() == n, "bias does not fit the weight");
    W.b = W.bias.data_ptr<float>();
  }
  return W;
}
