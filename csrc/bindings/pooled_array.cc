#include "pooled_array.h"

#include <sys/mman.h>
#include <unistd.h>

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
  // Blocks the budget could not keep, handed back to the kernel with MADV_FREE instead of unmapped: it
  // takes their pages only when it needs memory, and a product that reuses one before then writes into
  // pages still there, without faults (R-MAT's 0.8 GB output, four times the default budget, paid
  // 0.01-0.9 s of system time per call). oldest first; lazy_bytes: what they held when freed.
  std::vector<PooledBlock> lazy;
  size_t kept = 0, lazy_bytes = 0;
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

constexpr size_t kMaxLazyBlocks = 4;

// At most a quarter of the machine's memory is left to MADV_FREE at a time.
size_t lazy_cap() {
  static const size_t cap = [] {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) / 4 : size_t{0};
  }();
  return cap;
}

// The smallest kept block of at least `want` bytes that the request fills to 2/3 or more, taken out of
// the pool; {nullptr} when there is none.
PooledBlock take_kept(size_t want) {
  Pool& p = pool();
  std::lock_guard<std::mutex> lk(p.mu);
  for (std::vector<PooledBlock>* list : {&p.free, &p.lazy}) {
    auto best = list->end();
    for (auto it = list->begin(); it != list->end(); ++it)
      if (it->bytes >= want && want * 3 >= it->bytes * 2 && (best == list->end() || it->bytes < best->bytes)) best = it;
    if (best == list->end()) continue;
    PooledBlock b = *best;
    list->erase(best);
    if (list == &p.free) {
      p.kept -= b.resident();
    } else {
      p.lazy_bytes -= b.resident();
      b.ranges = 0;  // the kernel may have taken any of its pages
    }
    ++p.reused;
    return b;
  }
  ++p.mapped;
  return {};
}

// With the lock held: puts blocks already advised MADV_FREE on the lazy list, under its caps; what does
// not fit goes to `drop`.
void add_lazy(Pool& p, const std::vector<PooledBlock>& blocks, std::vector<PooledBlock>* drop) {
  for (const PooledBlock& b : blocks) {
    const size_t held = b.resident();
    if (held == 0 || held > lazy_cap()) {
      drop->push_back(b);
      continue;
    }
    p.lazy.push_back(b);
    p.lazy_bytes += held;
    while (p.lazy_bytes > lazy_cap() || p.lazy.size() > kMaxLazyBlocks) {
      drop->push_back(p.lazy.front());
      p.lazy_bytes -= p.lazy.front().resident();
      p.lazy.erase(p.lazy.begin());
    }
  }
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
  std::vector<PooledBlock> drop, to_lazy;
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lk(p.mu);
    if (budget == 0) {
      drop.push_back(b);
    } else if (b.resident() > budget) {
      to_lazy.push_back(b);
    } else {
      p.free.push_back(b);
      p.kept += b.resident();
      // The oldest go first; the block count is capped too, since an unwritten reservation counts 0 bytes.
      while (p.kept > budget || p.free.size() > kMaxKeptBlocks) {
        to_lazy.push_back(p.free.front());
        p.kept -= p.free.front().resident();
        p.free.erase(p.free.begin());
      }
    }
  }
#if defined(MADV_FREE)
  // Advised before anyone can take them (a taker's writes before the advice could be dropped).
  for (const PooledBlock& l : to_lazy) madvise(l.ptr, l.bytes, MADV_FREE);
  if (!to_lazy.empty()) {
    Pool& p = pool();
    std::lock_guard<std::mutex> lk(p.mu);
    add_lazy(p, to_lazy, &drop);
  }
#else
  drop.insert(drop.end(), to_lazy.begin(), to_lazy.end());
#endif
  for (const PooledBlock& d : drop) unmap_block(d);
}

void pool_release_all() {
  std::vector<PooledBlock> drop;
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lk(p.mu);
    drop.swap(p.free);
    drop.insert(drop.end(), p.lazy.begin(), p.lazy.end());
    p.lazy.clear();
    p.kept = p.lazy_bytes = 0;
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
  s.lazy_blocks = static_cast<int64_t>(p.lazy.size());
  s.lazy_bytes = static_cast<int64_t>(p.lazy_bytes);
  return s;
}

}  // namespace sparseforge::bind
