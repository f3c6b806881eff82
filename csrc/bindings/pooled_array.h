// Large output arrays whose memory is kept for the next call after the array dies.
//
// Why: an op that returns a fresh 50 MB array (spgemm's C on FEM or text matrices) pays a page fault per
// page of it on every call (glibc maps allocations above 32 MB afresh each time and unmaps them on
// free). On this VM that costs 4 ms of a 40 ms product on one thread, and 7-30 ms of system time when two
// threads fault at once. The block of a dead array goes back to a process-wide pool instead, and the
// next call of a similar size takes it, already faulted in. Smaller arrays come from numpy as usual: the
// malloc heap already reuses them without faults.
//
// The pool keeps at most SPARSEFORGE_OUTPUT_POOL_MB (default 256) of free blocks; a block is reused only
// for a request of at least 2/3 of its size, so a small result never pins a large block.
// sparseforge._C.spgemm_release_buffers() frees every kept block (blocks of live arrays stay valid).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>

namespace sparseforge::bind {

namespace py = pybind11;

constexpr size_t kPooledMinBytes = size_t{4} << 20;  // below this, numpy's own allocation

// `bytes` of address space, of which the ranges in `written` may hold pages (what the pool's budget
// counts): a reservation reused by products of other layouts (spgemm on one thread writes C from the
// start, on two from a split point) holds pages in several places, and their hull would overcount.
struct PooledBlock {
  static constexpr int kRanges = 4;
  void* ptr = nullptr;
  size_t bytes = 0;
  std::pair<size_t, size_t> written[kRanges] = {};
  int ranges = 0;
  size_t resident() const {
    size_t r = 0;
    for (int k = 0; k < ranges; ++k) r += written[k].second - written[k].first;
    return r;
  }
  // Adds [from, to): merged with every range it overlaps or touches; past kRanges, into the last one.
  void wrote(size_t from, size_t to) {
    if (to <= from) return;
    int out = 0;
    for (int k = 0; k < ranges; ++k) {
      if (written[k].second < from || written[k].first > to) {
        written[out++] = written[k];
        continue;
      }
      from = std::min(from, written[k].first), to = std::max(to, written[k].second);
    }
    ranges = out;
    if (ranges == kRanges) {
      from = std::min(from, written[kRanges - 1].first), to = std::max(to, written[kRanges - 1].second);
      --ranges;
    }
    written[ranges++] = {from, to};
  }
};

PooledBlock pool_acquire(size_t bytes);  // throws std::bad_alloc when memory runs out
// An address-space reservation of `bytes` for an output whose final size is known only after it is
// written (spgemm writes C's first rows in place, within an upper bound): pages cost memory only once
// written. A kept reservation is reused by the same 2/3 rule. {nullptr, 0} when it cannot be mapped.
PooledBlock pool_reserve(size_t bytes);
void pool_release(PooledBlock b);
void pool_release_all();

struct PoolStats {
  int64_t kept_bytes = 0, kept_blocks = 0, reused = 0, mapped = 0, lazy_blocks = 0, lazy_bytes = 0;
};
PoolStats pool_stats();

// A 1-D array of the n elements of T from element `start` of block b, which it then owns (b goes back to
// the pool when the array dies); the block's written range is widened to cover them.
template <typename T>
py::array_t<T> array_in_block(PooledBlock b, int64_t n, int64_t start = 0) {
  b.wrote(static_cast<size_t>(start) * sizeof(T), std::min(b.bytes, static_cast<size_t>(start + n) * sizeof(T)));
  auto* block = new PooledBlock(b);
  py::capsule owner(block, [](void* p) {
    auto* b = static_cast<PooledBlock*>(p);
    pool_release(*b);
    delete b;
  });
  return py::array_t<T>({static_cast<py::ssize_t>(n)}, {static_cast<py::ssize_t>(sizeof(T))},
                        static_cast<T*>(block->ptr) + start, owner);
}

// A 1-D array of n elements of T: pooled memory when it is large, numpy's otherwise.
template <typename T>
py::array_t<T> pooled_array(int64_t n) {
  const size_t bytes = static_cast<size_t>(n) * sizeof(T);
  if (bytes < kPooledMinBytes) return py::array_t<T>(n);
  return array_in_block<T>(pool_acquire(bytes), n);
}

}  // namespace sparseforge::bind
