#include "sparseforge/threading.h"

#include "openmp_host.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace sparseforge {

namespace {
std::atomic<int> g_threads{0};

int default_threads() {
  if (const char* env = std::getenv("SPARSEFORGE_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n >= 1) return n;
  }
  // hardware_concurrency() reads /sys/devices/system/cpu/online on every call (~5 us, as much as a
  // small kernel call); the CPU count does not change under a running process.
  static const int hw = [] {
    const unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 1 : static_cast<int>(n);
  }();
  return hw;
}

// One parallel_for call. Workers hold a shared_ptr, so one that wakes late only ever sees an exhausted
// counter of a finished job, never a half-initialised new one.
struct Job {
  const std::function<void(int64_t, int64_t)>* fn;
  int64_t n, step, chunks;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex err_mu;
  std::exception_ptr err;
};

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

thread_local bool t_in_worker = false;  // a pool worker, or a caller while its job runs: nested calls run inline

// Claims and runs one chunk of j; false when none is left. *last is set when this chunk finished the job.
bool run_chunk(Job& j, bool* last) {
  const int64_t c = j.next.fetch_add(1);
  if (c >= j.chunks) return false;
  const int64_t b = c * j.step, e = std::min(j.n, b + j.step);
  try {
    if (b < e) (*j.fn)(b, e);
  } catch (...) {
    std::lock_guard<std::mutex> lk(j.err_mu);
    if (!j.err) j.err = std::current_exception();
  }
  *last = j.done.fetch_add(1) + 1 == j.chunks;
  return true;
}

// Body of an OpenMP team member: GOMP_parallel's closing barrier is the join, so no notification.
void openmp_member(void* data) {
  const bool outer = t_in_worker;
  t_in_worker = true;  // a parallel_for inside a chunk runs inline on this member
  bool last = false;
  while (run_chunk(*static_cast<Job*>(data), &last)) {
  }
  t_in_worker = outer;
}

// Persistent workers: a kernel call costs a wake-up (a few µs), not a thread start (~20-50 µs each).
// One job runs at a time; a concurrent caller that finds the pool busy spawns its own threads, and a
// parallel_for called from inside a worker runs inline, so nothing can deadlock.
class Pool {
 public:
  std::mutex run_mu;  // held by the caller whose job owns the pool

  void run(const std::shared_ptr<Job>& job, int threads) {
    ensure_workers(threads - 1);
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = job;
      ++gen_;
      gen_atomic_.store(gen_, std::memory_order_release);
    }
    cv_work_.notify_all();
    work(*job);
    std::unique_lock<std::mutex> lk(mu_);
    cv_done_.wait(lk, [&] { return job->done.load() == job->chunks; });
    job_.reset();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_work_, cv_done_;
  std::vector<std::thread> workers_;
  std::shared_ptr<Job> job_;
  uint64_t gen_ = 0;
  std::atomic<uint64_t> gen_atomic_{0};  // gen_, readable without the lock for the short spin below

  void work(Job& j) {
    bool last = false;
    while (run_chunk(j, &last)) {
      if (last) {
        std::lock_guard<std::mutex> lk(mu_);
        cv_done_.notify_all();
      }
    }
  }

  void ensure_workers(int want) {
    std::lock_guard<std::mutex> lk(mu_);
    while (static_cast<int>(workers_.size()) < want) {
      const uint64_t seen = gen_;  // jobs published after this one reach the new worker
      workers_.emplace_back([this, seen] { loop(seen); });
      workers_.back().detach();  // the pool is never destroyed: no join at exit
    }
  }

  void loop(uint64_t seen) {
    t_in_worker = true;
    for (;;) {
      // Spin briefly before sleeping: a model calls kernels back to back, and a futex wake-up on a busy
      // machine can cost more than a whole GEMV chunk. ~50 µs of pause loops, then block.
      for (int i = 0; i < 20000 && gen_atomic_.load(std::memory_order_acquire) == seen; ++i) cpu_relax();
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_work_.wait(lk, [&] { return gen_ != seen; });
        seen = gen_;
        job = job_;
      }
      if (job) work(*job);
    }
  }
};

Pool& pool() {
  // Leaked on purpose (no static-destruction order issues). After fork() the child has no workers,
  // so it starts a fresh pool.
  static std::mutex mu;
  static Pool* p = nullptr;
  static pid_t owner = 0;
  std::lock_guard<std::mutex> lk(mu);
  if (p == nullptr || owner != getpid()) {
    p = new Pool();
    owner = getpid();
  }
  return *p;
}

void spawn_threads(int64_t n, int64_t chunks, int64_t step, const std::function<void(int64_t, int64_t)>& fn) {
  std::vector<std::thread> workers;
  workers.reserve(static_cast<size_t>(chunks - 1));
  for (int64_t c = 1; c < chunks; ++c) {
    int64_t b = c * step, e = std::min(n, b + step);
    if (b < e) workers.emplace_back(fn, b, e);
  }
  fn(0, std::min(n, step));
  for (auto& w : workers) w.join();
}
}  // namespace

int num_threads() {
  int n = g_threads.load(std::memory_order_relaxed);
  return n >= 1 ? n : default_threads();
}

void set_num_threads(int n) { g_threads.store(n < 0 ? 0 : n, std::memory_order_relaxed); }

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  int64_t chunks = std::min<int64_t>(num_threads(), (n + grain - 1) / grain);
  if (chunks <= 1 || t_in_worker) {
    fn(0, n);
    return;
  }
  const int64_t threads = chunks;
  // Up to 4 chunks per thread, claimed dynamically: on a shared machine a preempted thread's share is
  // picked up by the others instead of holding up the whole call. At most `threads` run at once.
  const int64_t max_chunks = std::min<int64_t>(threads * 4, (n + grain - 1) / grain);
  const int64_t step = (n + max_chunks - 1) / max_chunks;
  auto job = std::make_shared<Job>();
  job->fn = &fn;
  job->n = n;
  job->step = step;
  job->chunks = (n + step - 1) / step;
  if (!openmp_host_run(openmp_member, job.get(), static_cast<int>(threads))) {
    Pool& p = pool();
    std::unique_lock<std::mutex> busy(p.run_mu, std::try_to_lock);
    if (!busy.owns_lock()) {  // another caller is using the pool right now
      const int64_t s = (n + threads - 1) / threads;
      spawn_threads(n, (n + s - 1) / s, s, fn);
      return;
    }
    t_in_worker = true;  // a parallel_for inside fn on this thread must not try_lock run_mu again
    p.run(job, static_cast<int>(threads));
    t_in_worker = false;
  }
  if (job->err) std::rethrow_exception(job->err);
}

}  // namespace sparseforge
