#include "pooled_array.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <new>
#include <vector>

namespace sparseforge::bind {

namespace {

constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kMaxKeptBlocks = 32;

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

namespace {

// 2 MiB-aligned anonymous mapping, so THP can back all of it (one fault per 2 MB on first use instead of
// 512). MAP_NORESERVE: a reservation's unwritten pages are never committed.
void* map_block(size_t bytes) {
  const size_t span = bytes + kHugePage;
  void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const uintptr_t r = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t start = (r + kHugePage - 1) / kHugePage * kHugePage;
  if (start > r) munmap(raw, start - r);
  if (r + span > start + bytes) munmap(reinterpret_cast<void*>(start + bytes), r + span - (start + bytes));
  void* ptr = reinterpret_cast<void*>(start);
#if defined(MADV_HUGEPAGE)
  madvise(ptr, bytes, MADV_HUGEPAGE);
#endif
  return ptr;
}

void unmap_block(const PooledBlock& b) { munmap(b.ptr, b.bytes); }

// The smallest kept block of at least `want` bytes that the request fills to 2/3 or more, taken out of
// the pool; {nullptr} when there is none.
PooledBlock take_kept(size_t want) {
  Pool& p = pool();
  std::lock_guard<std::mutex> lk(p.mu);
  auto best = p.free.end();
  for (auto it = p.free.begin(); it != p.free.end(); ++it)
    if (it->bytes >= want && want * 3 >= it->bytes * 2 && (best == p.free.end() || it->bytes < best->bytes)) best = it;
  if (best == p.free.end()) {
    ++p.mapped;
    return {};
  }
  const PooledBlock b = *best;
  p.free.erase(best);
  p.kept -= b.resident();
  ++p.reused;
  return b;
}

size_t round_up(size_t bytes) { return (std::max<size_t>(bytes, 1) + kHugePage - 1) / kHugePage * kHugePage; }

}  // namespace

PooledBlock pool_acquire(size_t bytes) {
  const size_t want = round_up(bytes);
  PooledBlock b = take_kept(want);
  if (b.ptr != nullptr) return b;
  void* ptr = map_block(want);
  if (ptr == nullptr) throw std::bad_alloc();
  PooledBlock fresh{ptr, want};
  fresh.wrote(0, want);
  return fresh;
}

PooledBlock pool_reserve(size_t bytes) {
  const size_t want = round_up(bytes);
  if (want < bytes) return {};  // overflow
  PooledBlock b = take_kept(want);
  if (b.ptr != nullptr) return b;
  void* ptr = map_block(want);
  if (ptr == nullptr) return {};
  return {ptr, want};
}

void pool_release(PooledBlock b) {
  const size_t budget = budget_bytes();
  std::vector<PooledBlock> drop;
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lk(p.mu);
    if (budget == 0 || b.resident() > budget) {
      drop.push_back(b);
    } else {
      p.free.push_back(b);
      p.kept += b.resident();
      // The oldest go first; the block count is capped too, since an unwritten reservation counts 0 bytes.
      while (p.kept > budget || p.free.size() > kMaxKeptBlocks) {
        drop.push_back(p.free.front());
        p.kept -= p.free.front().resident();
        p.free.erase(p.free.begin());
      }
    }
  }
  for (const PooledBlock& d : drop) unmap_block(d);
}

void pool_release_all() {
  std::vector<PooledBlock> drop;
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lk(p.mu);
    drop.swap(p.free);
    p.kept = 0;
  }
  for (const PooledBlock& d : drop) unmap_block(d);
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
