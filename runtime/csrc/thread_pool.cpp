#include "thread_pool.h"

#include <chrono>
#include <cstdlib>
#include <memory>

#if defined(__linux__)
#include <sched.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace mcq {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__)
  _mm_pause();
#endif
}

// an idle worker spins this long for the next loop before it sleeps: a decode step's loops come
// microseconds apart, and waking a sleeping thread costs several microseconds per loop (measured:
// a 576x192 int8 GEMV took 14 us with workers asleep after ~2000 pauses, 9 us with them spinning);
// by time, not by pause count, because a pause lasts ~10 cycles on some CPUs and ~140 on others
constexpr auto kIdleSpin = std::chrono::microseconds(300);
// pause instructions before a waiting caller starts yielding its core
constexpr int kSpins = 2000;

}  // namespace

ThreadPool::ThreadPool(int threads) {
  // the generation a worker starts from is read here, not when its thread first runs: a thread
  // scheduled late would otherwise take a later generation (a first loop's, or the destructor's)
  // as already seen and wait for the next one, which for the destructor's never comes
  const uint64_t start = generation_.load();
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this, start] { work(start); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);  // a worker checks stop_ under it before sleeping
    stop_.store(true);
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

namespace {
// set while this thread runs a pool task: a loop started from inside one runs inline (the pool
// has one job at a time, and its workers are busy with the outer loop anyway)
thread_local bool in_task = false;
}  // namespace

void ThreadPool::take_tasks(Job& job) {
  const bool outer = in_task;
  in_task = true;
  for (;;) {
    const int64_t task = job.next.fetch_add(1, std::memory_order_relaxed);
    if (task >= job.tasks) break;
    job.fn(job.ctx, task);
    job.done.fetch_add(1, std::memory_order_release);
  }
  in_task = outer;
}

void ThreadPool::run(int64_t tasks, Task fn, void* ctx) {
  if (tasks <= 0) return;
  if (workers_.empty() || tasks == 1 || in_task) {
    for (int64_t t = 0; t < tasks; ++t) fn(ctx, t);
    return;
  }
  std::lock_guard<std::mutex> serial(run_mutex_);
  // workers still leaving the previous loop's slot (they took no task: its tasks were done)
  while (job_.users.load() != 0) cpu_relax();
  job_.fn = fn;
  job_.ctx = ctx;
  job_.tasks = tasks;
  job_.next.store(0);
  job_.done.store(0);
  job_.open.store(true);
  generation_.fetch_add(1);  // spinning workers see this at once
  if (sleepers_.load() > 0) {
    std::lock_guard<std::mutex> lock(mutex_);  // a worker about to sleep holds it: no lost wake-up
    wake_.notify_all();
  }
  take_tasks(job_);
  // the tasks workers took: wait for them, spinning briefly, then giving the core away (a
  // worker descheduled mid-task needs it when the machine is shared)
  for (int spins = 0; job_.done.load(std::memory_order_acquire) != tasks; ++spins) {
    if (spins < kSpins) cpu_relax();
    else std::this_thread::yield();
  }
  job_.open.store(false);  // a late worker finds no task (next >= tasks) and never reads ctx
}

void ThreadPool::work(uint64_t seen) {
  for (;;) {
    const auto until = std::chrono::steady_clock::now() + kIdleSpin;
    for (int spins = 1; generation_.load(std::memory_order_acquire) == seen && !stop_.load(); ++spins) {
      cpu_relax();
      if (spins % 64 == 0 && std::chrono::steady_clock::now() > until) break;
    }
    if (generation_.load() == seen && !stop_.load()) {
      std::unique_lock<std::mutex> lock(mutex_);
      sleepers_.fetch_add(1);
      wake_.wait(lock, [&] { return generation_.load() != seen || stop_.load(); });
      sleepers_.fetch_sub(1);
    }
    if (stop_.load()) return;
    seen = generation_.load();
    job_.users.fetch_add(1);
    if (job_.open.load()) take_tasks(job_);
    job_.users.fetch_sub(1);
  }
}

int default_threads() {
  if (const char* env = std::getenv("MCQ_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  const unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

namespace {
std::unique_ptr<ThreadPool>& pool_slot() {
  static std::unique_ptr<ThreadPool> slot;
  return slot;
}
}  // namespace

ThreadPool& pool() {
  auto& slot = pool_slot();
  if (!slot) slot = std::make_unique<ThreadPool>(default_threads());
  return *slot;
}

void set_threads(int threads) {
  auto& slot = pool_slot();
  if (threads < 1) threads = default_threads();
  if (slot && slot->threads() == threads) return;
  slot.reset();
  slot = std::make_unique<ThreadPool>(threads);
}

}  // namespace mcq
