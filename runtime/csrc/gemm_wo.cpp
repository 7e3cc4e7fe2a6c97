#include "gemm_wo.h"

#include <algorithm>

#include "thread_pool.h"

namespace mcq {

PackedWeightOnly pack_weight_only(const uint8_t* q, int64_t n, int64_t k, int bits, int64_t group, const float* scale,
                                  const int32_t* zero_point) {
  PackedWeightOnly p;
  p.n = n, p.k = k, p.bits = bits, p.group = group;
  p.groups = (k + group - 1) / group;
  p.blocks = (n + 15) / 16;
  p.data.assign(static_cast<size_t>(p.blocks * p.block_bytes()));
  uint8_t* d = reinterpret_cast<uint8_t*>(p.data.data());
  for (int64_t r = 0; r < n; ++r) {
    uint8_t* blk = d + (r / 16) * p.block_bytes() + r % 16;
    if (bits == 8) {
      for (int64_t kk = 0; kk < k; ++kk) blk[16 * kk] = q[r * k + kk];
    } else {  // the stored byte holds q[2i] low, q[2i+1] high, two's complement: make each nibble q + 8
      for (int64_t i = 0; i < k / 2; ++i) blk[16 * i] = static_cast<uint8_t>(q[r * (k / 2) + i] ^ 0x88);
    }
  }
  const float offset = bits == 4 ? 8.0f : 0.0f;
  p.scale.assign(static_cast<size_t>(p.blocks * p.groups * 16), 0.0f);
  p.zero.assign(p.scale.size(), 0.0f);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t g = 0; g < p.groups; ++g) {
      const size_t at = static_cast<size_t>(((r / 16) * p.groups + g) * 16 + r % 16);
      p.scale[at] = scale[r * p.groups + g];
      p.zero[at] = static_cast<float>(zero_point[r * p.groups + g]) + offset;
    }
  return p;
}

namespace {

struct ParallelWo {
  WoCall call;
  void (*kernel)(const WoCall&, int64_t, int64_t);
  int64_t per_task;
};

}  // namespace

void gemm_weight_only(const float* x, int64_t m, int64_t ldx, const PackedWeightOnly& w, float* y, int64_t ldy) {
  if (m <= 0 || w.n <= 0) return;
  thread_local std::vector<float> xsum;
  xsum.assign(static_cast<size_t>(m * w.groups), 0.0f);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t g = 0; g < w.groups; ++g) {
      float s = 0.0f;
      for (int64_t kk = g * w.group; kk < std::min(w.k, (g + 1) * w.group); ++kk) s += x[r * ldx + kk];
      xsum[static_cast<size_t>(r * w.groups + g)] = s;
    }
  ParallelWo p{{x, m, ldx, xsum.data(), &w, y, ldy}, gemm_wo_portable, 1};
  switch (selected_isa()) {
    case Isa::avx512_vnni: p.kernel = gemm_wo_avx512; break;
    case Isa::avx2: p.kernel = gemm_wo_avx2; break;
    default: break;
  }
  ThreadPool& tp = pool();
  const int64_t tasks = std::min<int64_t>(w.blocks, tp.threads() * 4);
  p.per_task = (w.blocks + tasks - 1) / tasks;
  tp.run((w.blocks + p.per_task - 1) / p.per_task, [](void* ctx, int64_t t) {
    const auto* q = static_cast<const ParallelWo*>(ctx);
    const int64_t b = t * q->per_task;
    q->kernel(q->call, b, std::min(b + q->per_task, q->call.w->blocks));
  }, &p);
}

}  // namespace mcq
