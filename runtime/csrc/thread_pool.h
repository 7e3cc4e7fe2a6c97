// A persistent pool of worker threads for the engine's parallel loops.
//
// Why not OpenMP: its workers spin for a long time after each region (OMP_WAIT_POLICY), which
// collapses throughput when anything else shares the cores (measured here: docs/benchmarks.md).
// These workers spin briefly (a decode step's next loop comes within microseconds), then sleep
// on a condition variable, so an idle engine costs nothing and needs no environment set-up.
#pragma once

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
  void work(int index);
  void take_tasks();

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int64_t> next_{0};
  std::atomic<int> busy_{0};
  int64_t tasks_ = 0;
  Task fn_ = nullptr;
  void* ctx_ = nullptr;
  bool stop_ = false;
};

// The process's pool: sized to the CPUs this process may run on (sched_getaffinity), or to
// MCQ_NUM_THREADS where set; resized by set_threads.
ThreadPool& pool();
void set_threads(int threads);
int default_threads();

}  // namespace mcq
