#include "pooled_array.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <new>
#include <vector>

namespace sparseforge::bind {

namespace {

constexpr size_t kHugePage = size_t{2} << 20;

size_t budget_bytes() {
  static const size_t b = [] {
    long long mb = 256;
    if (const char* env = std::getenv("SPARSEFORGE_OUTPUT_POOL_MB")) mb = std::max(0LL, std::atoll(env));
    return static_cast<size_t>(mb) << 20;
  }();
  return b;
}

struct Pool {
  std::mutex mu;
  std::vector<PooledBlock> free;  // oldest first
  size_t kept = 0;
  int64_t reused = 0, mapped = 0;
};

// Leaked on purpose: arrays that die during interpreter shutdown still return their blocks to it.
Pool& pool() {
  static Pool* p = new Pool();
  return *p;
}

}  // namespace

PooledBlock pool_acquire(size_t bytes) {
  const size_t want = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  Pool& p = pool();
  {
    std::lock_guard<std::mutex> lk(p.mu);
    // The smallest kept block that fits, if the request would fill at least 2/3 of it.
    auto best = p.free.end();
    for (auto it = p.free.begin(); it != p.free.end(); ++it)
      if (it->bytes >= want && want * 3 >= it->bytes * 2 && (best == p.free.end() || it->bytes < best->bytes)) best = it;
    if (best != p.free.end()) {
      const PooledBlock b = *best;
      p.free.erase(best);
      p.kept -= b.bytes;
      ++p.reused;
      return b;
    }
    ++p.mapped;
  }
  // Huge-page aligned, so THP can back all of it: one fault per 2 MB on first use instead of 512.
  void* ptr = std::aligned_alloc(kHugePage, want);
  if (ptr == nullptr) throw std::bad_alloc();
#if defined(MADV_HUGEPAGE)
  madvise(ptr, want, MADV_HUGEPAGE);
#endif
  return {ptr, want};
}

void pool_release(PooledBlock b) {
  const size_t budget = budget_bytes();
  std::vector<PooledBlock> drop;
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lk(p.mu);
    if (b.bytes > budget) {
      drop.push_back(b);
    } else {
      p.free.push_back(b);
      p.kept += b.bytes;
      while (p.kept > budget) {  // the oldest go first
        drop.push_back(p.free.front());
        p.kept -= p.free.front().bytes;
        p.free.erase(p.free.begin());
      }
    }
  }
  for (const PooledBlock& d : drop) std::free(d.ptr);
}

void pool_release_all() {
  std::vector<PooledBlock> drop;
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lk(p.mu);
    drop.swap(p.free);
    p.kept = 0;
  }
  for (const PooledBlock& d : drop) std::free(d.ptr);
}

PoolStats pool_stats() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lk(p.mu);
  PoolStats s;
  s.kept_bytes = static_cast<int64_t>(p.kept);
  s.kept_blocks = static_cast<int64_t>(p.free.size());
  s.reused = p.reused;
  s.mapped = p.mapped;
  return s;
}

}  // namespace sparseforge::bind
