// The row kernels of spgemm as templates over an ISA policy `P`. Included by reference.cc (P = scalar),
// x86_avx2.cc and x86_avx512.cc (their policies; the AVX2 one in x86_avx2_policy.h); everything here has
// internal linkage, so each translation unit keeps its own copy compiled with its own flags and the
// scalar path never contains AVX2 code.
//
// RowEngine::count (the symbolic count, for rows the first pass does not compute), per row i with
// f = flop[i] partial products: a row with one term of A counts nnz(B_k); otherwise a 16-bit stamp per
// column (B.cols <= kDenseListMaxCols; nothing is cleared between rows, and a row stops once it has every
// column), else a Fibonacci-hashed open-addressing set.
//
// RowEngine::compute, per row, in this order of preference; `known` is the row's length when the count
// ran first (second pass), -1 in the fused first pass:
//   1. A_i has one entry: C_i is B_k scaled (already sorted and unique), no accumulator at all;
//   2. "dense span": the columns C_i can span (from the first/last column of each B_k, B's rows being
//      sorted; computed for rows with f >= kSpanMinFlops) number at most kSpanPerFlop * f: dense value
//      array plus a byte flag per column (all zero between rows), flags read back in column order, so
//      no sort and no hashing. Rows of X·Xᵀ and other rows that fill much of C; a row whose known
//      length equals its span is dense and needs no flags at all;
//   3. (AVX-512) ESC for rows of P::kEscMin < f <= P::kEscMax products (B.cols <= kEscMaxCols): the
//      products sorted by (column, position in the row) and repeats merged in A's order; switched off
//      for a while after a row where many columns repeat;
//   4. (AVX2) the count says no two products share a column (nnz(C_i) == f, random matrices): the
//      products are rank-sorted by column with their values, no accumulator at all;
//   5. "dense list" (B.cols <= kDenseListMaxCols): a value array restarted per column by the stamps,
//      a list of first touches, sorted by P::sort_gather (scalar: insertion sort, good for the nearly
//      sorted lists of stencil/FEM rows; AVX2: rank sort; AVX-512: a sorting network from 33 keys).
//      (AVX2, AVX-512) a list equal to the previous row's shifted by a constant reuses its sorted order
//      (reuse_pattern). The pass leaves this path adaptively when lists come out far from sorted (random
//      columns on the scalar path), retrying every 256 rows;
//   6. open-addressing hash with linear probing: 2 * (known length, else min(f, span)) slots with an
//      order-preserving hash (slot grows with the column) and an overflow tail instead of wrap-around,
//      so keys come out nearly sorted and an insertion sort finishes them (std::sort if they are not).
// Values are accumulated in A's row order in every path, so all paths give bit-identical results.
#pragma once

#include <algorithm>
#include <climits>
#include <cstring>
#include <new>
#include <vector>

#include "spgemm.h"
#include "spgemm_band.h"
#include "spgemm_row_tools.h"

namespace sparseforge {
namespace {

// The row kernels of one part (a contiguous row range on one thread): operands, workspace, and the
// adaptive path choice carried from row to row.
template <class P, typename V, typename I>
class RowEngine {
 public:
  RowEngine(const CsrRef<V, I>& a, const CsrRef<V, I>& b)
      : ap_(a.indptr), aj_(a.indices), ax_(a.data), bp_(b.indptr), bj_(b.indices), bx_(b.data),
        nnz_a_(a.indptr[a.rows]), cols_(b.cols), rows_b_(b.rows), rows_a_(a.rows), band_(a, b) {}

  // Number of distinct columns of row i of C (the symbolic pass); f = flop[i].
  int64_t count(int64_t i, int64_t f) {
    const I* ap = ap_;
    const I* aj = aj_;
    const I* bp = bp_;
    const I* bj = bj_;
    const int64_t nnz_a = nnz_a_, cols = cols_;
    const int64_t s = ap[i], e = ap[i + 1];
    if (f == 0 || e - s == 1) return f;  // empty, or one row of B: distinct by the CSR contract
    int64_t count = 0;
    if (cols <= kDenseListMaxCols) {
      // A stamp per column (the row's number): a column is new iff its stamp is not this row's. Nothing
      // to clear between rows.
      const Stamp stamp = ws_.next_stamp(cols);
      Stamp* mark = ws_.mark.data();
      for (int64_t t = s; t < e && count < cols; ++t) {  // every column seen: the rest cannot add any
        prefetch_b_row<I, V>(aj, t + kPrefetchAhead, nnz_a, bp, bj, nullptr);
        const I k = aj[t];
        for (int64_t u = bp[k], ue = bp[k + 1]; u < ue; ++u) {
          const I j = bj[u];
          count += mark[j] != stamp;
          mark[j] = stamp;
        }
      }
      return count;
    }
    const int bits = log2_pow2_at_least(2 * static_cast<uint64_t>(std::min(f, cols)));
    const uint64_t size = uint64_t{1} << bits, mask = size - 1;
    const int shift = 64 - bits;
    ws_.ensure_hash(size, false);
    I* keys = ws_.keys.data();
    std::fill(keys, keys + size, I(-1));
    for (int64_t t = s; t < e; ++t) {
      const I k = aj[t];
      for (int64_t u = bp[k], ue = bp[k + 1]; u < ue; ++u) {
        const I j = bj[u];
        uint64_t h = slot_of(j, shift);
        for (;;) {
          const I key = keys[h];
          if (key == j) break;
          if (key < 0) {
            keys[h] = j;
            ++count;
            break;
          }
          h = (h + 1) & mask;
        }
      }
    }
    return count;
  }

  // Writes row i of C, columns sorted, to oj/ox and returns its length; writes nothing past it.
  // `known` is the length from the symbolic pass, or -1 when the row is computed without one (fused):
  // the paths that rely on it are then skipped.
  BandRows<P, V, I>& band() { return band_; }

  int64_t compute(int64_t i, int64_t f, int64_t known, I* oj, V* ox) {
    if (i == twin_next_) return take_twin(oj, ox);
    const int64_t s = ap_[i], e = ap_[i + 1];
    if (f == 0) return 0;
    if (e - s == 1) {
      const int64_t u0 = bp_[aj_[s]];
      std::memcpy(oj, bj_ + u0, static_cast<size_t>(f) * sizeof(I));
      P::scale(ax_[s], bx_ + u0, f, ox);
      return f;
    }
    // The span costs a load per term of A_i; only rows with many products can amortise the scan, so
    // smaller rows skip it, and rows with f * kSpanPerFlop >= cols scan all columns without it.
    int64_t wlo = 0, whi = cols_ - 1;
    bool dense_span = f * kSpanPerFlop >= cols_;
    bool span_skipped = false;  // the hash below still wants it (its slots follow the span)
    if (!dense_span && f >= kSpanMinFlops) {
      if (span_off_ > 0) {
        --span_off_;
        span_skipped = true;
      } else {
        column_span(ap_, aj_, bp_, bj_, s, e, &wlo, &whi);
        dense_span = whi - wlo + 1 <= f * kSpanPerFlop;
        if (dense_span) span_misses_ = 0;
        else if (++span_misses_ >= kSpanMisses) span_misses_ = 0, span_off_ = kSpanOffRows;
      }
    }
    if (dense_span && known == whi - wlo + 1) return dense_full(s, e, wlo, known, oj, ox);
    if (dense_span) {
      if (P::kGroupAccumulate && try_groups(e - s)) {
        switch (twin_rows(i, s, e)) {
          case 2: return dense_flags_grouped<2>(i, s, e, wlo, whi, oj, ox);
          case 3: return dense_flags_grouped<3>(i, s, e, wlo, whi, oj, ox);
          case 4: return dense_flags_grouped<4>(i, s, e, wlo, whi, oj, ox);
          default: return dense_flags_grouped<1>(i, s, e, wlo, whi, oj, ox);
        }
      }
      switch (twin_rows(i, s, e)) {
        case 2: return dense_flags_twins<2>(i, s, e, wlo, whi, oj, ox);
        case 3: return dense_flags_twins<3>(i, s, e, wlo, whi, oj, ox);
        case 4: return dense_flags_twins<4>(i, s, e, wlo, whi, oj, ox);
        default: return dense_flags(s, e, wlo, whi, oj, ox);
      }
    }
    if (P::kEscMax > 0 && f > P::kEscMin && f <= P::kEscMax && cols_ <= kEscMaxCols) {
      if (esc_skip_ == 0) return esc(s, e, f, oj, ox);
      --esc_skip_;
    }
    if (known == f && P::kSortPairs) return distinct_pairs(s, e, f, oj, ox);
    if (cols_ <= kDenseListMaxCols && penalty_ < 16) return dense_list(s, e, f, oj, ox);
    if (++hash_rows_ % 256 == 0) penalty_ = 0;
    if (span_skipped) column_span(ap_, aj_, bp_, bj_, s, e, &wlo, &whi);
    return hashed(s, e, known >= 0 ? known : std::min(f, whi - wlo + 1), wlo, whi, oj, ox);
  }

 private:
  const I* ap_;
  const I* aj_;
  const V* ax_;
  const I* bp_;
  const I* bj_;
  const V* bx_;
  int64_t nnz_a_, cols_, rows_b_, rows_a_;
  RowWorkspace<V, I> ws_;
  BandRows<P, V, I> band_;
  int penalty_ = 0;
  int64_t hash_rows_ = 0;
  // ESC merges repeated columns one at a time, slower than the accumulators: after a row where more than
  // 1 in 8 products repeated a column (stencils, FEM; random rows have a repeat now and then) the next
  // kEscSkipRows eligible rows take the accumulators.
  static constexpr int kEscSkipRows = 256;
  int esc_skip_ = 0;
  static constexpr int kPatternMisses = 16, kPatternOffRows = 1024;
  // Random rows never span few columns: after kSpanMisses such rows in a row, the next kSpanOffRows rows
  // that would compute their span do not.
  static constexpr int kSpanMisses = 32, kSpanOffRows = 1024;
  int span_misses_ = 0, span_off_ = 0;
  int pat_misses_ = 0, pat_off_ = 0;

  // Every column of the span is in C_i (dense output rows, e.g. X·Xᵀ of text): no flags to keep.
  int64_t dense_full(int64_t s, int64_t e, int64_t wlo, int64_t nnz, I* oj, V* ox) {
    const I* aj = aj_;
    const V* ax = ax_;
    const I* bp = bp_;
    const I* bj = bj_;
    const V* bx = bx_;
    const int64_t nnz_a = nnz_a_, cols = cols_;
    ws_.ensure_dense(cols, true);
    V* acc = ws_.acc.data();
    for (int64_t t = s; t < e; ++t) {
      prefetch_b_row(aj, t + kPrefetchAhead, nnz_a, bp, bj, bx);
      const I k = aj[t];
      const V av = ax[t];
      for (int64_t u = bp[k], ue = bp[k + 1]; u < ue; ++u) acc[bj[u]] += product(av, bx[u]);
    }
    for (int64_t q = 0; q < nnz; ++q) {
      oj[q] = static_cast<I>(wlo + q);
      ox[q] = acc[wlo + q];
      acc[wlo + q] = V(0);
    }
    return nnz;
  }

  int64_t dense_flags(int64_t s, int64_t e, int64_t wlo, int64_t whi, I* oj, V* ox) {
    uint8_t* flags = ws_.ensure_dense(cols_, true);
    V* acc = ws_.acc.data();
    for (int64_t t = s; t < e; ++t) {
      prefetch_b_row(aj_, t + kPrefetchAhead, nnz_a_, bp_, bj_, bx_);
      add_term(t, acc, flags);
    }
    return P::template gather_flags<V, I>(flags, wlo, whi + 1, acc, oj, ox);
  }

  // dense_flags for row i and the R - 1 rows after it, which have its columns in A (twin_rows).
  template <int R>
  __attribute__((noinline)) int64_t dense_flags_twins(int64_t i, int64_t s, int64_t e, int64_t wlo, int64_t whi,
                                                       I* oj, V* ox) {
    uint8_t* flags = ws_.ensure_dense(cols_, true, R);
    V* acc = ws_.acc.data();
    const int64_t stride = ws_.dense_stride(cols_);
    for (int64_t t = s; t < e; ++t) {
      prefetch_b_row(aj_, t + kPrefetchAhead, nnz_a_, bp_, bj_, bx_);
      add_term<R>(t, acc, flags, e - s, stride);
    }
    const int64_t n = P::template gather_flags<V, I>(flags, wlo, whi + 1, acc, oj, ox);
    keep_twins(i, R, n, oj, acc + stride, stride);
    return n;
  }

  // acc[j] += a_t * B[k, j] and flags[j] = 1 over row k = aj[t] of B (a dense-span row's term); for R > 1
  // also for the R - 1 rows of A after it, which have the same columns (their terms len apart), into the
  // accumulators stride apart.
  template <int R = 1>
  __attribute__((always_inline)) void add_term(int64_t t, V* acc, uint8_t* flags, int64_t len = 0,
                                               int64_t stride = 0) const {
    const I* bj = bj_;
    const V* bx = bx_;
    const I k = aj_[t];
    V av[R];
    for (int r = 0; r < R; ++r) av[r] = ax_[t + r * len];
    for (int64_t u = bp_[k], ue = bp_[k + 1]; u < ue; ++u) {
      const I j = bj[u];
      const V b = bx[u];
      for (int r = 0; r < R; ++r) acc[r * stride + j] += product(av[r], b);
      flags[j] = 1;
    }
  }

  // dense_flags for rows whose terms come in groups over rows of B with the same columns (FEM): each
  // group goes to P::accumulate_group, other terms take the scalar loop. A function of its own, kept out
  // of line, so that dense_flags' code (and its loop placement, worth up to 10% on pyamg's bar) is not
  // changed for the matrices that have no such groups (try_groups).
  //
  // R > 1: rows i+1 .. i+R-1 of A have row i's columns (FEM: the dofs of one node), so their rows of C
  // have row i's columns too. They are computed here with it, into R accumulators side by side: each
  // value of B is loaded once for R rows, and the flags, the runs and the read-back are done once. The
  // other rows wait in the twin buffer until compute() asks for them (twin_next_).
  template <int R>
  __attribute__((noinline)) int64_t dense_flags_grouped(int64_t i, int64_t s, int64_t e, int64_t wlo, int64_t whi,
                                                         I* oj, V* ox) {
    const I* aj = aj_;
    const I* bp = bp_;
    const int64_t len = e - s;
    uint8_t* flags = ws_.ensure_dense(cols_, true, R);
    V* acc = ws_.acc.data();
    const int64_t stride = ws_.dense_stride(cols_);
    int64_t us[kMaxGroup];
    for (int64_t t = s; t < e; ++t) {
      prefetch_b_row(aj, t + kPrefetchAhead, nnz_a_, bp, bj_, bx_);
      const int64_t g = pattern_group(t, e);
      if (g == 1) {
        add_term<R>(t, acc, flags, len, stride);
        continue;
      }
      if (group_trial_) group_terms_ += g;
      for (int64_t q = 0; q < g; ++q) us[q] = bp[aj[t + q]];
      P::template accumulate_group<R>(ax_ + t, len, us, g, bj_ + us[0], static_cast<int64_t>(bp[aj[t] + 1]) - us[0],
                                      bx_, acc, stride, flags);
      t += g - 1;
    }
    const int64_t n = P::template gather_flags<V, I>(flags, wlo, whi + 1, acc, oj, ox);
    if constexpr (R > 1) keep_twins(i, R, n, oj, acc + stride, stride);
    return n;
  }

  // Rows after i with row i's columns in A (at most kMaxTwins rows in all, counting i).
  static constexpr int kMaxTwins = 4;
  // Neighbouring FEM rows share most of their columns, so comparing them costs up to a row's length:
  // after kTwinMisses dense-span rows in a row without a twin, rows are not compared for kTwinOffRows
  // (pyamg's bar, 7% twins: 4% slower with every row compared).
  static constexpr int kTwinMisses = 32, kTwinOffRows = 1024;
  int twin_misses_ = 0, twin_off_ = 0;
  int twin_rows(int64_t i, int64_t s, int64_t e) {
    if (twin_off_ > 0) {
      --twin_off_;
      return 1;
    }
    const int64_t len = e - s;
    int r = 1;
    for (; r < kMaxTwins && i + r < rows_a_; ++r) {
      const int64_t s2 = ap_[i + r];
      if (ap_[i + r + 1] - s2 != len || std::memcmp(aj_ + s2, aj_ + s, static_cast<size_t>(len) * sizeof(I)) != 0)
        break;
    }
    if (r > 1) twin_misses_ = 0;
    else if (++twin_misses_ >= kTwinMisses) twin_misses_ = 0, twin_off_ = kTwinOffRows;
    return r;
  }
  // Moves rows i+1 .. i+r-1 (columns oj[0, n), values in the accumulators from acc, cleared behind) to
  // the twin buffer.
  void keep_twins(int64_t i, int r, int64_t n, const I* oj, V* acc, int64_t stride) {
    if (twin_j_.size() < static_cast<size_t>(n)) twin_j_.resize(static_cast<size_t>(n));
    if (twin_x_.size() < static_cast<size_t>((r - 1) * n)) twin_x_.resize(static_cast<size_t>((r - 1) * n));
    std::memcpy(twin_j_.data(), oj, static_cast<size_t>(n) * sizeof(I));
    V* x = twin_x_.data();
    for (int q = 1; q < r; ++q, acc += stride, x += n)
      for (int64_t p = 0; p < n; ++p) {
        x[p] = acc[oj[p]];
        acc[oj[p]] = V(0);
      }
    twin_n_ = n;
    twin_first_ = twin_next_ = i + 1;
    twin_last_ = i + r - 1;
  }
  int64_t take_twin(I* oj, V* ox) {
    const int64_t n = twin_n_;
    std::memcpy(oj, twin_j_.data(), static_cast<size_t>(n) * sizeof(I));
    std::memcpy(ox, twin_x_.data() + (twin_next_ - twin_first_) * n, static_cast<size_t>(n) * sizeof(V));
    twin_next_ = twin_next_ < twin_last_ ? twin_next_ + 1 : -1;
    return n;
  }
  std::vector<I> twin_j_;
  std::vector<V> twin_x_;
  int64_t twin_n_ = 0, twin_first_ = -1, twin_next_ = -1, twin_last_ = -1;

  // Dense-span rows take dense_flags_grouped for the engine's first kGroupTrialRows of them, and after
  // that only if groups covered at least half of those rows' terms (DG: nearly all; 2-D elasticity: most;
  // random matrices none; pyamg's 3-D bar 12%, where the grouped path measured 8% slower overall).
  static constexpr int64_t kGroupTrialRows = 64;
  int64_t group_rows_ = 0, group_terms_ = 0, trial_terms_ = 0;
  bool group_trial_ = false;  // the current row counts towards the trial
  bool try_groups(int64_t terms) {
    group_trial_ = group_rows_ < kGroupTrialRows;
    if (!group_trial_ && 2 * group_terms_ < trial_terms_) return false;
    if (group_of_.empty()) group_of_.assign(static_cast<size_t>(rows_b_), -1);
    if (group_trial_) ++group_rows_, trial_terms_ += terms;
    return true;
  }

  // How many terms from t on (at most kMaxGroup, before e) take consecutive rows of B with exactly the
  // same columns as term t's (FEM: the dofs of one node or element share their couplings; A's columns
  // are sorted, so those terms are adjacent), when those rows have at least kMinGroupRow entries in runs
  // of kMinGroupRun consecutive columns on average; 1 otherwise. Shorter runs (pyamg's 3-D bar: 2.5) are
  // slower in vectors than the scalar loop. Each row of B is examined once per engine (group_of_).
  static constexpr int64_t kMaxGroup = 32, kMinGroupRow = 8, kMinGroupRun = 4;
  std::vector<int8_t> group_of_;  // per row of B: rows from it on with its columns (<= kMaxGroup), -1 unknown
  int64_t pattern_group(int64_t t, int64_t e) {
    const I k = aj_[t];
    if (group_of_[k] < 0) find_groups(k);
    int64_t g = std::min<int64_t>(group_of_[k], e - t);
    while (g > 1 && aj_[t + g - 1] != k + g - 1) --g;
    return g;
  }
  // Fills group_of_ for the chain of rows from k that share k's columns.
  void find_groups(int64_t k) {
    const I* bp = bp_;
    const I* bj = bj_;
    const int64_t u0 = bp[k], len = static_cast<int64_t>(bp[k + 1]) - u0;
    int64_t runs = 1;
    for (int64_t u = u0 + 1; u < u0 + len; ++u) runs += bj[u] != bj[u - 1] + 1;
    if (len < kMinGroupRow || runs * kMinGroupRun > len) {
      group_of_[k] = 1;
      return;
    }
    int64_t m = k + 1;  // rows [k, m) share the columns
    for (; m < rows_b_ && m - k < kMaxGroup; ++m) {
      const int64_t v0 = bp[m];
      if (static_cast<int64_t>(bp[m + 1]) - v0 != len || std::memcmp(bj + v0, bj + u0, static_cast<size_t>(len) * sizeof(I)) != 0)
        break;
    }
    for (int64_t r = k; r < m; ++r) group_of_[r] = static_cast<int8_t>(m - r);
  }

  // No two products share a column (common for random matrices): C_i is the products themselves,
  // sorted by column; no accumulator. 0 + p keeps scipy's sign of zero.
  int64_t distinct_pairs(int64_t s, int64_t e, int64_t f, I* oj, V* ox) {
    const int64_t n = expand(s, e, f, 8);
    P::sort_pairs_into(ws_.keys.data(), ws_.vals.data(), n, oj, ox);
    return n;
  }

  // The row's products in A's order into ws_.keys / ws_.vals (columns, values; `pad` spare slots for
  // vector tails; P::expand_terms); returns their count.
  int64_t expand(int64_t s, int64_t e, int64_t f, int64_t pad) {
    const int64_t nnz_a = nnz_a_;
    const I* aj = aj_;
    const V* ax = ax_;
    const I* bp = bp_;
    const I* bj = bj_;
    const V* bx = bx_;
    if (ws_.keys.size() < static_cast<size_t>(f + pad)) ws_.keys.resize(static_cast<size_t>(f + pad));
    if (ws_.vals.size() < static_cast<size_t>(f + pad)) ws_.vals.resize(static_cast<size_t>(f + pad));
    I* keys = ws_.keys.data();
    V* vals = ws_.vals.data();
    return P::expand_terms(aj, ax, bp, bj, bx, s, e, nnz_a, keys, vals);
  }

  // ESC: the row's products in A's order (columns and values), sorted by column together with their
  // position (so equal columns stay in A's order and sum as scipy sums them), equal columns merged. No
  // accumulator arrays are touched.
  int64_t esc(int64_t s, int64_t e, int64_t f, I* oj, V* ox) {
    const int64_t n = expand(s, e, f, 16);
    const int64_t len = P::esc_sort_merge(ws_.keys.data(), ws_.vals.data(), n, oj, ox);
    if ((n - len) * 8 > n) esc_skip_ = kEscSkipRows;
    return len;
  }

  // Dense accumulator with a list of first touches (branch-free append) and a stamp per column, so
  // nothing is cleared between rows: a column's value restarts from 0 at its first touch in a row.
  // The list is nearly sorted when B's rows overlap little (stencils, FEM); P::sort_into sorts it.
  int64_t dense_list(int64_t s, int64_t e, int64_t f, I* oj, V* ox) {
    const I* aj = aj_;
    const V* ax = ax_;
    const I* bp = bp_;
    const I* bj = bj_;
    const V* bx = bx_;
    const int64_t nnz_a = nnz_a_, cols = cols_;
    const Stamp stamp = ws_.next_stamp(cols);
    Stamp* mark = ws_.mark.data();
    if (ws_.list_acc.size() < static_cast<size_t>(cols)) ws_.list_acc.resize(static_cast<size_t>(cols));
    V* acc = ws_.list_acc.data();
    if (ws_.keys.size() < static_cast<size_t>(f) + 8) ws_.keys.resize(static_cast<size_t>(f) + 8);
    I* list = ws_.keys.data();
    int64_t n = 0;
    for (int64_t t = s; t < e; ++t) {
      prefetch_b_row(aj, t + kPrefetchAhead, nnz_a, bp, bj, bx);
      const I k = aj[t];
      const V av = ax[t];
      for (int64_t u = bp[k], ue = bp[k + 1]; u < ue; ++u) {
        const I j = bj[u];
        const V p = product(av, bx[u]);
        // A branch, not a branch-free select: one store per repeat product instead of three (stamp, value,
        // list), and the pattern repeats from row to row in stencil/FEM matrices (and is nearly always
        // "new" for random ones), so it predicts well: 10% faster on Poisson, 2-3% on Erdős–Rényi.
        if (mark[j] != stamp) {
          mark[j] = stamp;
          acc[j] = V(0) + p;
          list[n++] = j;
        } else {
          acc[j] += p;
        }
      }
    }
    // Random rows never repeat: after kPatternMisses misses in a row, stop checking (and remembering)
    // for the next kPatternOffRows rows.
    const bool pattern = P::kReusePattern && n <= kPatternMax && (pat_off_ == 0 || --pat_off_ == 0);
    if (pattern) {
      if (ws_.pat_n == n && reuse_pattern(list, n, acc, oj, ox)) {
        pat_misses_ = 0;
        return n;
      }
      if (++pat_misses_ >= kPatternMisses) pat_off_ = kPatternOffRows, pat_misses_ = 0;
    }
    // Adaptive choice: rows whose first touches come far from sorted (random columns) are cheaper
    // with the order-preserving hash below; after a run of such rows, later rows go there, with a
    // retry every 256 rows. Either path gives identical output.
    penalty_ = P::sort_gather(list, n, acc, oj, ox) ? std::max(0, penalty_ - 1) : penalty_ + 8;
    if (pattern) {
      std::memcpy(ws_.pat_keys, list, static_cast<size_t>(n) * sizeof(I));
      std::memcpy(ws_.pat_sorted, oj, static_cast<size_t>(n) * sizeof(I));
      ws_.pat_n = n;
    }
    return n;
  }

  // Stencil and FEM rows repeat the previous row's touch list shifted by a constant (the same
  // neighbourhood one column over). If list == previous list + d elementwise, the sorted row is the
  // previous sorted row + d: no sort, and the value loads need only d. Checked exactly, so any row that
  // does not repeat takes the sort.
  bool reuse_pattern(const I* list, int64_t n, const V* acc, I* oj, V* ox) {
    const I* pk = ws_.pat_keys;
    const I* ps = ws_.pat_sorted;
    const I d = list[0] - pk[0];
    I diff = 0;
    for (int64_t q = 0; q < n; ++q) diff |= (list[q] - pk[q]) ^ d;
    if (diff != 0) return false;
    for (int64_t q = 0; q < n; ++q) {
      const I j = ps[q] + d;
      oj[q] = j;
      ox[q] = acc[j];
    }
    return true;
  }

  // Order-preserving hash: slot = (j - lo) * size / span, linear probing into an overflow tail (no
  // wrap-around). The occupied slots then hold the keys in nearly sorted order (an inversion only inside
  // a probe cluster), so a short insertion sort finishes the row; std::sort if it is not short.
  // `bound` >= the row's length sizes the table.
  int64_t hashed(int64_t s, int64_t e, int64_t bound, int64_t wlo, int64_t whi, I* oj, V* ox) {
    const I* aj = aj_;
    const V* ax = ax_;
    const I* bp = bp_;
    const I* bj = bj_;
    const V* bx = bx_;
    const int64_t nnz_a = nnz_a_;
    const uint64_t size = 2 * static_cast<uint64_t>(bound);
    const uint64_t span = static_cast<uint64_t>(whi - wlo + 1);
    const uint64_t mul = (size << 32) / span;  // slot = ((j - lo) * mul) >> 32 < size
    const size_t len = static_cast<size_t>(size + bound + 1);
    ws_.ensure_hash(len, true);
    I* keys = ws_.keys.data();
    V* vals = ws_.vals.data();
    std::fill(keys, keys + len, I(-1));
    int64_t count = 0;
    for (int64_t t = s; t < e; ++t) {
      prefetch_b_row(aj, t + kPrefetchAhead, nnz_a, bp, bj, bx);
      const I k = aj[t];
      const V av = ax[t];
      for (int64_t u = bp[k], ue = bp[k + 1]; u < ue; ++u) {
        const I j = bj[u];
        const V p = product(av, bx[u]);
        uint64_t h = static_cast<uint64_t>((static_cast<unsigned __int128>(static_cast<uint64_t>(j - wlo)) * mul) >> 32);
        for (;;) {
          const I key = keys[h];
          if (key == j) {
            vals[h] += p;
            break;
          }
          if (key < 0) {
            keys[h] = j;
            vals[h] = p;
            ++count;
            break;
          }
          ++h;
        }
      }
    }
    // Compact branch-free (a half-empty table mispredicts a branch per slot: R-MAT was 20% slower);
    // n < count on every write, so nothing lands past the row.
    int64_t n = 0;
    for (size_t h = 0; n < count; ++h) {
      const I key = keys[h];
      oj[n] = key;
      ox[n] = vals[h];
      n += key >= 0;
    }
    sort_pairs_nearly_sorted(oj, ox, n);
    return n;
  }
};

}  // namespace
}  // namespace sparseforge
