// A persistent pool of worker threads for the engine's parallel loops.
//
// Why not OpenMP: its workers spin for a long time after each region (OMP_WAIT_POLICY), which
// collapses throughput when anything else shares the cores (measured here: docs/benchmarks.md).
// Here the caller takes tasks too and a loop ends when its tasks are done, not when every
// worker has checked in: a worker the OS has not scheduled costs nothing (the caller does its
// share), idle workers spin briefly then sleep, and nothing asks for environment set-up.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace mcq {

class ThreadPool {
 public:
  // fn(ctx, task) for task in [0, tasks): tasks spread over the workers and the caller.
  using Task = void (*)(void* ctx, int64_t task);

  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int threads() const { return static_cast<int>(workers_.size()) + 1; }
  void run(int64_t tasks, Task fn, void* ctx);

 private:
  // one job slot, reused: a loop's fields are written only while no worker is inside the slot
  // (users == 0) and the slot is closed, so a worker never follows a pointer into a finished
  // caller's stack, and publishing a loop takes no lock
  struct Job {
    Task fn = nullptr;
    void* ctx = nullptr;
    int64_t tasks = 0;
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::atomic<int> users{0};      // workers inside the slot
    std::atomic<bool> open{false};  // tasks may be taken
  };

  void work(uint64_t seen);
  static void take_tasks(Job& job);

  std::vector<std::thread> workers_;
  std::mutex run_mutex_;  // one loop at a time (concurrent callers from other threads queue)
  std::mutex mutex_;      // sleeping workers
  std::condition_variable wake_;
  std::atomic<int> sleepers_{0};
  std::atomic<uint64_t> generation_{0};
  Job job_;
  std::atomic<bool> stop_{false};
};

// The process's pool: sized to the CPUs this process may run on (sched_getaffinity), or to
// MCQ_NUM_THREADS where set; resized by set_threads.
ThreadPool& pool();
void set_threads(int threads);
int default_threads();

// f(begin, end) over [0, n) in a few chunks per thread where n reaches `grain` (else inline)
template <class F>
void parallel_for(int64_t n, int64_t grain, F&& f) {
  ThreadPool& tp = pool();
  if (n < grain || tp.threads() == 1) {
    if (n > 0) f(int64_t{0}, n);
    return;
  }
  struct Ctx {
    F* f;
    int64_t n, chunk;
  } ctx{&f, n, 0};
  const int64_t tasks = std::min<int64_t>(n / (grain / 2 > 0 ? grain / 2 : 1) + 1, tp.threads() * 4);
  ctx.chunk = (n + tasks - 1) / tasks;
  tp.run((n + ctx.chunk - 1) / ctx.chunk, [](void* c, int64_t t) {
    auto* x = static_cast<Ctx*>(c);
    const int64_t b = t * x->chunk, e = b + x->chunk < x->n ? b + x->chunk : x->n;
    (*x->f)(b, e);
  }, &ctx);
}

}  // namespace mcq
