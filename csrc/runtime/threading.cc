#include "sparseforge/threading.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
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
  unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
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
  if (chunks <= 1) {
    fn(0, n);
    return;
  }
  const int64_t step = (n + chunks - 1) / chunks;
  std::vector<std::thread> workers;
  workers.reserve(static_cast<size_t>(chunks - 1));
  for (int64_t c = 1; c < chunks; ++c) {
    int64_t b = c * step, e = std::min(n, b + step);
    if (b < e) workers.emplace_back(fn, b, e);
  }
  fn(0, std::min(n, step));  // the calling thread takes the first chunk
  for (auto& w : workers) w.join();
}

}  // namespace sparseforge
