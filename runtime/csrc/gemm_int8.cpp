#include "gemm_int8.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>

#include "cpu_features.h"
#include "thread_pool.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace mcq {

namespace {

void* aligned(size_t align, size_t bytes) {
  void* p = nullptr;
  if (posix_memalign(&p, align, bytes > 0 ? bytes : align) != 0) throw std::bad_alloc();
  return p;
}

struct Arena {
  static constexpr size_t kPage = size_t{2} << 20;
  std::shared_ptr<void> memory;
  size_t size = 0, used = 0;
};

}  // namespace

void WeightBytes::assign(size_t bytes, bool transient) {
  const size_t padded = (bytes + 63) / 64 * 64;
  if (transient || padded < (size_t{64} << 10)) {
    owner_ = std::shared_ptr<void>(aligned(64, padded), std::free);
    ptr_ = static_cast<int8_t*>(owner_.get());
  } else {
    static std::mutex mutex;
    static Arena current;
    std::lock_guard<std::mutex> lock(mutex);
    if (!current.memory || current.used + padded > current.size) {
      const size_t size = std::max<size_t>(size_t{32} << 20, (padded + Arena::kPage - 1) / Arena::kPage * Arena::kPage);
      current.memory = std::shared_ptr<void>(aligned(Arena::kPage, size), std::free);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
      madvise(current.memory.get(), size, MADV_HUGEPAGE);  // a hint: refused or unsupported changes nothing
#endif
      current.size = size;
      current.used = 0;
    }
    ptr_ = static_cast<int8_t*>(current.memory.get()) + current.used;
    current.used += padded;
    owner_ = current.memory;
  }
  std::memset(ptr_, 0, padded);
  size_ = bytes;
}

PackedInt8 pack_int8(const int8_t* w, int64_t n, int64_t k, int64_t row_stride, int64_t col_stride,
                     bool transient) {
  PackedInt8 p;
  p.n = n;
  p.k = k;
  p.k4 = (k + 3) / 4;
  p.blocks = (n + 15) / 16;
  p.data.assign(static_cast<size_t>(p.blocks * p.k4 * 64), transient);
  p.shift.assign(static_cast<size_t>(p.blocks * 16), 0);
  p.rowsum.assign(static_cast<size_t>(p.blocks * 16), 0);
  for (int64_t r = 0; r < n; ++r) {
    const int8_t* row = w + r * row_stride;
    int8_t* dst = p.data.data() + 64 * (r / 16) * p.k4 + 4 * (r % 16);
    int32_t sum = 0;
    if (col_stride == 1) {  // whole quads at once (a stored weight, a K cache row)
      int64_t kk = 0;
      for (; kk + 4 <= k; kk += 4) std::memcpy(dst + 16 * kk, row + kk, 4);
      for (; kk < k; ++kk) dst[16 * (kk & ~int64_t{3}) + kk % 4] = row[kk];
      for (kk = 0; kk < k; ++kk) sum += row[kk];
    } else {
      for (int64_t kk = 0; kk < k; ++kk) {
        const int8_t v = row[kk * col_stride];
        dst[16 * (kk & ~int64_t{3}) + kk % 4] = v;
        sum += v;
      }
    }
    p.rowsum[static_cast<size_t>(r)] = sum;
    p.shift[static_cast<size_t>(r)] = static_cast<int32_t>(static_cast<uint32_t>(sum) * 128u);
  }
  return p;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512_vnni: return "avx512_vnni";
    case Isa::avx2: return "avx2";
    default: return "portable";
  }
}

bool isa_usable(Isa isa) {
  const CpuFeatures& f = cpu_features();
  switch (isa) {
    case Isa::avx512_vnni: return f.avx512_vnni;
    case Isa::avx2: return f.avx2;
    default: return true;
  }
}

Isa best_isa() {
  for (Isa isa : {Isa::avx512_vnni, Isa::avx2})
    if (isa_usable(isa)) return isa;
  return Isa::portable;
}

namespace {

Isa from_environment() {
  const char* env = std::getenv("MCQ_NATIVE_ISA");
  if (env != nullptr) {
    for (Isa isa : {Isa::portable, Isa::avx2, Isa::avx512_vnni})
      if (std::strcmp(env, isa_name(isa)) == 0 && isa_usable(isa)) return isa;
  }
  return best_isa();
}

Isa& current_isa() {
  static Isa isa = from_environment();
  return isa;
}

struct ParallelGemm {
  GemmCall call;
  void (*kernel)(const GemmCall&, int64_t, int64_t);
  int64_t per_task;
  const Int8Epilogue* epilogue;
};

void dequantize_columns(const GemmCall& c, const Int8Epilogue& e, int64_t c0, int64_t c1) {
  for (int64_t r = 0; r < c.m; ++r) {
    const int32_t* acc = c.y + r * c.ldy;
    float* y = e.y + r * e.ldy;
    if (e.correction != nullptr)
      for (int64_t j = c0; j < c1; ++j)
        y[j] = static_cast<float>(static_cast<int32_t>(static_cast<uint32_t>(acc[j]) -
                                                       static_cast<uint32_t>(e.correction[j]))) * e.scale[j];
    else
      for (int64_t j = c0; j < c1; ++j) y[j] = static_cast<float>(acc[j]) * e.scale[j];
    if (e.bias != nullptr)
      for (int64_t j = c0; j < c1; ++j) y[j] += e.bias[j];
  }
}

void run_blocks(const ParallelGemm& g, int64_t begin, int64_t end) {
  g.kernel(g.call, begin, end);
  if (g.epilogue != nullptr) dequantize_columns(g.call, *g.epilogue, 16 * begin, std::min(16 * end, g.call.n));
}

void run_task(void* ctx, int64_t task) {
  const auto* g = static_cast<const ParallelGemm*>(ctx);
  const int64_t begin = task * g->per_task;
  run_blocks(*g, begin, std::min(begin + g->per_task, g->call.blocks));
}

}  // namespace

Isa selected_isa() { return current_isa(); }

bool set_isa(Isa isa) {
  if (!isa_usable(isa)) return false;
  current_isa() = isa;
  return true;
}

namespace {

// the selected ISA's int8 kernel
void (*selected_kernel())(const GemmCall&, int64_t, int64_t) {
  switch (selected_isa()) {
    case Isa::avx512_vnni: return gemm_int8_avx512_vnni;
    case Isa::avx2: return gemm_int8_avx2;
    default: return gemm_int8_portable;
  }
}

}  // namespace

uint8_t activation_flip() { return selected_isa() == Isa::avx512_vnni ? 0x80 : 0; }

void gemm_int8(const int8_t* x, int64_t m, int64_t ldx, const PackedInt8& w, int32_t* y, int64_t ldy, bool serial) {
  if (m <= 0 || w.n <= 0) return;
  // the activations padded to whole quads (zeros meet the weight's zero padding) and, for
  // vpdpbusd (unsigned x signed), shifted by 128: the kernel subtracts 128 * sum_k w after
  thread_local std::vector<uint8_t> prepared;
  const int64_t kp = w.k4 * 4;
  const uint8_t flip = activation_flip();
  prepared.assign(static_cast<size_t>(m * kp), flip);
  for (int64_t r = 0; r < m; ++r) {
    const uint8_t* src = reinterpret_cast<const uint8_t*>(x + r * ldx);
    uint8_t* dst = prepared.data() + r * kp;
    for (int64_t kk = 0; kk < w.k; ++kk) dst[kk] = src[kk] ^ flip;
  }
  gemm_int8_prepared(prepared.data(), m, w, y, ldy, nullptr, serial);
}

void gemm_int8_prepared(const uint8_t* xp, int64_t m, const PackedInt8& w, int32_t* acc, int64_t ldacc,
                        const Int8Epilogue* epilogue, bool serial) {
  if (m <= 0 || w.n <= 0) return;
  ParallelGemm g{{xp, m, w.data.data(), w.shift.data(), w.n, w.k4, w.blocks, acc, ldacc}, selected_kernel(), 1,
                 epilogue};
  if (serial) {
    run_blocks(g, 0, w.blocks);
    return;
  }
  ThreadPool& tp = pool();
  // contiguous runs of 16-column blocks, a few per thread (an uneven last one is small)
  const int64_t tasks = std::min<int64_t>(w.blocks, tp.threads() * 4);
  g.per_task = (w.blocks + tasks - 1) / tasks;
  tp.run((w.blocks + g.per_task - 1) / g.per_task, run_task, &g);
}

void gemm_int8_jobs(const GemmJob* jobs, int64_t count, int64_t m) {
  if (m <= 0 || count <= 0) return;
  void (*kernel)(const GemmCall&, int64_t, int64_t) = selected_kernel();
  struct Task {
    ParallelGemm gemm;
    int64_t begin, end;
  };
  thread_local std::vector<Task> tasks;
  tasks.clear();
  int64_t total = 0;
  for (int64_t j = 0; j < count; ++j) total += jobs[j].w->blocks;
  ThreadPool& tp = pool();
  // runs of blocks about as long as one product's tasks would be, never across two products
  const int64_t per_task = std::max<int64_t>(1, (total + tp.threads() * 4 - 1) / (tp.threads() * 4));
  for (int64_t j = 0; j < count; ++j) {
    const GemmJob& job = jobs[j];
    const PackedInt8& w = *job.w;
    const ParallelGemm g{{job.xp, m, w.data.data(), w.shift.data(), w.n, w.k4, w.blocks, job.acc, job.ldacc}, kernel, 1,
                         job.epilogue};
    for (int64_t b = 0; b < w.blocks; b += per_task) tasks.push_back({g, b, std::min(b + per_task, w.blocks)});
  }
  tp.run(static_cast<int64_t>(tasks.size()), [](void* ctx, int64_t t) {
    const Task& task = (*static_cast<std::vector<Task>*>(ctx))[static_cast<size_t>(t)];
    run_blocks(task.gemm, task.begin, task.end);
  }, &tasks);
}

}  // namespace mcq
