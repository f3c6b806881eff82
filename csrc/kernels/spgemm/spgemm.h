// spgemm: C = A·B for CSR matrices, row-wise (Gustavson) with a per-row hash accumulator, or a dense
// accumulator for rows whose flop count makes it cheaper (the SMASH design on a CPU).
//
// Two passes over each row: a symbolic pass counts the distinct output columns so that C is allocated
// exactly, then a numeric pass computes the values. Output column indices are sorted. Every output value
// is summed in the order of A's row (k ascending), as scipy does, so values match scipy bit for bit.
// Entries that cancel to exactly 0.0 are kept (structural result); scipy drops them.
//
// Inputs must be canonical CSR (indptr non-decreasing from 0, indices in range, sorted and unique per
// row); the binding checks that before any kernel runs.
#pragma once

#include <cstdint>
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

// Row-range kernels. `flop` is [a.rows] with flop[i] = sum over k in A_i of nnz(B_k).
// symbolic: writes the distinct-column count of every row i in [r0, r1) to counts[i].
// numeric: fills C's rows [r0, r1) given C's final indptr.
template <typename I>
using SpgemmSymbolicFn = void (*)(const CsrRef<void, I>& a, const CsrRef<void, I>& b, const int64_t* flop,
                                  int64_t r0, int64_t r1, I* counts);
template <typename V, typename I>
using SpgemmNumericFn = void (*)(const CsrRef<V, I>& a, const CsrRef<V, I>& b, const int64_t* flop, int64_t r0,
                                 int64_t r1, const I* c_indptr, I* c_indices, V* c_data);

template <typename V, typename I>
struct SpgemmKernel {
  SpgemmSymbolicFn<I> symbolic;
  SpgemmNumericFn<V, I> numeric;
  Isa isa;
};

#define SPARSEFORGE_SPGEMM_DECLARE(suffix)                                                                     \
  template <typename I>                                                                                        \
  void spgemm_symbolic_##suffix(const CsrRef<void, I>&, const CsrRef<void, I>&, const int64_t*, int64_t,      \
                                int64_t, I*);                                                                  \
  template <typename V, typename I>                                                                            \
  void spgemm_numeric_##suffix(const CsrRef<V, I>&, const CsrRef<V, I>&, const int64_t*, int64_t, int64_t,    \
                               const I*, I*, V*);

SPARSEFORGE_SPGEMM_DECLARE(scalar)
#if defined(SPARSEFORGE_HAVE_AVX2)
SPARSEFORGE_SPGEMM_DECLARE(avx2)
#endif

template <typename V, typename I>
SpgemmKernel<V, I> select_spgemm(Isa isa);

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

// Splits rows [0, m) into `parts` contiguous ranges of about equal cost, cost(i) = flop[i] + 1.
// bounds gets parts + 1 entries.
void spgemm_balance_rows(const int64_t* flop, int64_t m, int parts, int64_t* bounds);

// Whole product with the kernel chosen for active_isa(), on num_threads() threads, rows balanced by flops.
// symbolic: fills c_indptr [a.rows + 1] and returns nnz(C). `flop`/`bounds` are filled for numeric.
template <typename I>
int64_t spgemm_symbolic(const CsrRef<void, I>& a, const CsrRef<void, I>& b, I* c_indptr, int64_t* flop,
                        std::vector<int64_t>* bounds);
template <typename V, typename I>
void spgemm_numeric(const CsrRef<V, I>& a, const CsrRef<V, I>& b, const int64_t* flop,
                    const std::vector<int64_t>& bounds, const I* c_indptr, I* c_indices, V* c_data);

// Checks that (indptr, indices) is canonical CSR with `cols` columns; returns "" or what is wrong
// (the first offending row), on num_threads() threads.
template <typename I>
std::string spgemm_check_csr(const I* indptr, const I* indices, int64_t rows, int64_t cols, int64_t nnz);

}  // namespace sparseforge
