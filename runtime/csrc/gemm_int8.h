// int8 x int8 -> int32 matrix products on prepacked weights: y[m, n] = sum_k x[m, k] * w[n, k],
// exact (int32 arithmetic, wrapping as int32 does), one kernel file per instruction set.
//
// Packed layout (one for every ISA, made once at load): the weight's rows (output features)
// in blocks of 16, K padded with zeros to a multiple of 4; block b, quad q holds
// w[16b + c][4q + j] at byte 64 * (b * K4 + q) + 4c + j. One 64-byte load then feeds 16
// outputs' dot products (vpdpbusd: 16 x 4 products) with no horizontal sums, at one row
// (decode) as at many (prefill).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

namespace mcq {

// Zeroed, 64-byte aligned bytes for packed weights. Load-time weights of 64 KiB and more are carved from
// shared 2 MiB-aligned arenas the kernel is asked to back with huge pages (madvise: Linux's
// default THP mode gives them only on request): a decode step streams every weight once, and on
// 4 KiB pages a 135 MB model costs 33k TLB misses a step (measured: the 28 MB lm_head GEMV took
// ~1.1 ms on 4 KiB pages, ~0.8 ms on huge pages). An arena is freed with its last weight.
class WeightBytes {
 public:
  // transient: an operand packed for one call (a K cache): plain memory, never an arena's
  void assign(size_t bytes, bool transient = false);
  int8_t* data() { return ptr_; }
  const int8_t* data() const { return ptr_; }
  size_t size() const { return size_; }

 private:
  std::shared_ptr<void> owner_;  // the arena or the allocation holding ptr_
  int8_t* ptr_ = nullptr;
  size_t size_ = 0;
};

struct PackedInt8 {
  int64_t n = 0, k = 0;          // the weight's [N, K]
  int64_t k4 = 0, blocks = 0;    // K / 4 and N / 16, rounded up
  WeightBytes data;              // blocks * k4 * 64 bytes
  std::vector<int32_t> shift;    // 128 * sum_k w[n, k] per output (undoes VNNI's unsigned-input shift)
  std::vector<int32_t> rowsum;   // sum_k w[n, k] per output
};

// w[r][kk] at w + r * row_stride + kk * col_stride (col_stride 1: the stored [N, K] layout;
// row_stride 1: a [K, N] matrix packed as its transpose)
PackedInt8 pack_int8(const int8_t* w, int64_t n, int64_t k, int64_t row_stride, int64_t col_stride = 1,
                     bool transient = false);

// One kernel call: output blocks [block_begin, block_end) of rows x (prepared by `prepare_x`:
// padded to k4 * 4 bytes per row, signed or shifted to unsigned as the ISA asks).
// (raw pointers only: the ISA files compile under other target flags and must not instantiate
// inline library code, which the linker could pick for every caller)
struct GemmCall {
  const uint8_t* x;       // m rows of k4 * 4 bytes
  int64_t m;
  const int8_t* w;        // PackedInt8::data
  const int32_t* shift;   // PackedInt8::shift (blocks * 16)
  int64_t n, k4, blocks;
  int32_t* y;             // m rows of ldy int32
  int64_t ldy;
};

enum class Isa { portable = 0, avx2 = 1, avx512_vnni = 2 };

const char* isa_name(Isa isa);
bool isa_usable(Isa isa);
Isa best_isa();
// MCQ_NATIVE_ISA (portable / avx2 / avx512_vnni) where set and usable, else the best usable
Isa selected_isa();
bool set_isa(Isa isa);  // false if this CPU cannot run it

void gemm_int8_portable(const GemmCall& c, int64_t block_begin, int64_t block_end);
void gemm_int8_avx2(const GemmCall& c, int64_t block_begin, int64_t block_end);
void gemm_int8_avx512_vnni(const GemmCall& c, int64_t block_begin, int64_t block_end);

// y = x @ w^T for x [m, k] int8 (row stride ldx), on the process's thread pool; `serial`: on
// the calling thread only (a caller that parallelizes over several products itself)
void gemm_int8(const int8_t* x, int64_t m, int64_t ldx, const PackedInt8& w, int32_t* y, int64_t ldy,
               bool serial = false);

// What the selected kernel reads: activation bytes xor this (0x80 where vpdpbusd takes them
// unsigned), in rows of k4 * 4 bytes (the padding's value does not matter: the weight's is zero)
uint8_t activation_flip();

// An integer linear's dequantizing epilogue (spec Q.4), run by each task on the columns it just
// computed, while they are in cache: y[r, c] = float32(acc[r, c] - correction[c]) * scale[c],
// then + bias[c] (correction and bias may be null; the subtraction wraps as int32 does)
struct Int8Epilogue {
  float* y;
  int64_t ldy;
  const float* scale;
  const int32_t* correction;
  const float* bias;
};

// acc = xp @ w^T for activations already prepared (m rows of w.k4 * 4 bytes xor activation_flip());
// with an epilogue, acc is the tasks' scratch and the floats go to epilogue->y
void gemm_int8_prepared(const uint8_t* xp, int64_t m, const PackedInt8& w, int32_t* acc, int64_t ldacc,
                        const Int8Epilogue* epilogue = nullptr, bool serial = false);

// Several products of m rows each (the linears that read one input: q/k/v, gate/up), one pool
// call over all their column blocks: each job's values are what gemm_int8_prepared gives it
struct GemmJob {
  const uint8_t* xp;
  const PackedInt8* w;
  int32_t* acc;
  int64_t ldacc;
  const Int8Epilogue* epilogue;
};
void gemm_int8_jobs(const GemmJob* jobs, int64_t count, int64_t m);

}  // namespace mcq
