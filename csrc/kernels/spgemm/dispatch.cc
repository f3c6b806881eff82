// spgemm driver: flop count, flop-balanced row partition, symbolic pass, exact allocation (by the
// caller), numeric pass, each on num_threads() threads with the kernel chosen for active_isa().
#include <algorithm>
#include <atomic>
#include <string>

#include "sparseforge/threading.h"
#include "spgemm.h"

namespace sparseforge {

template <typename V, typename I>
SpgemmKernel<V, I> select_spgemm(Isa isa) {
#if defined(SPARSEFORGE_HAVE_AVX2)
  if (isa == Isa::kAvx2) return {&spgemm_symbolic_avx2<I>, &spgemm_numeric_avx2<V, I>, Isa::kAvx2};
#endif
  return {&spgemm_symbolic_scalar<I>, &spgemm_numeric_scalar<V, I>, Isa::kScalar};
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

void spgemm_balance_rows(const int64_t* flop, int64_t m, int parts, int64_t* bounds) {
  int64_t total = 0;
  for (int64_t i = 0; i < m; ++i) total += flop[i] + 1;
  bounds[0] = 0;
  int p = 1;
  int64_t acc = 0;
  for (int64_t i = 0; i < m && p < parts; ++i) {
    acc += flop[i] + 1;
    // Close part p-1 after row i once the running cost reaches p/parts of the total.
    while (p < parts && acc * parts >= total * p) bounds[p++] = i + 1;
  }
  while (p <= parts) bounds[p++] = m;
}

namespace {
int spgemm_parts(int64_t total_flop, int64_t rows) {
  // A thread per ~1M partial products (about a millisecond): below that, starting and joining a thread
  // (worse on a busy machine, where it waits for a time slice) costs more than it saves.
  // With several threads, 4 flop-balanced parts per thread: parallel_for's pool hands parts out
  // dynamically, so a thread that loses its core for a while does not hold up the whole product.
  const int64_t by_work = std::max<int64_t>(1, (total_flop + rows) >> 20);
  const int64_t nt = num_threads();
  const int64_t want = nt > 1 ? 4 * nt : 1;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(want, by_work)));
}
}  // namespace

template <typename I>
int64_t spgemm_symbolic(const CsrRef<void, I>& a, const CsrRef<void, I>& b, I* c_indptr, int64_t* flop,
                        std::vector<int64_t>* bounds) {
  // Symbolic pass does not depend on V; the float instantiation's symbolic kernel is the same code.
  SpgemmSymbolicFn<I> fn = select_spgemm<float, I>(active_isa()).symbolic;
  const int64_t m = a.rows;
  const int64_t total = spgemm_row_flops(a, b, flop);
  const int parts = spgemm_parts(total, m);
  bounds->assign(static_cast<size_t>(parts) + 1, 0);
  spgemm_balance_rows(flop, m, parts, bounds->data());
  c_indptr[0] = 0;
  I* counts = c_indptr + 1;
  const std::vector<int64_t>& bd = *bounds;
  parallel_for(parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) fn(a, b, flop, bd[p], bd[p + 1], counts);
  });
  int64_t nnz = 0;
  for (int64_t i = 0; i < m; ++i) {
    nnz += counts[i];
    counts[i] = static_cast<I>(nnz);  // may wrap for int32; the caller checks the returned total
  }
  return nnz;
}

template <typename V, typename I>
void spgemm_numeric(const CsrRef<V, I>& a, const CsrRef<V, I>& b, const int64_t* flop,
                    const std::vector<int64_t>& bounds, const I* c_indptr, I* c_indices, V* c_data) {
  SpgemmNumericFn<V, I> fn = select_spgemm<V, I>(active_isa()).numeric;
  const int64_t parts = static_cast<int64_t>(bounds.size()) - 1;
  parallel_for(parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) fn(a, b, flop, bounds[p], bounds[p + 1], c_indptr, c_indices, c_data);
  });
}

template <typename I>
std::string spgemm_check_csr(const I* indptr, const I* indices, int64_t rows, int64_t cols, int64_t nnz) {
  if (indptr[0] != 0) return "indptr[0] must be 0, got " + std::to_string(static_cast<int64_t>(indptr[0]));
  if (static_cast<int64_t>(indptr[rows]) != nnz)
    return "indptr[-1] must equal len(indices) = " + std::to_string(nnz) + ", got " +
           std::to_string(static_cast<int64_t>(indptr[rows]));
  // indptr is checked serially first: the per-row checks below index with it.
  for (int64_t i = 0; i < rows; ++i)
    if (indptr[i + 1] < indptr[i])
      return "indptr must be non-decreasing, but indptr[" + std::to_string(i + 1) + "] = " +
             std::to_string(static_cast<int64_t>(indptr[i + 1])) + " < indptr[" + std::to_string(i) + "] = " +
             std::to_string(static_cast<int64_t>(indptr[i]));
  std::atomic<int64_t> bad_row{rows};
  const int64_t grain = std::max<int64_t>(1, rows * (int64_t{1} << 18) / std::max<int64_t>(nnz + rows, 1));
  parallel_for(rows, grain, [&](int64_t r0, int64_t r1) {
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
  template int64_t spgemm_symbolic<I>(const CsrRef<void, I>&, const CsrRef<void, I>&, I*, int64_t*,           \
                                      std::vector<int64_t>*);                                                  \
  template std::string spgemm_check_csr<I>(const I*, const I*, int64_t, int64_t, int64_t);
#define SPGEMM_INST_VI(V, I)                                                                                   \
  template SpgemmKernel<V, I> select_spgemm<V, I>(Isa);                                                        \
  template void spgemm_numeric<V, I>(const CsrRef<V, I>&, const CsrRef<V, I>&, const int64_t*,                \
                                     const std::vector<int64_t>&, const I*, I*, V*);
SPGEMM_INST_I(int32_t)
SPGEMM_INST_I(int64_t)
SPGEMM_INST_VI(float, int32_t)
SPGEMM_INST_VI(float, int64_t)
SPGEMM_INST_VI(double, int32_t)
SPGEMM_INST_VI(double, int64_t)

}  // namespace sparseforge
