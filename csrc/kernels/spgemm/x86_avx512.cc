// AVX-512 variant of spgemm (F+BW+VL+DQ; reached only when the CPU has them): the AVX2 variant with
// the long rows sorted differently. On the AVX2 path, sorting a row's columns was about half of an
// Erdős–Rényi product and 15-20% of a Poisson one (measured by leaving the sort out).
//   * rows of 33..256 first touches (dense list): the columns are sorted inside registers by a bitonic
//     network over 16-lane int32 vectors (O(n log² n) vector ops, no data-dependent branch, 32
//     registers hold 256 keys), the values follow by masked gathers from the accumulator;
//   * rows of 33..256 products: ESC (expand the products, sort (column << 8 | position) keys with the same
//     network, merge repeats in position order so sums match scipy's), which skips the accumulator's
//     random stores and loads; rows where many columns repeat (stencil, FEM) turn it off for a while.
// Shorter rows keep the AVX2 rank sort (see kNetworkMin).
#if defined(SPARSEFORGE_HAVE_AVX512)
// Loops start on 64-byte boundaries, here and in x86_avx2.cc: the same row code ran up to 11% apart
// between the two files depending on where its loops landed (pyamg bar/DG; the AVX2 policy built in
// the AVX-512 file, unchanged, was 11% slower until both aligned their loops).
#pragma GCC optimize("align-loops=64")
#include <type_traits>

#include "spgemm_passes.h"
#include "x86_avx2_policy.h"

namespace sparseforge {

namespace {

// One layer of the network inside a register: every lane meets its partner `p` (a permuted copy of v);
// the lanes in `upper` keep the larger key, the others the smaller.
__attribute__((always_inline)) inline __m512i cmpx(__m512i v, __m512i p, __mmask16 upper) {
  return _mm512_mask_max_epi32(_mm512_min_epi32(v, p), upper, v, p);
}
// Partner = lane ^ d. The in-lane shuffles (d = 1, 2, 3) and 128-bit block swaps (4, 8) have shorter
// latency than a full cross-lane permute, which only the reversals need.
__attribute__((always_inline)) inline __m512i xor1(__m512i v) { return cmpx(v, _mm512_shuffle_epi32(v, _MM_PERM_CDAB), 0xAAAA); }
__attribute__((always_inline)) inline __m512i xor2(__m512i v) { return cmpx(v, _mm512_shuffle_epi32(v, _MM_PERM_BADC), 0xCCCC); }
__attribute__((always_inline)) inline __m512i xor3(__m512i v) { return cmpx(v, _mm512_shuffle_epi32(v, _MM_PERM_ABCD), 0xCCCC); }
__attribute__((always_inline)) inline __m512i xor4(__m512i v) {
  return cmpx(v, _mm512_shuffle_i32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1)), 0xF0F0);
}
__attribute__((always_inline)) inline __m512i xor8(__m512i v) {
  return cmpx(v, _mm512_shuffle_i32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2)), 0xFF00);
}
__attribute__((always_inline)) inline __m512i xor7(__m512i v) {
  return cmpx(v, _mm512_permutexvar_epi32(_mm512_setr_epi32(7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13, 12, 11, 10, 9, 8), v), 0xF0F0);
}
__attribute__((always_inline)) inline __m512i reverse16(__m512i v) {
  return _mm512_permutexvar_epi32(_mm512_setr_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), v);
}

// Sorts the 16 lanes ascending. Bitonic with the "flip" first layer of each merge (lane i meets lane
// size-1-i), so every block sorts ascending and the masks stay constant.
__attribute__((always_inline)) inline __m512i sort16(__m512i v) {
  v = xor1(v);
  v = xor1(xor3(v));
  v = xor1(xor2(xor7(v)));
  v = cmpx(v, reverse16(v), 0xFF00);
  return xor1(xor2(xor4(v)));
}
// Sorts a bitonic register (the half-cleaner layers 8, 4, 2, 1).
__attribute__((always_inline)) inline __m512i clean16(__m512i v) { return xor1(xor2(xor4(xor8(v)))); }

// Sorts the 16*R keys in v[0..R) (R a power of two) into ascending order, v[0] lane 0 first: each
// register on its own, then merges of 2, 4, .. R registers. R is a compile-time constant so that every
// loop unrolls and v stays in registers.
//
// Only the first L registers hold keys (the rest INT32_MAX, which sort last): every compare-exchange whose
// upper register is one of those is a no-op (the keys stay, the upper register stays INT32_MAX), so it is
// left out. 80 keys in 8 registers (L = 5) thus cost well under the 128 keys' network.
template <int R, int L = R>
__attribute__((always_inline)) inline void sort_regs(__m512i* v) {
#pragma GCC unroll 16
  for (int r = 0; r < L; ++r) v[r] = sort16(v[r]);
#pragma GCC unroll 8
  for (int s = 2; s <= R; s *= 2) {
    // Flip layer: key r*16+l of a block of s registers meets key (s*16-1) - (r*16+l).
#pragma GCC unroll 16
    for (int b = 0; b < R; b += s)
#pragma GCC unroll 16
      for (int r = 0; r < s / 2; ++r) {
        if (b + s - 1 - r >= L) continue;
        const __m512i lo = v[b + r], hi = reverse16(v[b + s - 1 - r]);
        v[b + r] = _mm512_min_epi32(lo, hi);
        // A single upper register may stay reversed (it only has to be bitonic); wider halves are put
        // back in order for the register-distance layers.
        v[b + s - 1 - r] = s == 2 ? _mm512_max_epi32(lo, hi) : reverse16(_mm512_max_epi32(lo, hi));
      }
#pragma GCC unroll 8
    for (int d = s / 4; d >= 1; d /= 2)
#pragma GCC unroll 16
      for (int b = 0; b < R; b += 2 * d)
#pragma GCC unroll 16
        for (int r = b; r < b + d; ++r) {
          if (r + d >= L) continue;
          const __m512i lo = v[r], hi = v[r + d];
          v[r] = _mm512_min_epi32(lo, hi);
          v[r + d] = _mm512_max_epi32(lo, hi);
        }
#pragma GCC unroll 16
    for (int r = 0; r < L; ++r) v[r] = clean16(v[r]);
  }
}

inline __mmask16 lanes_left(int64_t left) {
  return left >= 16 ? __mmask16(0xFFFF) : left <= 0 ? __mmask16(0) : static_cast<__mmask16>((1u << left) - 1);
}

// 16 keys from p (fewer when `left` < 16; the rest INT32_MAX, which sorts last). int64 keys are narrowed:
// callers guarantee they fit in 31 bits.
template <typename I>
__attribute__((always_inline)) inline __m512i load_keys(const I* p, int64_t left) {
  const __mmask16 m = lanes_left(left);
  const __m512i fill = _mm512_set1_epi32(INT32_MAX);
  if constexpr (sizeof(I) == 4) {
    return _mm512_mask_loadu_epi32(fill, m, p);
  } else {
    const __m256i lo = _mm512_cvtepi64_epi32(_mm512_maskz_loadu_epi64(static_cast<__mmask8>(m), p));
    const __m256i hi = _mm512_cvtepi64_epi32(_mm512_maskz_loadu_epi64(static_cast<__mmask8>(m >> 8), p + 8));
    return _mm512_mask_blend_epi32(m, fill, _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1));
  }
}

template <typename I>
__attribute__((always_inline)) inline void store_keys(I* p, __m512i v, __mmask16 m) {
  if constexpr (sizeof(I) == 4) {
    _mm512_mask_storeu_epi32(p, m, v);
  } else {
    _mm512_mask_storeu_epi64(p, static_cast<__mmask8>(m), _mm512_cvtepi32_epi64(_mm512_castsi512_si256(v)));
    _mm512_mask_storeu_epi64(p + 8, static_cast<__mmask8>(m >> 8), _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(v, 1)));
  }
}

// out[q] = base[idx lane q] for the lanes in m.
template <typename V>
__attribute__((always_inline)) inline void gather_store(const V* base, __m512i idx, __mmask16 m, V* out) {
  if constexpr (sizeof(V) == 4) {
    const __m512 x = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, reinterpret_cast<const float*>(base), 4);
    _mm512_mask_storeu_ps(reinterpret_cast<float*>(out), m, x);
  } else {
    const __mmask8 m0 = static_cast<__mmask8>(m), m1 = static_cast<__mmask8>(m >> 8);
    const __m512d x0 = _mm512_mask_i32gather_pd(_mm512_setzero_pd(), m0, _mm512_castsi512_si256(idx),
                                                reinterpret_cast<const double*>(base), 8);
    _mm512_mask_storeu_pd(reinterpret_cast<double*>(out), m0, x0);
    if (m1 == 0) return;
    const __m512d x1 = _mm512_mask_i32gather_pd(_mm512_setzero_pd(), m1, _mm512_extracti64x4_epi64(idx, 1),
                                                reinterpret_cast<const double*>(base), 8);
    _mm512_mask_storeu_pd(reinterpret_cast<double*>(out + 8), m1, x1);
  }
}

// Sorts the n <= 16*R keys from `keys`, then hands each register of sorted keys to emit(v, first, lanes).
template <int R, int L = R, typename I, typename Emit>
__attribute__((always_inline)) inline void network_sort(const I* keys, int64_t n, Emit emit) {
  __m512i v[R];
  for (int r = 0; r < R; ++r) v[r] = load_keys(keys + 16 * r, n - 16 * r);
  sort_regs<R, L>(v);
  for (int r = 0; r < R && 16 * r < n; ++r) emit(v[r], int64_t{16} * r, lanes_left(n - 16 * r));
}

constexpr int64_t kNetworkMax = 256;
// Below this the AVX2 rank sort is faster (Poisson 2-D, ~13 columns a row: +26% with the network): its
// compares are independent and the value loads do not wait for the sort, where the network's ~40-cycle
// chain plus the gather behind it sit on the row's critical path. Carrying list positions through the
// network so the values could be gathered early (and permuted in registers) still lost 6-10%.
constexpr int64_t kNetworkMin = 33;

// Picks the register count for n keys (2 <= n <= kNetworkMax).
template <typename I, typename Emit>
inline void sort_keys(const I* keys, int64_t n, Emit emit) {
  if (n <= 16) network_sort<1>(keys, n, emit);
  else if (n <= 32) network_sort<2>(keys, n, emit);
  else if (n <= 48) network_sort<4, 3>(keys, n, emit);
  else if (n <= 64) network_sort<4>(keys, n, emit);
  else if (n <= 80) network_sort<8, 5>(keys, n, emit);
  else if (n <= 96) network_sort<8, 6>(keys, n, emit);
  else if (n <= 112) network_sort<8, 7>(keys, n, emit);
  else if (n <= 128) network_sort<8>(keys, n, emit);
  else network_sort<16>(keys, n, emit);
}

struct Avx512Policy : Avx2Policy {
#include "x86_avx512_band.h"

  // As Avx2Policy::gather_flags, 64 column flags per test instead of 32: dense-span rows (FEM, DG) scan
  // spans of thousands of columns with few live ones.
  template <typename V, typename I>
  static int64_t gather_flags(uint8_t* flags, int64_t lo, int64_t hi, V* acc, I* oj, V* ox) {
    int64_t n = 0, j = lo;
    for (; j + 64 <= hi; j += 64) {
      const __m512i f = _mm512_loadu_si512(flags + j);
      uint64_t live = _mm512_test_epi8_mask(f, f);
      if (live == 0) continue;
      _mm512_storeu_si512(flags + j, _mm512_setzero_si512());
      if (live == ~uint64_t{0}) {
        emit_run32(j, acc, oj + n, ox + n);
        emit_run32(j + 32, acc, oj + n + 32, ox + n + 32);
        n += 64;
        continue;
      }
      n = emit_live(live, j, acc, oj, ox, n);
    }
    return n + Avx2Policy::gather_flags(flags, j, hi, acc, oj + n, ox + n);  // the < 64-column tail
  }

  // g terms of a dense-span row whose rows of B have the same columns (FEM: an element's or a node's
  // dofs): per run of up to 8 consecutive columns, acc is loaded once, the g terms' products are added in
  // the row's order (multiply and add kept apart, as the scalar loop rounds), and acc is stored once. The
  // scalar loop did a load-add-store of acc per product; masked loads here would wait on the masked store
  // of the term before (no store forwarding), which is why runs are carried across the whole group.
  static constexpr bool kGroupAccumulate = true;
  // R rows of A with the same columns (their values astride apart in av, accumulators stride apart)
  // share each load of B's values.
  template <int R, typename I, typename V>
  static void accumulate_group(const V* av, int64_t astride, const int64_t* us, int64_t g, const I* cols, int64_t len,
                               const V* bx, V* acc, int64_t stride, uint8_t* flags) {
    for (int64_t p = 0; p < len;) {
      const I j0 = cols[p];
      int64_t run = 1;
      while (run < 8 && p + run < len && cols[p + run] == j0 + run) ++run;
      const __mmask8 m = static_cast<__mmask8>((1u << run) - 1u);
      if constexpr (sizeof(V) == 8) {
        __m512d a[R];
        for (int r = 0; r < R; ++r) a[r] = _mm512_maskz_loadu_pd(m, acc + r * stride + j0);
        for (int64_t q = 0; q < g; ++q) {
          const __m512d b = _mm512_maskz_loadu_pd(m, bx + us[q] + p);
          for (int r = 0; r < R; ++r) {
            __m512d prod = _mm512_mul_pd(_mm512_set1_pd(av[q + r * astride]), b);
            asm("" : "+v"(prod));  // no FMA contraction: the product is rounded first, as scipy does
            a[r] = _mm512_add_pd(a[r], prod);
          }
        }
        for (int r = 0; r < R; ++r) _mm512_mask_storeu_pd(acc + r * stride + j0, m, a[r]);
      } else {
        __m256 a[R];
        for (int r = 0; r < R; ++r) a[r] = _mm256_maskz_loadu_ps(m, acc + r * stride + j0);
        for (int64_t q = 0; q < g; ++q) {
          const __m256 b = _mm256_maskz_loadu_ps(m, bx + us[q] + p);
          for (int r = 0; r < R; ++r) {
            __m256 prod = _mm256_mul_ps(_mm256_set1_ps(av[q + r * astride]), b);
            asm("" : "+v"(prod));
            a[r] = _mm256_add_ps(a[r], prod);
          }
        }
        for (int r = 0; r < R; ++r) _mm256_mask_storeu_ps(acc + r * stride + j0, m, a[r]);
      }
      _mm_mask_storeu_epi8(flags + j0, m, _mm_set1_epi8(1));
      p += run;
    }
  }

  // As ScalarPolicy::expand_terms, a row of B at a time in masked vectors of 8 (16 for float / int32)
  // products: ER's rows of B hold ~8 entries, one vector each instead of eight scalar round trips
  // (ER, one thread: 9.4 -> 7.9 ms once rows no longer waited on the stores of C, spgemm_stream.h).
  template <typename I, typename V>
  static int64_t expand_terms(const I* aj, const V* ax, const I* bp, const I* bj, const V* bx, int64_t s, int64_t e,
                              int64_t nnz_a, I* keys, V* vals) {
    constexpr int64_t kLanes = sizeof(V) == 4 && sizeof(I) == 4 ? 16 : 8;
    int64_t n = 0;
    for (int64_t t = s; t < e; ++t) {
      prefetch_b_row(aj, t + kPrefetchAhead, nnz_a, bp, bj, bx);
      const I k = aj[t];
      const int64_t u0 = bp[k], ue = bp[k + 1];
      for (int64_t u = u0; u < ue; u += kLanes) {
        const __mmask16 m = lanes_left(ue - u);
        I* kd = keys + n + (u - u0);
        V* vd = vals + n + (u - u0);
        if constexpr (sizeof(I) == 4 && kLanes == 16) {
          _mm512_mask_storeu_epi32(kd, m, _mm512_maskz_loadu_epi32(m, bj + u));
        } else if constexpr (sizeof(I) == 4) {
          _mm256_mask_storeu_epi32(kd, static_cast<__mmask8>(m), _mm256_maskz_loadu_epi32(static_cast<__mmask8>(m), bj + u));
        } else {
          _mm512_mask_storeu_epi64(kd, static_cast<__mmask8>(m), _mm512_maskz_loadu_epi64(static_cast<__mmask8>(m), bj + u));
        }
        // Multiply, then add 0 (no FMA contraction: the product is rounded first, as scipy rounds it).
        if constexpr (sizeof(V) == 8) {
          __m512d p = _mm512_mul_pd(_mm512_set1_pd(ax[t]), _mm512_maskz_loadu_pd(static_cast<__mmask8>(m), bx + u));
          asm("" : "+v"(p));
          _mm512_mask_storeu_pd(vd, static_cast<__mmask8>(m), _mm512_add_pd(_mm512_setzero_pd(), p));
        } else if constexpr (kLanes == 16) {
          __m512 p = _mm512_mul_ps(_mm512_set1_ps(ax[t]), _mm512_maskz_loadu_ps(m, bx + u));
          asm("" : "+v"(p));
          _mm512_mask_storeu_ps(vd, m, _mm512_add_ps(_mm512_setzero_ps(), p));
        } else {
          __m256 p = _mm256_mul_ps(_mm256_set1_ps(ax[t]), _mm256_maskz_loadu_ps(static_cast<__mmask8>(m), bx + u));
          asm("" : "+v"(p));
          _mm256_mask_storeu_ps(vd, static_cast<__mmask8>(m), _mm256_add_ps(_mm256_setzero_ps(), p));
        }
      }
      n += ue - u0;
    }
    return n;
  }

  static constexpr int64_t kEscMin = 32, kEscMax = kNetworkMax;
  // (column << 8 | position) keys, n <= 256 of them, columns < kEscMaxCols.
  template <typename I, typename V>
  __attribute__((noinline)) static int64_t esc_sort_merge(const I* keys, const V* vals, int64_t n, I* oj, V* ox) {
    if (n <= 16) return esc_n<1>(keys, vals, n, oj, ox);
    if (n <= 32) return esc_n<2>(keys, vals, n, oj, ox);
    if (n <= 48) return esc_n<4, 3>(keys, vals, n, oj, ox);
    if (n <= 64) return esc_n<4>(keys, vals, n, oj, ox);
    if (n <= 80) return esc_n<8, 5>(keys, vals, n, oj, ox);
    if (n <= 96) return esc_n<8, 6>(keys, vals, n, oj, ox);
    if (n <= 112) return esc_n<8, 7>(keys, vals, n, oj, ox);
    if (n <= 128) return esc_n<8>(keys, vals, n, oj, ox);
    return esc_n<16>(keys, vals, n, oj, ox);
  }
  template <int R, int L = R, typename I, typename V>
  static int64_t esc_n(const I* keys, const V* vals, int64_t n, I* oj, V* ox) {
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512i v[R];
    for (int r = 0; r < R; ++r) {
      const __mmask16 m = lanes_left(n - 16 * r);
      const __m512i k = load_keys(keys + 16 * r, n - 16 * r);
      const __m512i packed = _mm512_or_si512(_mm512_slli_epi32(k, 8), _mm512_add_epi32(iota, _mm512_set1_epi32(16 * r)));
      v[r] = _mm512_mask_blend_epi32(m, _mm512_set1_epi32(INT32_MAX), packed);
    }
    sort_regs<R, L>(v);
    // Any column twice? Compare each sorted column with the one before it (the previous register's
    // last lane shifted in).
    __mmask16 dup = 0;
    __m512i prev = _mm512_set1_epi32(-1);
    for (int r = 0; r < R && 16 * r < n; ++r) {
      const __m512i col = _mm512_srli_epi32(v[r], 8);
      dup |= _mm512_mask_cmpeq_epi32_mask(lanes_left(n - 16 * r), col, _mm512_alignr_epi32(col, prev, 15));
      prev = col;
    }
    const __m512i pos_mask = _mm512_set1_epi32(255);
    if (dup == 0) {
      for (int r = 0; r < R && 16 * r < n; ++r) {
        const __mmask16 m = lanes_left(n - 16 * r);
        store_keys(oj + 16 * r, _mm512_srli_epi32(v[r], 8), m);
        gather_store(vals, _mm512_and_si512(v[r], pos_mask), m, ox + 16 * r);
      }
      return n;
    }
    alignas(64) int32_t sorted[16 * R];
    for (int r = 0; r < R; ++r) _mm512_store_si512(sorted + 16 * r, v[r]);
    int64_t out = 0;
    int32_t last = -1;
    for (int64_t q = 0; q < n; ++q) {
      const int32_t col = sorted[q] >> 8;
      const V x = vals[sorted[q] & 255];
      if (col == last) {
        ox[out - 1] += x;
      } else {
        oj[out] = static_cast<I>(col);
        ox[out++] = x;
        last = col;
      }
    }
    return out;
  }

  // Unique keys (first touches of the dense list, so < kDenseListMaxCols <= 2^31 in either index type):
  // the sorted keys are stored and their values gathered from the accumulator.
  template <typename I, typename V>
  static bool sort_gather(I* list, int64_t n, const V* acc, I* oj, V* ox) {
    // int64 keys have no AVX2 rank sort to fall back on (only the scalar insertion sort, which sends
    // rows with random columns to the hash): they take the network from 2 keys on.
    const int64_t lo = sizeof(I) == 4 ? kNetworkMin : 2;
    if (n < lo || n > kNetworkMax) return Avx2Policy::sort_gather(list, n, acc, oj, ox);
    network_sort_gather(list, n, acc, oj, ox);
    return true;
  }
  // Out of line, as esc_sort_merge: inlined, the network's 16-register code made every row's compute()
  // realign its stack and save more registers, which cost the short rows that never sort with it (~5%
  // on Poisson). A call per row of >= 33 keys is nothing next to the sort.
  template <typename I, typename V>
  __attribute__((noinline)) static void network_sort_gather(const I* list, int64_t n, const V* acc, I* oj, V* ox) {
    sort_keys(list, n, [&](__m512i v, int64_t q, __mmask16 m) {
      store_keys(oj + q, v, m);
      gather_store(acc, v, m, ox + q);
    });
  }
};

}  // namespace

SPARSEFORGE_SPGEMM_DEFINE(avx512, Avx512Policy)

}  // namespace sparseforge
#endif  // SPARSEFORGE_HAVE_AVX512
