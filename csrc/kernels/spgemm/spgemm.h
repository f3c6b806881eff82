// spgemm: C = A·B for CSR matrices, row-wise (Gustavson) with a per-row hash accumulator, or a dense
// accumulator for rows whose flop count makes it cheaper (the SMASH design on a CPU).
//
// Two passes. The first computes each row once (fused symbolic + numeric) — in place in C when the caller
// reserved C's storage up front (SpgemmPlan::direct_*), else into a per-part buffer while the call's budget
// lasts — and only counts the distinct columns of the other rows; the second copies the buffered rows into
// C and computes the counted ones in place. C's arrays hold exactly nnz(C) entries.
// Output column indices are sorted. Every output value
// is summed in the order of A's row (k ascending), as scipy does, so values match scipy bit for bit.
// Entries that cancel to exactly 0.0 are kept (structural result); scipy drops them.
//
// Inputs must be canonical CSR (indptr non-decreasing from 0, indices in range, sorted and unique per
// row); the binding checks that before any kernel runs.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "sparseforge/common.h"

namespace sparseforge {

template <typename V, typename I>
struct CsrRef {
  int64_t rows = 0, cols = 0;
  const I* indptr = nullptr;
  const I* indices = nullptr;
  const V* data = nullptr;
};

// Fused-pass buffers come in chunks of kSpgemmChunkBytes (one 2 MiB huge page each), taken from a
// process-wide pool that keeps up to the fuse budget of them between calls: fresh pages cost a page
// fault each (0.35 ms per MB on 4 KiB pages here), which would eat what fusing saves.
constexpr int64_t kSpgemmChunkBytes = int64_t{2} << 20;
void* spgemm_chunk_acquire();       // nullptr when out of memory
void spgemm_chunk_release(void* c);
void spgemm_release_pool();         // frees the chunks the pool keeps

// The buffer of one part of the fused pass (see spgemm_passes.h): the columns and values of the rows it
// computed, in row order, until they are copied into C. A row is placed whole in one chunk (at `used`,
// with room for its bound min(flop, cols)); the next chunk starts when the bound does not fit. `runs`
// records where each run of consecutive buffered rows sits, so the second pass can cut the copy-out into
// equal pieces for all threads. Chunks are drawn from the call's allowance (`chunks_left`, shared by all
// parts); chunks_left == nullptr turns fusing off.
// One cache line each: the parts sit side by side in SpgemmPlan::parts and every row written bumps its
// part's `used`, so two parts sharing a line made the threads fight over it on every row (Poisson 2-D on
// two threads: 5.6 -> 4.6 ms, 1.46x -> 1.75x over one thread).
template <typename V, typename I>
struct SpgemmHalves;

template <typename V, typename I>
struct alignas(64) SpgemmPart {
  // Entries per chunk: columns first, then values (8-aligned).
  static constexpr int64_t kEntries = (kSpgemmChunkBytes / static_cast<int64_t>(sizeof(I) + sizeof(V))) & ~int64_t{7};
  // Rows [row0, row1) sit contiguously in chunks[chunk] from entry `from`.
  struct Run {
    int64_t row0, row1, chunk, from;
  };
  std::vector<void*> chunks;
  std::vector<Run> runs;
  int64_t used = 0;
  int64_t deferred = 0;  // rows left to the second pass
  int64_t taken = 0;     // rows this thread's buffer took from another thread's half (SpgemmHalves)
  int64_t band = 0;      // rows computed as band rows (spgemm_band.h)
  int64_t streamed = 0;  // rows written out through a stage (spgemm_stream.h)
  std::atomic<int64_t>* chunks_left = nullptr;
  // Direct part (the first part, when the caller gave C's storage up front, SpgemmPlan::direct_*): its
  // rows go straight to C's arrays, one after the other from entry 0, which is where they belong, so
  // they are never copied; rows left to the second pass keep their slots. `used` counts entries there.
  // With other parts running, a direct part draws on the call's allowance too, a chunk per kEntries it
  // writes, and stops computing rows in the first pass when it runs out, as they do: otherwise it would
  // compute all its rows in the first pass while the others leave theirs to the second, and the passes
  // would no longer balance across threads (R-MAT on two threads: 208 -> 300 ms).
  I* direct_j = nullptr;
  V* direct_x = nullptr;
  bool direct_budgeted = false;
  int64_t direct_paid = 0;  // entries covered by the chunks drawn so far
  // A backward direct part ends at direct_j/x instead of starting there (fused_rows_backward): the lower
  // half of a two-thread call, whose rows must end where the upper half's begin.
  bool backward = false;
  // Set on the two work items of a two-thread call with halves: the item's thread runs the halves
  // protocol (fused_rows_halves), and this part is its buffer for rows it takes from another's half.
  SpgemmHalves<V, I>* halves = nullptr;

  // Whether a direct part may compute its next row in place (always, when it is the only part).
  bool direct_allowance() {
    if (!direct_budgeted || used < direct_paid) return true;
    if (chunks_left == nullptr || chunks_left->fetch_sub(1) <= 0) {
      if (chunks_left != nullptr) chunks_left->fetch_add(1);
      return false;
    }
    direct_paid += kEntries;
    return true;
  }

  SpgemmPart() = default;
  SpgemmPart(const SpgemmPart&) = delete;
  SpgemmPart& operator=(const SpgemmPart&) = delete;
  ~SpgemmPart() { release(); }
  void release() {
    for (void* c : chunks) spgemm_chunk_release(c);
    chunks.clear();
    runs.clear();
  }
  // Row i was just placed at (back chunk, u); extends the last run or starts one.
  // Rows [i, i + n) were written to the back chunk from entry u.
  void note_buffered(int64_t i, int64_t u, int64_t n = 1) {
    const int64_t c = static_cast<int64_t>(chunks.size()) - 1;
    if (!runs.empty() && runs.back().row1 == i && runs.back().chunk == c) {
      runs.back().row1 = i + n;
      return;
    }
    runs.push_back({i, i + n, c, u});
  }
  static I* cols_of(void* c) { return static_cast<I*>(c); }
  static V* vals_of(void* c) { return reinterpret_cast<V*>(static_cast<char*>(c) + kEntries * sizeof(I)); }
  // Makes room for a row of at most `bound` entries at (back chunk, used); false when no chunk is left.
  bool place(int64_t bound) {
    if (!chunks.empty() && used + bound <= kEntries) return true;
    if (chunks_left == nullptr || bound > kEntries) return false;
    if (chunks_left->fetch_sub(1) <= 0) {
      chunks_left->fetch_add(1);
      return false;
    }
    void* c = spgemm_chunk_acquire();
    if (c == nullptr) return false;
    chunks.push_back(c);
    used = 0;
    return true;
  }
};

// The rows still unclaimed of the two halves of a two-thread call written in place: the lower half
// [lo[0], hi[0]) is written backwards by its owner, who claims rows from its top; the upper half
// [lo[1], hi[1]) forwards by its owner, from its bottom. Each thread owns a half nobody owns yet; with none
// left, it takes rows from the far end of a half still being written (the bottom of the lower, the top
// of the upper) into its own buffer, to be copied after the pass. A late second thread (a worker that
// was asleep) thus costs only the rows the first computed alone, not half the product.
template <typename V, typename I>
struct SpgemmHalves {
  std::atomic_flag busy = ATOMIC_FLAG_INIT;
  int64_t lo[2] = {0, 0}, hi[2] = {0, 0};
  bool owned[2] = {false, false};
  int64_t claim = 1;  // rows are claimed in runs of about this much sum(nnz(A_i) + 1)
  int64_t b_longest = 0;  // B's longest row: bounds the lower half's rows (fused_rows_backward)
  const I* a_indptr = nullptr;
  SpgemmPart<V, I>* lower = nullptr;  // backward, ends at the split point
  SpgemmPart<V, I>* upper = nullptr;  // forward, starts there
  void lock() {
    while (busy.test_and_set(std::memory_order_acquire)) {
    }
  }
  void unlock() { busy.clear(std::memory_order_release); }
  int64_t cost(int64_t r0, int64_t r1) const {
    return static_cast<int64_t>(a_indptr[r1]) - a_indptr[r0] + (r1 - r0);
  }
  // With the lock held: the first row x in [r0, r1] with cost(x, r1) <= claim (at least one row), by
  // bisection; and the last row y with cost(r0, y) <= claim.
  int64_t from_top(int64_t r0, int64_t r1) const {
    int64_t l = r0, h = r1 - 1;
    while (l < h) {
      const int64_t mid = l + (h - l) / 2;
      if (cost(mid, r1) <= claim) h = mid;
      else l = mid + 1;
    }
    return l;
  }
  int64_t from_bottom(int64_t r0, int64_t r1) const {
    int64_t l = r0 + 1, h = r1;
    while (l < h) {
      const int64_t mid = l + (h - l + 1) / 2;
      if (cost(r0, mid) <= claim) l = mid;
      else h = mid - 1;
    }
    return l;
  }
};

// Row-range kernels. `flop` is [a.rows] with flop[i] = sum over k in A_i of nnz(B_k).
// fused: writes the length of every row i in [r0, r1) to counts[i] (and flop[i] for the rows it leaves to
// numeric); rows it computed
// (fused[i] = 1) are in part's buffer (or in place in C for a direct part), the others (fused[i] = 0)
// are left to numeric.
// numeric: computes the rows of [r0, r1) that fused left to it (fused[i] = 0) into C, given C's final
// indptr; spgemm_numeric copies the buffered ones (part->runs) itself.
template <typename V, typename I>
using SpgemmFusedFn = void (*)(const CsrRef<V, I>& a, const CsrRef<V, I>& b, int64_t* flop, int64_t r0,
                               int64_t r1, I* counts, uint8_t* fused, SpgemmPart<V, I>* part);
template <typename V, typename I>
using SpgemmNumericFn = void (*)(const CsrRef<V, I>& a, const CsrRef<V, I>& b, const int64_t* flop, int64_t r0,
                                 int64_t r1, const I* c_indptr, I* c_indices, V* c_data, const uint8_t* fused,
                                 const SpgemmPart<V, I>* part);

template <typename V, typename I>
struct SpgemmKernel {
  SpgemmFusedFn<V, I> fused;
  SpgemmNumericFn<V, I> numeric;
  Isa isa;
};

#define SPARSEFORGE_SPGEMM_DECLARE(suffix)                                                                     \
  template <typename V, typename I>                                                                            \
  void spgemm_fused_##suffix(const CsrRef<V, I>&, const CsrRef<V, I>&, int64_t*, int64_t, int64_t, I*,        \
                             uint8_t*, SpgemmPart<V, I>*);                                                     \
  template <typename V, typename I>                                                                            \
  void spgemm_numeric_##suffix(const CsrRef<V, I>&, const CsrRef<V, I>&, const int64_t*, int64_t, int64_t,    \
                               const I*, I*, V*, const uint8_t*, const SpgemmPart<V, I>*);

SPARSEFORGE_SPGEMM_DECLARE(scalar)
#if defined(SPARSEFORGE_HAVE_AVX2)
SPARSEFORGE_SPGEMM_DECLARE(avx2)
#endif
#if defined(SPARSEFORGE_HAVE_AVX512)
SPARSEFORGE_SPGEMM_DECLARE(avx512)
#endif

template <typename V, typename I>
SpgemmKernel<V, I> select_spgemm(Isa isa);

// The structure passes outside the row kernels, one copy per ISA (spgemm_checks.h).
template <typename I>
struct SpgemmChecks {
  // Rows [r0, r1) canonical: columns in [0, cols), strictly increasing (indptr checked already).
  bool (*rows_canonical)(const I* indptr, const I* indices, int64_t r0, int64_t r1, int64_t cols);
  // indptr[0, rows] non-decreasing; then *longest = the longest row.
  bool (*indptr_order)(const I* indptr, int64_t rows, int64_t* longest);
  // counts[0, m) -> inclusive prefix sums in place (wrapping in I); returns the exact total.
  int64_t (*prefix)(I* counts, int64_t m);
  // Sum of n flag bytes.
  int64_t (*count_flags)(const uint8_t* flags, int64_t n);
};
template <typename I>
SpgemmChecks<I> spgemm_checks_scalar();
#if defined(SPARSEFORGE_HAVE_AVX2)
template <typename I>
SpgemmChecks<I> spgemm_checks_avx2();
#endif
#if defined(SPARSEFORGE_HAVE_AVX512)
template <typename I>
SpgemmChecks<I> spgemm_checks_avx512();
#endif
template <typename I>
SpgemmChecks<I> select_spgemm_checks(Isa isa);

template <typename V, typename I>
inline CsrRef<void, I> structure_of(const CsrRef<V, I>& m) {
  CsrRef<void, I> s;
  s.rows = m.rows, s.cols = m.cols, s.indptr = m.indptr, s.indices = m.indices, s.data = m.data;
  return s;
}

// Partial-product count of every row (the SMASH / Gustavson flop count), on num_threads() threads.
// Returns the total.
template <typename I>
int64_t spgemm_row_flops(const CsrRef<void, I>& a, const CsrRef<void, I>& b, int64_t* flop);

// Splits rows [0, m) into `parts` contiguous ranges of about equal cost, cost(i) = nnz(A_i) + 1.
// bounds gets parts + 1 entries.
template <typename I>
void spgemm_split_rows(const I* indptr, int64_t m, int parts, int64_t* bounds);

// The row check of the inputs (indices in range, sorted and unique per row), run inside the first pass's
// parallel region instead of a region of its own: every thread that arrives claims pieces of it, and none
// computes a row before all pieces are done. A worker that was asleep thus costs the rows the calling
// thread checks alone while it wakes, not a wait at a separate region's closing barrier (Poisson 2-D on
// two threads after an idle pause: ~0.5 ms). indptr must have been checked already (spgemm_check_indptr).
template <typename I>
struct SpgemmCheck {
  struct Piece {
    const I* indptr;
    const I* indices;
    int64_t r0, r1, cols;
    int which;  // 0: a, 1: b
  };
  std::vector<Piece> pieces;
  std::atomic<int64_t> next{0}, done{0};
  std::atomic<int> bad{-1};  // the input that failed (the lowest index), -1 none
  bool (*rows_canonical)(const I*, const I*, int64_t, int64_t, int64_t) =
      select_spgemm_checks<I>(active_isa()).rows_canonical;
  // Adds matrix `which`'s rows in pieces of about 64k entries.
  void add(const I* indptr, const I* indices, int64_t rows, int64_t cols, int which);
  // Claims and checks pieces until none is left, then waits for the other threads' pieces; true when
  // every row is canonical.
  bool run();
};

// State carried from the first pass to the second: row flops, the part bounds, which rows were fused, and
// the parts' buffers (freed with the plan).
template <typename V, typename I>
struct SpgemmPlan {
  // flop and fused: [a.rows], left uninitialised (zero-filling flop cost ~40 us of a 2.4 ms two-thread
  // Poisson product, all serial): the first pass writes fused[i] for every row, and flop[i] for the rows it
  // leaves to the second pass, the only ones whose flop is read.
  std::unique_ptr<int64_t[]> flop;
  std::unique_ptr<uint8_t[]> fused;
  std::vector<int64_t> bounds;
  std::unique_ptr<SpgemmPart<V, I>[]> parts;  // one per row range; with halves, 2 more (the threads' buffers)
  int64_t n_parts = 0;
  std::unique_ptr<SpgemmHalves<V, I>> halves;
  std::atomic<int64_t> chunks_left{0};
  int64_t fused_rows = 0;  // how many rows the first pass computed (for tests and benchmarks)
  int64_t taken_rows = 0;  // with halves: rows taken from the far end of another thread's half
  int64_t band_rows = 0;   // rows computed as band rows (spgemm_band.h)
  int64_t streamed_rows = 0;  // rows written out through a stage with non-temporal stores (spgemm_stream.h)
  // Optional, set by the caller before the first pass: C's indices and values storage, each with room for
  // at least spgemm_direct_bound() entries (a reservation: only what is written costs memory). The first
  // part then writes its rows there in place (SpgemmPart::direct_*), and numeric must get the same arrays.
  I* direct_j = nullptr;
  V* direct_x = nullptr;
  int64_t direct_longest = 0;  // B's longest row (the bound's factor), for splitting the reservation
  // Set by the first pass: how many parts wrote in place (0: none, C is allocated afterwards), and
  // where C's first entry is within direct_* (nonzero when a lower half was written backwards).
  int direct_parts = 0;
  int64_t direct_start = 0;
  SpgemmCheck<I>* check = nullptr;  // optional: rows checked inside the first pass (SpgemmCheck)
};

// The upper bound on the nnz of rows [r0, r1) of C that B's longest row (from spgemm_check_indptr) gives
// without a pass over A: nnz(A[r0:r1]) times B's longest row, at most (r1 - r0) * cols (-1 when it
// overflows int64). The bounds of two row ranges add up to at most the bound of their union.
template <typename I>
int64_t spgemm_direct_bound(const I* a_indptr, int64_t r0, int64_t r1, int64_t longest, int64_t cols);

// Bytes all parts' buffers of one call may hold together, and the most the chunk pool keeps between calls:
// SPARSEFORGE_SPGEMM_FUSE_MB (0 turns fusing off), default kSpgemmFuseBudgetMb.
constexpr int64_t kSpgemmFuseBudgetMb = 64;
int64_t spgemm_fuse_budget_bytes();

// Whole product with the kernel chosen for active_isa(), on num_threads() threads, rows balanced by flops.
// first pass: fills c_indptr [a.rows + 1] and returns nnz(C); rows within the budget are computed already.
// With plan->check, returns -1 (computing nothing) when an input's rows are not canonical.
// numeric: fills C (allocated by the caller with exactly nnz(C) entries) and frees the parts' buffers.
template <typename V, typename I>
int64_t spgemm_symbolic(const CsrRef<V, I>& a, const CsrRef<V, I>& b, I* c_indptr, SpgemmPlan<V, I>* plan);
template <typename V, typename I>
void spgemm_numeric(const CsrRef<V, I>& a, const CsrRef<V, I>& b, SpgemmPlan<V, I>* plan, const I* c_indptr,
                    I* c_indices, V* c_data);

// Checks that (indptr, indices) is canonical CSR with `cols` columns; returns "" or what is wrong
// (the first offending row), on num_threads() threads.
template <typename I>
std::string spgemm_check_csr(const I* indptr, const I* indices, int64_t rows, int64_t cols, int64_t nnz);
// Only its indptr part (serial: the row checks index with it); "" or what is wrong. With `longest`, also
// the longest row's length, from the same pass.
template <typename I>
std::string spgemm_check_indptr(const I* indptr, int64_t rows, int64_t nnz, int64_t* longest = nullptr);

}  // namespace sparseforge
