// Weight-only linears (spec Q.4a): float32 activations times int8 (per output channel) or int4
// (groups of input channels) weights with zero points, one kernel file per instruction set.
//
// y[r, n] = sum over groups g of s[n, g] * (sum_{k in g} x[r, k] * u[n, k] - z[n, g] * sum_{k in g} x[r, k])
// where u is the stored integer as the kernel reads it (int8: q; int4: the unsigned nibble q + 8)
// and z the zero point on that scale (int8: zp; int4: zp + 8): the definition x · ((q - zp) · s)
// regrouped, float32 sums over k in order (within Q.4a's tolerance of it, far inside its bf16
// term). The same sequence of operations for one row as for many: a prefill's rows and a decode
// step's row get the same values.
//
// Packed layout (made once at load): outputs in blocks of 16; int8: for each k, 16 bytes (one
// per output of the block); int4: for each pair of inputs (k, k + 1), 16 bytes holding k's
// nibble low and k + 1's high. Scales and zero points as float32 [block][group][16].
#pragma once

#include <cstdint>
#include <vector>

#include "gemm_int8.h"

namespace mcq {

struct PackedWeightOnly {
  int64_t n = 0, k = 0, group = 0, groups = 0, blocks = 0;
  int bits = 8;
  WeightBytes data;
  std::vector<float> scale, zero;  // [blocks][groups][16]
  int64_t block_bytes() const { return bits == 8 ? 16 * k : 8 * k; }
};

// q: int8 [n, k] (bits 8) or the spec's int4 storage, uint8 [n, k / 2] (bits 4; k and group even);
// scale and zero_point [n, groups] (groups = ceil(k / group))
PackedWeightOnly pack_weight_only(const uint8_t* q, int64_t n, int64_t k, int bits, int64_t group, const float* scale,
                                  const int32_t* zero_point);

struct WoCall {
  const float* x;     // m rows of ldx
  int64_t m, ldx;
  const float* xsum;  // m rows of `groups` sums of x over each group
  const PackedWeightOnly* w;
  float* y;           // m rows of ldy
  int64_t ldy;
};

void gemm_wo_portable(const WoCall& c, int64_t block_begin, int64_t block_end);
void gemm_wo_avx2(const WoCall& c, int64_t block_begin, int64_t block_end);
void gemm_wo_avx512(const WoCall& c, int64_t block_begin, int64_t block_end);

// y = x @ dequantize(w)^T for x [m, k] float32 (row stride ldx), on the thread pool
void gemm_weight_only(const float* x, int64_t m, int64_t ldx, const PackedWeightOnly& w, float* y, int64_t ldy);

}  // namespace mcq
