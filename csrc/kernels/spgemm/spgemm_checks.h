// The passes of a product that are not row kernels: the inputs' row check (columns in range, strictly
// increasing within each row), indptr's check (non-decreasing, and its longest row) and the prefix sum of
// C's row counts. Compiled once per ISA like the row kernels (each includer's flags, internal linkage;
// SPARSEFORGE_SPGEMM_CHECKS_DEFINE exports them), because at the baseline x86-64 flags the driver's
// copies ran scalar: on Poisson 2-D (160k rows, 0.8M entries) they were 0.40 ms of a 2.2 ms one-thread
// product, two of them (indptr, counts) serial on two threads.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "spgemm.h"

namespace sparseforge {
namespace {

// Whether rows [r0, r1) hold columns in [0, cols), strictly increasing within each row (indptr already
// checked). Branch-free passes over the entries that vectorise: every place where the flat sequence does
// not increase must be the start of a row.
template <typename I>
bool check_rows_canonical(const I* indptr, const I* indices, int64_t r0, int64_t r1, int64_t cols) {
  using U = std::make_unsigned_t<I>;
  const int64_t t0 = indptr[r0], t1 = indptr[r1];
  const U ucols = static_cast<U>(cols);
  if (t0 == t1) return true;
  U outside = static_cast<U>(static_cast<U>(indices[t0]) >= ucols);  // a negative index is a large unsigned one
  // Counted in I: at most t1 - t0 drops, which I holds (it holds every offset of the array).
  I drops = 0;
  for (int64_t t = t0 + 1; t < t1; ++t) {
    outside |= static_cast<U>(static_cast<U>(indices[t]) >= ucols);
    drops += static_cast<I>(indices[t] <= indices[t - 1]);
  }
  I at_starts = 0;
  for (int64_t i = r0 + 1; i < r1; ++i) {
    const int64_t s = indptr[i];
    if (s > t0 && s < indptr[i + 1]) at_starts += static_cast<I>(indices[s] <= indices[s - 1]);
  }
  return outside == 0 && drops == at_starts;
}

// Whether indptr[0, rows] never decreases; sets *longest to its longest row when it does not. Compared, not
// subtracted, for the order: a difference of two arbitrary values can wrap. The differences are taken only
// to be used when the order holds (then every one lies in [0, indptr[rows]]).
template <typename I>
bool check_indptr_order(const I* indptr, int64_t rows, int64_t* longest) {
  using U = std::make_unsigned_t<I>;
  I most = 0, down = 0;
  for (int64_t i = 0; i < rows; ++i) {
    down |= static_cast<I>(indptr[i + 1] < indptr[i]);
    most = std::max(most, static_cast<I>(static_cast<U>(indptr[i + 1]) - static_cast<U>(indptr[i])));
  }
  if (down != 0) return false;
  *longest = most;
  return true;
}

// Sum of the `n` bytes of `flags` (0 or 1 each): blocks of 4096 summed in 32 bits vectorise.
inline int64_t count_flags(const uint8_t* flags, int64_t n) {
  int64_t total = 0;
  for (int64_t i = 0; i < n;) {
    const int64_t end = std::min(n, i + 4096);
    uint32_t block = 0;
    for (; i < end; ++i) block += flags[i];
    total += block;
  }
  return total;
}

// counts[0, m) -> their inclusive prefix sums, in place (wrapping for int32: the caller checks the total);
// returns the exact total. AVX-512, int32: 16 lanes scanned in registers, the running total carried by one
// add per vector (the vector's own total is broadcast off the carry's chain): 0.25 -> ~0.07 ns per row.
template <typename I>
int64_t prefix_counts(I* counts, int64_t m) {
  using U = std::make_unsigned_t<I>;
  int64_t total = 0;
  int64_t i = 0;
  U run = 0;
#if defined(__AVX512F__)
  if constexpr (sizeof(I) == 4) {
    for (int64_t k = 0; k < m; ++k) total += counts[k];
    const __m512i zero = _mm512_setzero_si512(), last = _mm512_set1_epi32(15);
    __m512i carry = zero;
    for (; i + 16 <= m; i += 16) {
      __m512i x = _mm512_loadu_si512(counts + i);
      x = _mm512_add_epi32(x, _mm512_alignr_epi32(x, zero, 15));
      x = _mm512_add_epi32(x, _mm512_alignr_epi32(x, zero, 14));
      x = _mm512_add_epi32(x, _mm512_alignr_epi32(x, zero, 12));
      x = _mm512_add_epi32(x, _mm512_alignr_epi32(x, zero, 8));
      _mm512_storeu_si512(counts + i, _mm512_add_epi32(x, carry));
      carry = _mm512_add_epi32(carry, _mm512_permutexvar_epi32(last, x));
    }
    run = static_cast<U>(_mm_cvtsi128_si32(_mm512_castsi512_si128(carry)));
    for (; i < m; ++i) {
      run += static_cast<U>(counts[i]);
      counts[i] = static_cast<I>(run);
    }
    return total;
  }
#endif
  for (; i < m; ++i) {
    total += counts[i];
    counts[i] = static_cast<I>(total);
  }
  (void)run;
  return total;
}

}  // namespace
}  // namespace sparseforge

// Exports one ISA's copies as spgemm_check_rows_<suffix><I> etc. (declared in spgemm.h).
#define SPARSEFORGE_SPGEMM_CHECKS_DEFINE(suffix)                                                               \
  template <typename I>                                                                                        \
  SpgemmChecks<I> spgemm_checks_##suffix() {                                                                   \
    return {&check_rows_canonical<I>, &check_indptr_order<I>, &prefix_counts<I>, &count_flags};                \
  }                                                                                                            \
  template SpgemmChecks<int32_t> spgemm_checks_##suffix<int32_t>();                                            \
  template SpgemmChecks<int64_t> spgemm_checks_##suffix<int64_t>();
