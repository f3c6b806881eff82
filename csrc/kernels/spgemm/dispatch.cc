// spgemm driver: flop count, flop-balanced row partition, symbolic pass, exact allocation (by the
// caller), numeric pass, each on num_threads() threads with the kernel chosen for active_isa().
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

#if !defined(__wasi__)
#include <sys/mman.h>
#endif
#include <string>
#include <type_traits>

#include "sparseforge/threading.h"
#include "spgemm.h"

namespace sparseforge {

template <typename V, typename I>
SpgemmKernel<V, I> select_spgemm(Isa isa) {
#if defined(SPARSEFORGE_HAVE_AVX512)
  if (isa == Isa::kAvx512) return {&spgemm_fused_avx512<V, I>, &spgemm_numeric_avx512<V, I>, Isa::kAvx512};
#endif
#if defined(SPARSEFORGE_HAVE_AVX2)
  if (runs_avx2(isa)) return {&spgemm_fused_avx2<V, I>, &spgemm_numeric_avx2<V, I>, Isa::kAvx2};
#endif
  return {&spgemm_fused_scalar<V, I>, &spgemm_numeric_scalar<V, I>, Isa::kScalar};
}

template <typename I>
SpgemmChecks<I> select_spgemm_checks(Isa isa) {
#if defined(SPARSEFORGE_HAVE_AVX512)
  if (isa == Isa::kAvx512) return spgemm_checks_avx512<I>();
#endif
#if defined(SPARSEFORGE_HAVE_AVX2)
  if (runs_avx2(isa)) return spgemm_checks_avx2<I>();
#endif
  return spgemm_checks_scalar<I>();
}

template <typename I>
int64_t spgemm_row_flops(const CsrRef<void, I>& a, const CsrRef<void, I>& b, int64_t* flop) {
  const int nt = std::max(1, num_threads());
  std::vector<int64_t> partial(static_cast<size_t>(nt) + 1, 0);
  const int64_t m = a.rows;
  // Evenly split by rows; every chunk is O(nnz(A) / threads) index reads.
  const int64_t grain = 65536;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(nt, (m + grain - 1) / grain));
  const int64_t step = (m + chunks - 1) / std::max<int64_t>(chunks, 1);
  parallel_for(chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int64_t total = 0;
      for (int64_t i = c * step, ie = std::min(m, (c + 1) * step); i < ie; ++i) {
        int64_t f = 0;
        for (int64_t t = a.indptr[i], te = a.indptr[i + 1]; t < te; ++t) {
          const I k = a.indices[t];
          f += static_cast<int64_t>(b.indptr[k + 1]) - b.indptr[k];
        }
        flop[i] = f;
        total += f;
      }
      partial[static_cast<size_t>(c)] = total;
    }
  });
  int64_t total = 0;
  for (int64_t c = 0; c < chunks; ++c) total += partial[static_cast<size_t>(c)];
  return total;
}

template <typename I>
void spgemm_split_rows(const I* indptr, int64_t m, int parts, int64_t* bounds) {
  // cost(rows [0, r)) = indptr[r] + r is non-decreasing: each bound is a binary search, no pass over A.
  const int64_t total = static_cast<int64_t>(indptr[m]) + m;
  bounds[0] = 0;
  for (int p = 1; p < parts; ++p) {
    const int64_t want = (total * p + parts - 1) / parts;
    int64_t lo = bounds[p - 1], hi = m;  // first r with cost(r) >= want
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (static_cast<int64_t>(indptr[mid]) + mid < want) lo = mid + 1;
      else hi = mid;
    }
    bounds[p] = lo;
  }
  bounds[parts] = m;
}

namespace {
int spgemm_parts(int64_t est_flop, int64_t rows) {
  // A thread per ~1M partial products (about a millisecond): below that, starting and joining a thread
  // (worse on a busy machine, where it waits for a time slice) costs more than it saves.
  // With several threads, 4 parts per thread: parallel_for hands parts out dynamically, so a thread that
  // loses its core for a while does not hold up the whole product.
  // Parts come in multiples of the thread count: 3 equal parts on 2 threads cap the speed-up at 1.5
  // (Poisson 2-D, ~4M products, measured 1.46x before this).
  const int64_t by_work = std::max<int64_t>(1, (est_flop + rows) >> 20);
  const int64_t nt = num_threads();
  if (nt <= 1 || by_work < nt) return static_cast<int>(std::min<int64_t>(by_work, std::max<int64_t>(nt, 1)));
  return static_cast<int>(nt * std::min<int64_t>(4, by_work / nt));
}
}  // namespace

namespace {
// A spin lock, not std::mutex (the wasm32-wasi libc++ has none); it guards a push or a pop.
std::atomic_flag g_pool_busy = ATOMIC_FLAG_INIT;
std::vector<void*> g_pool;  // free chunks kept between calls
struct PoolLock {
  PoolLock() {
    while (g_pool_busy.test_and_set(std::memory_order_acquire)) {
    }
  }
  ~PoolLock() { g_pool_busy.clear(std::memory_order_release); }
};
}  // namespace

void* spgemm_chunk_acquire() {
  {
    PoolLock lk;
    if (!g_pool.empty()) {
      void* c = g_pool.back();
      g_pool.pop_back();
      return c;
    }
  }
  void* c = std::aligned_alloc(static_cast<size_t>(kSpgemmChunkBytes), static_cast<size_t>(kSpgemmChunkBytes));
#if defined(MADV_HUGEPAGE)
  // One huge page per chunk: a single fault on first use instead of 512 (THP is often madvise-only).
  if (c != nullptr) madvise(c, static_cast<size_t>(kSpgemmChunkBytes), MADV_HUGEPAGE);
#endif
  return c;
}

void spgemm_chunk_release(void* c) {
  const size_t keep = static_cast<size_t>(spgemm_fuse_budget_bytes() / kSpgemmChunkBytes);
  {
    PoolLock lk;
    if (g_pool.size() < keep) {
      g_pool.push_back(c);
      return;
    }
  }
  std::free(c);
}

void spgemm_release_pool() {
  std::vector<void*> pool;
  {
    PoolLock lk;
    pool.swap(g_pool);
  }
  for (void* c : pool) std::free(c);
}

int64_t spgemm_fuse_budget_bytes() {
  int64_t mb = kSpgemmFuseBudgetMb;
  if (const char* env = std::getenv("SPARSEFORGE_SPGEMM_FUSE_MB")) mb = std::max<int64_t>(0, std::atoll(env));
  return mb << 20;
}

template <typename V, typename I>
int64_t spgemm_symbolic(const CsrRef<V, I>& a, const CsrRef<V, I>& b, I* c_indptr, SpgemmPlan<V, I>* plan) {
  SpgemmFusedFn<V, I> fn = select_spgemm<V, I>(active_isa()).fused;
  const int64_t m = a.rows;
  plan->flop.reset(new int64_t[static_cast<size_t>(m) + 1]);
  plan->fused.reset(new uint8_t[static_cast<size_t>(m) + 1]);
  // No separate flop pass: the first pass counts each row's products as it reaches it. Parts are split
  // by nnz(A_i) + 1 instead of by flops (the same balance within 1-3% on every benchmark family, with
  // parts claimed dynamically); the total flops are estimated as nnz(A) * nnz(B) / B.rows.
  const double est = static_cast<double>(a.indptr[m]) * static_cast<double>(b.indptr[b.rows]) /
                     static_cast<double>(std::max<int64_t>(b.rows, 1));
  int parts = spgemm_parts(static_cast<int64_t>(std::min(est, 1e18)), m);
  // With C's storage given (direct_*), rows are written in place: with one part all of them; with two
  // threads, two halves meeting at the reservation's split point (the lower half written backwards, so
  // nothing is copied); otherwise the first part, the others through the fused-pass buffer. A budget of 0
  // keeps the plain two passes (tests and comparisons).
  const int64_t chunks = spgemm_fuse_budget_bytes() / kSpgemmChunkBytes;
  const bool direct = chunks > 0 && plan->direct_j != nullptr && plan->direct_x != nullptr;
  const bool halves = direct && parts > 1 && num_threads() == 2 && plan->direct_longest > 0;
  if (halves) parts = 2;
  plan->bounds.assign(static_cast<size_t>(parts) + 1, 0);
  spgemm_split_rows(a.indptr, m, parts, plan->bounds.data());
  plan->chunks_left.store(chunks);
  plan->n_parts = parts + (halves ? 2 : 0);
  plan->parts.reset(new SpgemmPart<V, I>[static_cast<size_t>(plan->n_parts)]);
  for (int64_t p = 0; p < plan->n_parts; ++p)
    plan->parts[static_cast<size_t>(p)].chunks_left = chunks > 0 ? &plan->chunks_left : nullptr;
  int64_t split = 0;  // entries of the reservation below the upper half
  if (halves) {
    const int64_t mid = plan->bounds[1];
    split = spgemm_direct_bound<I>(a.indptr, 0, mid, plan->direct_longest, b.cols);
    SpgemmPart<V, I>& lower = plan->parts[0];
    lower.direct_j = plan->direct_j + split, lower.direct_x = plan->direct_x + split;
    lower.backward = true;
    SpgemmPart<V, I>& upper = plan->parts[1];
    upper.direct_j = plan->direct_j + split, upper.direct_x = plan->direct_x + split;
    plan->halves.reset(new SpgemmHalves<V, I>());
    SpgemmHalves<V, I>& hv = *plan->halves;
    hv.lo[0] = 0, hv.hi[0] = mid, hv.lo[1] = mid, hv.hi[1] = m;
    hv.a_indptr = a.indptr;
    hv.b_longest = plan->direct_longest;
    hv.claim = std::max<int64_t>(1, hv.cost(0, m) / 64);  // a late thread's share ends within ~1.5%
    hv.lower = &lower, hv.upper = &upper;
    plan->parts[2].halves = plan->parts[3].halves = &hv;
    plan->direct_parts = 2;
  } else if (direct) {
    plan->parts[0].direct_j = plan->direct_j;
    plan->parts[0].direct_x = plan->direct_x;
    plan->parts[0].direct_budgeted = parts > 1;
    plan->direct_parts = 1;
  }
  c_indptr[0] = 0;
  I* counts = c_indptr + 1;
  const std::vector<int64_t>& bd = plan->bounds;
  int64_t* flop = plan->flop.get();
  uint8_t* fused = plan->fused.get();
  SpgemmPart<V, I>* part = plan->parts.get();
  SpgemmCheck<I>* check = plan->check;
  parallel_for(parts, 1, [&](int64_t p0, int64_t p1) {
    if (check != nullptr && !check->run()) return;
    for (int64_t p = p0; p < p1; ++p) fn(a, b, flop, bd[p], bd[p + 1], counts, fused, part + (halves ? 2 + p : p));
  });
  if (check != nullptr && check->bad.load() >= 0) return -1;
  const SpgemmChecks<I> pass = select_spgemm_checks<I>(active_isa());
  const int64_t nnz = pass.prefix(counts, m);  // may wrap for int32; the caller checks the returned total
  plan->fused_rows = pass.count_flags(fused, m);
  for (int64_t p = 0; p < plan->n_parts; ++p) plan->taken_rows += part[p].taken, plan->band_rows += part[p].band,
    plan->streamed_rows += part[p].streamed;
  // The lower half's rows, its owner's and any taken from its bottom, end at the split point.
  if (halves) plan->direct_start = split - (plan->bounds[1] > 0 ? static_cast<int64_t>(c_indptr[plan->bounds[1]]) : 0);
  return nnz;
}

template <typename V, typename I>
void spgemm_numeric(const CsrRef<V, I>& a, const CsrRef<V, I>& b, SpgemmPlan<V, I>* plan, const I* c_indptr,
                    I* c_indices, V* c_data) {
  using Part = SpgemmPart<V, I>;
  SpgemmNumericFn<V, I> fn = select_spgemm<V, I>(active_isa()).numeric;
  const std::vector<int64_t>& bd = plan->bounds;
  const int64_t parts = static_cast<int64_t>(bd.size()) - 1;
  const int64_t* flop = plan->flop.get();
  const uint8_t* fused = plan->fused.get();
  Part* part = plan->parts.get();
  // The buffered rows' copy-out, cut into pieces of at most kPiece entries: a part's copy is memory-bound
  // work that one thread would otherwise do alone (on two threads with a direct first part, the second
  // part's copy was all of the second pass). The parts that left rows to this pass compute them first.
  constexpr int64_t kPiece = int64_t{1} << 16;
  struct Piece {
    int64_t dst, len;
    const I* src_j;
    const V* src_x;
  };
  std::vector<Piece> pieces;
  for (int64_t p = 0; p < plan->n_parts; ++p)
    for (const typename Part::Run& r : part[p].runs) {
      void* chunk = part[p].chunks[static_cast<size_t>(r.chunk)];
      const int64_t dst = c_indptr[r.row0], len = static_cast<int64_t>(c_indptr[r.row1]) - dst;
      for (int64_t o = 0; o < len; o += kPiece)
        pieces.push_back({dst + o, std::min(kPiece, len - o), Part::cols_of(chunk) + r.from + o,
                          Part::vals_of(chunk) + r.from + o});
    }
  // Row ranges with rows left to this pass (with halves, a range's rows may be in any part's hands).
  std::vector<int64_t> computing;
  int64_t deferred = 0;
  for (int64_t p = 0; p < plan->n_parts; ++p) deferred += part[p].deferred;
  for (int64_t p = 0; p < parts; ++p)
    if (part[p].deferred > 0 || (plan->halves != nullptr && deferred > 0)) computing.push_back(p);
  // Two regions, not one list of items: parallel_for hands out contiguous ranges of items, which would
  // put every part's computing into one thread's range.
  parallel_for(static_cast<int64_t>(computing.size()), 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t p = computing[static_cast<size_t>(i)];
      fn(a, b, flop, bd[p], bd[p + 1], c_indptr, c_indices, c_data, fused, part + p);
    }
  });
  // A thread copies at least kPieceGrain pieces (~3 MB): a small copy is not worth waking one.
  constexpr int64_t kPieceGrain = 4;
  parallel_for(static_cast<int64_t>(pieces.size()), kPieceGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const Piece& q = pieces[static_cast<size_t>(i)];
      std::memcpy(c_indices + q.dst, q.src_j, static_cast<size_t>(q.len) * sizeof(I));
      std::memcpy(c_data + q.dst, q.src_x, static_cast<size_t>(q.len) * sizeof(V));
    }
  });
  for (int64_t p = 0; p < plan->n_parts; ++p) part[p].release();
}

template <typename I>
int64_t spgemm_direct_bound(const I* a_indptr, int64_t r0, int64_t r1, int64_t longest, int64_t cols) {
  const int64_t nnz_a = static_cast<int64_t>(a_indptr[r1]) - a_indptr[r0];
  int64_t bound = 0, dense = 0;
  if (__builtin_mul_overflow(nnz_a, longest, &bound)) bound = INT64_MAX;
  if (!__builtin_mul_overflow(r1 - r0, cols, &dense)) bound = std::min(bound, dense);
  return bound == INT64_MAX ? -1 : bound;
}

template <typename I>
std::string spgemm_check_indptr(const I* indptr, int64_t rows, int64_t nnz, int64_t* longest) {
  if (indptr[0] != 0) return "indptr[0] must be 0, got " + std::to_string(static_cast<int64_t>(indptr[0]));
  if (static_cast<int64_t>(indptr[rows]) != nnz)
    return "indptr[-1] must equal len(indices) = " + std::to_string(nnz) + ", got " +
           std::to_string(static_cast<int64_t>(indptr[rows]));
  // One branch-free pass (the ISA's copy, it vectorises) for the order and the longest row; a row-by-row
  // loop with an early exit, then a second pass for B's longest row, cost ~0.1 ms of serial time per
  // Poisson 2-D call, the scalar pass 0.08 ms.
  int64_t most = 0;
  if (!select_spgemm_checks<I>(active_isa()).indptr_order(indptr, rows, &most))
    for (int64_t i = 0; i < rows; ++i)
      if (indptr[i + 1] < indptr[i])
        return "indptr must be non-decreasing, but indptr[" + std::to_string(i + 1) + "] = " +
               std::to_string(static_cast<int64_t>(indptr[i + 1])) + " < indptr[" + std::to_string(i) + "] = " +
               std::to_string(static_cast<int64_t>(indptr[i]));
  if (longest != nullptr) *longest = most;
  return "";
}

template <typename I>
void SpgemmCheck<I>::add(const I* indptr, const I* indices, int64_t rows, int64_t cols, int which) {
  constexpr int64_t kPiece = int64_t{1} << 16;  // entries + rows
  for (int64_t r0 = 0; r0 < rows;) {
    // The last row r1 with indptr[r1] + r1 <= indptr[r0] + r0 + kPiece (at least one row), by bisection.
    const int64_t lim = static_cast<int64_t>(indptr[r0]) + r0 + kPiece;
    int64_t lo = r0 + 1, hi = rows;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo + 1) / 2;
      if (static_cast<int64_t>(indptr[mid]) + mid <= lim) lo = mid;
      else hi = mid - 1;
    }
    pieces.push_back({indptr, indices, r0, lo, cols, which});
    r0 = lo;
  }
}

template <typename I>
bool SpgemmCheck<I>::run() {
  const int64_t n = static_cast<int64_t>(pieces.size());
  for (int64_t q; (q = next.fetch_add(1)) < n; done.fetch_add(1)) {
    const Piece& p = pieces[static_cast<size_t>(q)];
    if (rows_canonical(p.indptr, p.indices, p.r0, p.r1, p.cols)) continue;
    int cur = bad.load();
    while ((cur < 0 || p.which < cur) && !bad.compare_exchange_weak(cur, p.which)) {
    }
  }
  while (done.load(std::memory_order_acquire) < n) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
  return bad.load() < 0;
}

template <typename I>
std::string spgemm_check_csr(const I* indptr, const I* indices, int64_t rows, int64_t cols, int64_t nnz) {
  // indptr is checked serially first: the per-row checks below index with it.
  const std::string bad_indptr = spgemm_check_indptr(indptr, rows, nnz);
  if (!bad_indptr.empty()) return bad_indptr;
  std::atomic<int64_t> bad_row{rows};
  const auto rows_canonical = select_spgemm_checks<I>(active_isa()).rows_canonical;
  // Chunks of ~256k entries. (The product itself checks its inputs inside its first pass: SpgemmCheck.)
  const int64_t grain = std::max<int64_t>(1, rows * (int64_t{1} << 18) / std::max<int64_t>(nnz + rows, 1));
  parallel_for(rows, grain, [&](int64_t r0, int64_t r1) {
    if (rows_canonical(indptr, indices, r0, r1, cols)) return;
    for (int64_t i = r0; i < r1; ++i) {
      I prev = -1;
      for (int64_t t = indptr[i], te = indptr[i + 1]; t < te; ++t) {
        const I j = indices[t];
        if (j <= prev || static_cast<int64_t>(j) >= cols) {
          int64_t cur = bad_row.load();
          while (i < cur && !bad_row.compare_exchange_weak(cur, i)) {
          }
          return;
        }
        prev = j;
      }
    }
  });
  const int64_t i = bad_row.load();
  if (i == rows) return "";
  I prev = -1;
  for (int64_t t = indptr[i], te = indptr[i + 1]; t < te; ++t) {
    const int64_t j = indices[t];
    if (j < 0 || j >= cols)
      return "row " + std::to_string(i) + " has column index " + std::to_string(j) + " outside [0, " +
             std::to_string(cols) + ")";
    if (j == prev) return "row " + std::to_string(i) + " has duplicate column index " + std::to_string(j);
    if (j < prev)
      return "row " + std::to_string(i) + " has unsorted column indices (" + std::to_string(j) + " after " +
             std::to_string(static_cast<int64_t>(prev)) + ")";
    prev = static_cast<I>(j);
  }
  return "";
}

#define SPGEMM_INST_I(I)                                                                                       \
  template int64_t spgemm_row_flops<I>(const CsrRef<void, I>&, const CsrRef<void, I>&, int64_t*);             \
  template std::string spgemm_check_csr<I>(const I*, const I*, int64_t, int64_t, int64_t);               \
  template std::string spgemm_check_indptr<I>(const I*, int64_t, int64_t, int64_t*);                                 \
  template struct SpgemmCheck<I>;                                                                           \
  template SpgemmChecks<I> select_spgemm_checks<I>(Isa);                                                     \
  template int64_t spgemm_direct_bound<I>(const I*, int64_t, int64_t, int64_t, int64_t);                   \
  template void spgemm_split_rows<I>(const I*, int64_t, int, int64_t*);
#define SPGEMM_INST_VI(V, I)                                                                                   \
  template SpgemmKernel<V, I> select_spgemm<V, I>(Isa);                                                        \
  template int64_t spgemm_symbolic<V, I>(const CsrRef<V, I>&, const CsrRef<V, I>&, I*, SpgemmPlan<V, I>*);   \
  template void spgemm_numeric<V, I>(const CsrRef<V, I>&, const CsrRef<V, I>&, SpgemmPlan<V, I>*, const I*, I*, V*);
SPGEMM_INST_I(int32_t)
SPGEMM_INST_I(int64_t)
SPGEMM_INST_VI(float, int32_t)
SPGEMM_INST_VI(float, int64_t)
SPGEMM_INST_VI(double, int32_t)
SPGEMM_INST_VI(double, int64_t)

}  // namespace sparseforge
