// The AVX2 pieces of spgemm's row kernels (see x86_avx2.cc for what they do), in a header so that the
// AVX-512 variant can build on them: everything has internal linkage, so each ISA file compiles its own
// copy with its own flags.
#pragma once
#include <immintrin.h>

#include <climits>

#include "spgemm_rows.h"

namespace sparseforge {

namespace {
// Emits the 32 consecutive columns base.. with their values and clears the accumulator behind them.
template <typename V, typename I>
inline void emit_run32(int64_t base, V* acc, I* oj, V* ox) {
  if constexpr (sizeof(I) == 4) {
    __m256i idx = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(base)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int q = 0; q < 32; q += 8, idx = _mm256_add_epi32(idx, _mm256_set1_epi32(8)))
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(oj + q), idx);
  } else {
    __m256i idx = _mm256_add_epi64(_mm256_set1_epi64x(base), _mm256_setr_epi64x(0, 1, 2, 3));
    for (int q = 0; q < 32; q += 4, idx = _mm256_add_epi64(idx, _mm256_set1_epi64x(4)))
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(oj + q), idx);
  }
  if constexpr (sizeof(V) == 4) {
    for (int q = 0; q < 32; q += 8) {
      _mm256_storeu_ps(reinterpret_cast<float*>(ox + q), _mm256_loadu_ps(reinterpret_cast<const float*>(acc + base + q)));
      _mm256_storeu_ps(reinterpret_cast<float*>(acc + base + q), _mm256_setzero_ps());
    }
  } else {
    for (int q = 0; q < 32; q += 4) {
      _mm256_storeu_pd(reinterpret_cast<double*>(ox + q), _mm256_loadu_pd(reinterpret_cast<const double*>(acc + base + q)));
      _mm256_storeu_pd(reinterpret_cast<double*>(acc + base + q), _mm256_setzero_pd());
    }
  }
}

// Emits the live columns j + (set bits of `live`) in ascending order with their values, clearing acc behind
// them; returns the new output count. The sparse case of gather_flags (AVX2: 32 flags a word, AVX-512: 64).
template <typename Bits, typename V, typename I>
inline int64_t emit_live(Bits live, int64_t j, V* acc, I* oj, V* ox, int64_t n) {
  while (live) {
    const int64_t c = j + __builtin_ctzll(static_cast<unsigned long long>(live));
    live &= live - 1;
    oj[n] = static_cast<I>(c);
    ox[n] = acc[c];
    acc[c] = V(0);
    ++n;
  }
  return n;
}

// The rank sort shared by the three entry points below: for a block of 8 keys, count with 8-lane compares
// how many keys are smaller than each (n*n/8 compares in all), then hand every key's rank to `store(rank,
// i)`, which writes key i (and whatever travels with it) to that rank. No data-dependent branches, so
// random keys cost the same as sorted ones. `keys` has 8 slots of slack past n (padded with INT32_MAX).
template <typename Store>
__attribute__((always_inline)) inline void rank_sort(int32_t* keys, int64_t n, Store store) {
  const int64_t n8 = (n + 7) & ~int64_t{7};
  for (int64_t q = n; q < n8; ++q) keys[q] = INT32_MAX;
  alignas(32) int32_t rank[8];
  for (int64_t i = 0; i < n8; i += 8) {
    const __m256i ki = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(keys + i));
    __m256i r0 = _mm256_setzero_si256(), r1 = _mm256_setzero_si256();
    int64_t jj = 0;
    for (; jj + 2 <= n; jj += 2) {
      r0 = _mm256_sub_epi32(r0, _mm256_cmpgt_epi32(ki, _mm256_set1_epi32(keys[jj])));
      r1 = _mm256_sub_epi32(r1, _mm256_cmpgt_epi32(ki, _mm256_set1_epi32(keys[jj + 1])));
    }
    if (jj < n) r0 = _mm256_sub_epi32(r0, _mm256_cmpgt_epi32(ki, _mm256_set1_epi32(keys[jj])));
    _mm256_store_si256(reinterpret_cast<__m256i*>(rank), _mm256_add_epi32(r0, r1));
    const int64_t lanes = std::min<int64_t>(8, n - i);
    for (int64_t q = 0; q < lanes; ++q) store(rank[q], i + q);
  }
}

struct Avx2Policy : ScalarPolicy {
  static constexpr bool kStreamOut = true;
  static constexpr bool kReusePattern = true;  // RowEngine::reuse_pattern (the scalar oracle keeps the plain sort)
  // int32 keys, up to kRankSortMax of them: the branch-free rank sort above (its n*n/8 compares stop
  // paying beyond that; longer rows take the scalar sort).
  static constexpr int64_t kRankSortMax = 160;
  static bool sort_into(int32_t* list, int64_t n, int32_t* out) {
    if (n < 8 || n > kRankSortMax) return ScalarPolicy::sort_into(list, n, out);
    rank_sort(list, n, [&](int32_t r, int64_t i) { out[r] = list[i]; });
    return true;
  }
  static bool sort_into(int64_t* list, int64_t n, int64_t* out) { return ScalarPolicy::sort_into(list, n, out); }

  // The rank sort storing each key's value with it: the value loads (acc[key]) do not wait for the sort,
  // where sorting first and then gathering acc[oj[q]] put both on the row's critical path (measured:
  // dropping either the sort or the gather saved the same 1.7 ms of 11 on Poisson 2-D).
  template <typename V>
  static bool sort_gather(int32_t* list, int64_t n, const V* acc, int32_t* oj, V* ox) {
    if (n < 8 || n > kRankSortMax) return ScalarPolicy::sort_gather(list, n, acc, oj, ox);
    rank_sort(list, n, [&](int32_t r, int64_t i) {
      const int32_t key = list[i];
      oj[r] = key;
      ox[r] = acc[key];
    });
    return true;
  }
  template <typename V>
  static bool sort_gather(int64_t* list, int64_t n, const V* acc, int64_t* oj, V* ox) {
    return ScalarPolicy::sort_gather(list, n, acc, oj, ox);
  }

  // The same rank sort carrying a value per key (unique keys; the key array has 8 slots of slack).
  static constexpr bool kSortPairs = true;
  template <typename V>
  static void sort_pairs_into(int32_t* keys, V* vals, int64_t n, int32_t* oj, V* ox) {
    if (n > kRankSortMax) return ScalarPolicy::sort_pairs_into(keys, vals, n, oj, ox);
    rank_sort(keys, n, [&](int32_t r, int64_t i) {
      oj[r] = keys[i];
      ox[r] = vals[i];
    });
  }
  template <typename V>
  static void sort_pairs_into(int64_t* keys, V* vals, int64_t n, int64_t* oj, V* ox) {
    ScalarPolicy::sort_pairs_into(keys, vals, n, oj, ox);
  }

  static void scale(float a, const float* x, int64_t n, float* y) {
    const __m256 va = _mm256_set1_ps(a);
    int64_t t = 0;
    for (; t + 8 <= n; t += 8) _mm256_storeu_ps(y + t, _mm256_mul_ps(va, _mm256_loadu_ps(x + t)));
    for (; t < n; ++t) y[t] = a * x[t];
  }
  static void scale(double a, const double* x, int64_t n, double* y) {
    const __m256d va = _mm256_set1_pd(a);
    int64_t t = 0;
    for (; t + 4 <= n; t += 4) _mm256_storeu_pd(y + t, _mm256_mul_pd(va, _mm256_loadu_pd(x + t)));
    for (; t < n; ++t) y[t] = a * x[t];
  }
  // As ScalarPolicy::gather_flags, 32 flags per compare; a run of 32 live columns (dense output rows
  // such as X·Xᵀ) is copied with vector loads/stores instead of one column at a time.
  template <typename V, typename I>
  static int64_t gather_flags(uint8_t* flags, int64_t lo, int64_t hi, V* acc, I* oj, V* ox) {
    int64_t n = 0, j = lo;
    const __m256i zero = _mm256_setzero_si256();
    for (; j + 32 <= hi; j += 32) {
      const __m256i f = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(flags + j));
      uint32_t live = ~static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(f, zero)));
      if (live == 0) continue;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(flags + j), zero);
      if (live == 0xFFFFFFFFu) {
        emit_run32(j, acc, oj + n, ox + n);
        n += 32;
        continue;
      }
      n = emit_live(live, j, acc, oj, ox, n);
    }
    return n + ScalarPolicy::gather_flags(flags, j, hi, acc, oj + n, ox + n);  // the < 32-column tail
  }
};
}  // namespace

}  // namespace sparseforge
