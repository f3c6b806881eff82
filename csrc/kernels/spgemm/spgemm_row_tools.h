// Building blocks of the spgemm row kernels (spgemm_rows.h): the column span a row of C can touch, the
// B-row prefetch, the unfused product that keeps every ISA bit-identical to scipy, small sorts, the
// per-thread row workspace and the scalar ISA policy the AVX2 / AVX-512 policies derive from. Internal
// linkage, like spgemm_rows.h: each ISA's translation unit compiles its own copy with its own flags.
#pragma once

#include <algorithm>
#include <climits>
#include <cstring>
#include <vector>

#include "spgemm.h"

namespace sparseforge {
namespace {

// A row uses the dense accumulator when the columns its output can span number at most kSpanPerFlop per
// partial product: then clearing and reading back the flags (32 per AVX2 instruction) costs about as
// much as the products.
constexpr int64_t kSpanPerFlop = 32;
constexpr int64_t kSpanMinFlops = 64;
// Up to this many columns per-thread dense stamp/value arrays are used rather than hash tables.
constexpr int64_t kDenseListMaxCols = int64_t{1} << 22;
// Rows of up to this many columns remember their touch order for the next row (reuse_pattern).
constexpr int64_t kPatternMax = 64;
// The ESC path packs a column and its position in the row (8 bits) into one int32 sort key.
constexpr int64_t kEscMaxCols = int64_t{1} << 23;

// [first, last] column that row i of C can touch (B's rows are sorted, so their ends bound it).
template <typename I>
inline void column_span(const I* ap, const I* aj, const I* bp, const I* bj, int64_t s, int64_t e, int64_t* wlo,
                        int64_t* whi) {
  int64_t lo = INT64_MAX, hi = -1;
  for (int64_t t = s; t < e; ++t) {
    const I k = aj[t];
    const int64_t u0 = bp[k], u1 = bp[k + 1];
    if (u0 == u1) continue;
    lo = std::min<int64_t>(lo, bj[u0]);
    hi = std::max<int64_t>(hi, bj[u1 - 1]);
  }
  *wlo = lo;
  *whi = hi;
}

// Rows of B are visited in A's (random) column order: fetch the row kPrefetchAhead terms ahead of the
// one being accumulated (the lookahead runs on into the next rows of A), so its cache misses overlap work.
constexpr int64_t kPrefetchAhead = 4;
template <typename I, typename V>
inline void prefetch_b_row(const I* aj, int64_t t, int64_t nnz_a, const I* bp, const I* bj, const V* bx) {
  if (t < nnz_a) {
    const int64_t u = bp[aj[t]];
    __builtin_prefetch(bj + u);
    if (bx != nullptr) __builtin_prefetch(bx + u);
  }
}

// Keeps a*b from being contracted into an FMA with the following add, so every ISA (and scipy) rounds
// the same way and values agree bit for bit.
template <typename V>
inline V product(V a, V b) {
  V p = a * b;
#if defined(__x86_64__) || defined(__i386__)
  asm("" : "+x"(p));
#elif defined(__aarch64__)
  asm("" : "+w"(p));
#endif
  return p;
}

inline int log2_pow2_at_least(uint64_t x) {
  int b = 4;  // at least 16 slots
  while ((uint64_t{1} << b) < x) ++b;
  return b;
}

template <typename I>
inline uint64_t slot_of(I j, int shift) {
  return (static_cast<uint64_t>(j) * 0x9E3779B97F4A7C15ull) >> shift;
}

template <typename I>
inline void sort_small(I* x, int64_t n) {
  if (n <= 24) {
    for (int64_t i = 1; i < n; ++i) {
      I v = x[i];
      int64_t j = i - 1;
      while (j >= 0 && x[j] > v) {
        x[j + 1] = x[j];
        --j;
      }
      x[j + 1] = v;
    }
  } else {
    std::sort(x, x + n);
  }
}

// Sorts (keys, vals) by key; fast when the keys are nearly sorted, O(n log n) otherwise.
template <typename I, typename V>
void sort_pairs_nearly_sorted(I* keys, V* vals, int64_t n) {
  int64_t budget = 4 * n + 64;  // element moves an insertion sort may spend before giving up
  for (int64_t i = 1; i < n; ++i) {
    const I k = keys[i];
    if (keys[i - 1] <= k) continue;
    const V v = vals[i];
    int64_t j = i - 1;
    while (j >= 0 && keys[j] > k) {
      keys[j + 1] = keys[j];
      vals[j + 1] = vals[j];
      --j;
    }
    keys[j + 1] = k;
    vals[j + 1] = v;
    budget -= i - 1 - j;
    if (budget < 0) {
      std::vector<std::pair<I, V>> tmp(static_cast<size_t>(n));
      for (int64_t q = 0; q < n; ++q) tmp[static_cast<size_t>(q)] = {keys[q], vals[q]};
      std::sort(tmp.begin(), tmp.end(), [](const std::pair<I, V>& x, const std::pair<I, V>& y) { return x.first < y.first; });
      for (int64_t q = 0; q < n; ++q) keys[q] = tmp[static_cast<size_t>(q)].first, vals[q] = tmp[static_cast<size_t>(q)].second;
      return;
    }
  }
}

// Returns false when the keys were far from sorted (it fell back to std::sort).
template <typename I>
bool sort_keys_nearly_sorted(I* keys, int64_t n) {
  int64_t budget = 4 * n + 64;
  for (int64_t i = 1; i < n; ++i) {
    const I k = keys[i];
    if (keys[i - 1] <= k) continue;
    int64_t j = i - 1;
    while (j >= 0 && keys[j] > k) {
      keys[j + 1] = keys[j];
      --j;
    }
    keys[j + 1] = k;
    budget -= i - 1 - j;
    if (budget < 0) {
      std::sort(keys, keys + n);
      return false;
    }
  }
  return true;
}

using Stamp = uint16_t;

template <typename V, typename I>
struct RowWorkspace {
  std::vector<I> keys;
  std::vector<V> vals;
  // The last sorted dense-list row of at most kPatternMax columns: its touch list and its sorted columns
  // (RowEngine::reuse_pattern).
  I pat_keys[kPatternMax], pat_sorted[kPatternMax];
  int64_t pat_n = -1;
  // Dense-span accumulator: flags[j] = 1 iff column j is live, acc[j] its value; both all zero between
  // rows (the read-back clears them). A byte per column, not a bit: plain stores, no read-modify-write
  // chain on a shared word.
  std::vector<uint8_t> flags;
  std::vector<V> acc;
  // Dense-list accumulator: list_acc[j] is column j's value iff mark[j] == stamp, else stale; the stamp
  // restarts a column at 0 on its first touch in a row, so nothing is cleared between rows.
  std::vector<V> list_acc;

  void ensure_hash(size_t slots, bool with_vals) {
    if (keys.size() < slots) keys.resize(slots);
    if (with_vals && vals.size() < slots) vals.resize(slots);
  }
  // Column j was touched in this row iff mark[j] == stamp. Two bytes per column keep the array small
  // (L1/L2 for tens of thousands of columns); the stamp wraps every 65535 rows, when the array is
  // cleared (2 * B.cols bytes per 65535 rows).
  std::vector<Stamp> mark;
  Stamp stamp = 0;
  Stamp next_stamp(int64_t cols) {
    if (mark.size() < static_cast<size_t>(cols)) mark.assign(static_cast<size_t>(cols), 0);
    if (++stamp == 0) {
      std::fill(mark.begin(), mark.end(), Stamp{0});
      stamp = 1;
    }
    return stamp;
  }

  // `rows` accumulators, dense_stride(cols) apart (RowEngine's twin rows).
  uint8_t* ensure_dense(int64_t cols, bool with_acc, int rows = 1) {
    const size_t n = static_cast<size_t>(dense_stride(cols));
    if (flags.size() < n) flags.assign(n, 0);
    if (with_acc && acc.size() < rows * n) acc.assign(rows * n, V(0));
    return flags.data();
  }
  static int64_t dense_stride(int64_t cols) { return cols + 64; }  // slack: vector reads past the last column stay inside
};

// A band pattern (spgemm_band.h): row i of A has the columns i + a[t]; the row k = i + a[t] of B that
// term t takes has the columns k + b[t][q] (nb[t] of them), so row i of C has the columns i + c[s] (the
// sorted distinct sums), product (t, q) landing in slot[t][q].
constexpr int kBandMaxA = 16, kBandMaxB = 16, kBandMaxC = 32;
struct BandPattern {
  int na = 0, nc = 0;
  int nb[kBandMaxA];
  int64_t a[kBandMaxA], b[kBandMaxA][kBandMaxB], c[kBandMaxC];
  int8_t slot[kBandMaxA][kBandMaxB];
};

// The portable pieces; an ISA policy overrides what it can do faster.
struct ScalarPolicy {
  // Band rows (spgemm_band.h): off; the scalar oracle keeps the accumulators.
  static constexpr bool kBand = false;
  template <typename V>
  struct BandPlan {};
  template <typename V>
  static bool band_plan(const BandPattern&, BandPlan<V>*) { return false; }
  template <typename V>
  static void band_rows(const BandPlan<V>&, const V*, const V* const*, int64_t, V*) {}
  template <typename V, typename I>
  static void band_cols(const BandPlan<V>&, int64_t, int64_t, I*) {}
  template <typename V, typename I>
  static bool band_a_matches(const BandPlan<V>&, const I*, int64_t) { return false; }
  // Rows written in place through a stage with non-temporal stores for large products (spgemm_stream.h);
  // the scalar oracle writes them directly.
  static constexpr bool kStreamOut = false;
  static constexpr bool kSortPairs = false;  // the scalar path keeps such rows on the accumulators
  // Rows with kEscMin < f <= kEscMax products (and B.cols <= kEscMaxCols) go to the ESC path (expand,
  // sort, compress) when the policy has esc_sort_merge; 0 turns it off.
  static constexpr int64_t kEscMin = 0, kEscMax = 0;
  static constexpr bool kReusePattern = false;  // RowEngine::reuse_pattern
  template <typename I, typename V>
  static int64_t esc_sort_merge(const I* keys, const V* vals, int64_t n, I* oj, V* ox) { return -1; }
  template <typename I, typename V>
  static void sort_pairs_into(I* keys, V* vals, int64_t n, I* oj, V* ox) {
    std::memcpy(oj, keys, static_cast<size_t>(n) * sizeof(I));
    std::memcpy(ox, vals, static_cast<size_t>(n) * sizeof(V));
    sort_pairs_nearly_sorted(oj, ox, n);
  }
  // out[0..n) = list[0..n) sorted (keys unique). False when it was expensive (keys far from sorted).
  template <typename I>
  static bool sort_into(I* list, int64_t n, I* out) {
    std::memcpy(out, list, static_cast<size_t>(n) * sizeof(I));
    return sort_keys_nearly_sorted(out, n);
  }
  // oj[0..n) = list[0..n) sorted, ox[q] = acc[oj[q]]; false when it was expensive (as sort_into).
  template <typename I, typename V>
  static bool sort_gather(I* list, int64_t n, const V* acc, I* oj, V* ox) {
    const bool cheap = sort_into(list, n, oj);
    for (int64_t q = 0; q < n; ++q) ox[q] = acc[oj[q]];
    return cheap;
  }
  // Dense-span rows: g terms whose rows of B share one column list `cols` [len] (P::accumulate_group
  // adds them run by run, for R rows of A with the same columns); off: the policy has no such path.
  static constexpr bool kGroupAccumulate = false;
  template <int R, typename I, typename V>
  static void accumulate_group(const V* av, int64_t astride, const int64_t* us, int64_t g, const I* cols, int64_t len,
                               const V* bx, V* acc, int64_t stride, uint8_t* flags) {}
  // The products of A's terms [s, e) (row by row of B, in A's order) into keys (columns) and vals
  // (values); returns their count. 0 + p keeps scipy's sign of zero.
  template <typename I, typename V>
  static int64_t expand_terms(const I* aj, const V* ax, const I* bp, const I* bj, const V* bx, int64_t s, int64_t e,
                              int64_t nnz_a, I* keys, V* vals) {
    int64_t n = 0;
    for (int64_t t = s; t < e; ++t) {
      prefetch_b_row(aj, t + kPrefetchAhead, nnz_a, bp, bj, bx);
      const I k = aj[t];
      const V av = ax[t];
      for (int64_t u = bp[k], ue = bp[k + 1]; u < ue; ++u, ++n) {
        keys[n] = bj[u];
        vals[n] = V(0) + product(av, bx[u]);
      }
    }
    return n;
  }
  template <typename V>
  static void scale(V a, const V* x, int64_t n, V* y) {
    for (int64_t t = 0; t < n; ++t) y[t] = a * x[t];
  }
  // Writes the live columns in [lo, hi) in ascending order with their values, and clears flags and acc
  // behind them. Skips 8 dead columns at a time.
  template <typename V, typename I>
  static int64_t gather_flags(uint8_t* flags, int64_t lo, int64_t hi, V* acc, I* oj, V* ox) {
    int64_t n = 0, j = lo;
    for (; j < hi; ++j) {
      if ((j & 7) == 0 && j + 8 <= hi) {
        uint64_t word;
        std::memcpy(&word, flags + j, 8);
        if (word == 0) {
          j += 7;
          continue;
        }
      }
      if (flags[j]) {
        flags[j] = 0;
        oj[n] = static_cast<I>(j);
        ox[n] = acc[j];
        acc[j] = V(0);
        ++n;
      }
    }
    return n;
  }
};

}  // namespace
}  // namespace sparseforge
