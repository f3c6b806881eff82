// Band rows of spgemm: stencil matrices (finite differences on a grid, image operators) have rows whose
// columns are the row's index plus fixed offsets. Where row i of A has the columns i + a[t] and every row
// k of B it takes has the columns k + b[q], row i of C has the columns i + c[s] (the sorted distinct
// sums a[t] + b[q]) and product (t, q) always lands in the same slot: no accumulator, no touch list, no
// sort, and B's columns need not be read again. Consecutive such rows are computed as a run: their
// values in A, their rows of B (each exactly nb entries) and their rows of C all sit at fixed strides,
// so a run needs no row pointers either. The policy's band_rows adds the products into the output slots
// (AVX-512: each term's products permuted into place), in A's order per slot, so the sums are scipy's
// bit for bit.
//
// The pattern is probed from a row and kept while rows match it. B's rows are checked once per pattern,
// each scan remembering how many rows from there on match, so a run is bounded by one lookup per term
// and only its rows of A are checked row by row. Rows that do not match
// take RowEngine::compute. Probing is cheap but not free: after kFailedProbes patterns in a row that no
// other row matched (random matrices), a new one is probed only every kOffRows rows.
// SPARSEFORGE_SPGEMM_BAND=0 turns the path off.
#pragma once

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "spgemm.h"
#include "spgemm_row_tools.h"

namespace sparseforge {
namespace {

// The b_run memo of the engine running on this thread (one at a time per thread: an engine lives for
// one part of one call). Kept between calls: allocating and clearing a word per row of B for every
// engine cost two page-faulting, zero-filling allocations per two-thread call. Entries are tagged with
// the epoch of the pattern that wrote them, so an older engine's entries read as unknown.
struct BandMemo {
  std::vector<uint32_t> runs;
  uint32_t epoch = 0;
};
inline BandMemo& band_memo() {
  thread_local BandMemo memo;
  return memo;
}

template <class P, typename V, typename I>
class BandRows {
 public:
  BandRows(const CsrRef<V, I>& a, const CsrRef<V, I>& b)
      : ap_(a.indptr), aj_(a.indices), ax_(a.data), bp_(b.indptr), bj_(b.indices), bx_(b.data), rows_b_(b.rows) {
    const char* env = std::getenv("SPARSEFORGE_SPGEMM_BAND");
    if (!P::kBand || (env != nullptr && env[0] == '0')) gap_ = INT_MAX;
  }

  // The length of row i of C if row i is a band row (probing a new pattern after a run of misses), else 0.
  int64_t start(int64_t i) {
    if (pat_.na > 0 && matches(i)) {
      misses_ = 0;
      hit_ = true;
      return pat_.nc;
    }
    if (++misses_ < gap_) return 0;
    misses_ = 0;
    failed_ = hit_ ? 0 : failed_ + 1;
    gap_ = failed_ >= kFailedProbes ? kOffRows : kMisses;
    hit_ = false;
    return probe(i) && matches(i) ? pat_.nc : 0;
  }
  // Rows i0 .. while they match, before `end`, into oj/ox (pat_.nc entries each), where start(i0) > 0;
  // returns how many. The rows of B the run takes are bounded by one b_run lookup per term; its rows of
  // A are checked one by one.
  int64_t run(int64_t i0, int64_t end, I* oj, V* ox) {
    for (int t = 0; t < pat_.na; ++t) end = std::min(end, i0 + b_run(i0 + pat_.a[t]));
    int64_t i = i0 + 1;
    while (i < end && a_row_matches(i)) ++i;
    const int64_t rows = i - i0;
    if (rows > 1) hit_ = true;  // the pattern matched more than the row it was probed from
    const V* brow[kBandMaxA];
    for (int t = 0; t < pat_.na; ++t) brow[t] = bx_ + bp_[i0 + pat_.a[t]];
    P::band_rows(plan_, ax_ + ap_[i0], brow, rows, ox);
    P::band_cols(plan_, i0, rows, oj);
    return rows;
  }
  int64_t flop() const { return int64_t{pat_.na} * pat_.nb; }

 private:
  static constexpr int kMisses = 16, kFailedProbes = 4, kOffRows = 1024;
  const I* ap_;
  const I* aj_;
  const V* ax_;
  const I* bp_;
  const I* bj_;
  const V* bx_;
  int64_t rows_b_;
  BandPattern pat_;
  typename P::template BandPlan<V> plan_;
  // Per row k of B: (epoch_ << 24) | how many rows from k on follow pat_.b (b_run); another epoch: not
  // known yet. The array is the thread's (band_memo), kept between calls.
  uint32_t* memo_ = nullptr;
  uint32_t epoch_ = 0;
  static constexpr uint32_t kRunCap = (1u << 24) - 1;
  int misses_ = 0, gap_ = 1, failed_ = 0;
  bool hit_ = false;

  bool a_row_matches(int64_t i) const {
    const int64_t s = ap_[i];
    return static_cast<int64_t>(ap_[i + 1]) - s == pat_.na && P::band_a_matches(plan_, aj_ + s, i);
  }
  bool matches(int64_t i) {
    if (!a_row_matches(i)) return false;
    for (int t = 0; t < pat_.na; ++t)
      if (b_run(i + pat_.a[t]) == 0) return false;
    return true;
  }
  // How many rows of B from k on follow pat_.b; each row is scanned once per pattern.
  int64_t b_run(int64_t k) {
    const uint32_t m = memo_[k];
    if ((m >> 24) == epoch_) return m & kRunCap;
    int64_t n = 0;
    while (k + n < rows_b_ && n < kRunCap && b_row_matches(k + n)) ++n;
    for (int64_t r = 0; r < n; ++r) memo_[k + r] = epoch_ << 24 | static_cast<uint32_t>(n - r);
    if (k + n < rows_b_ && n < kRunCap) memo_[k + n] = epoch_ << 24;
    return n;
  }
  bool b_row_matches(int64_t k) const {
    const int64_t u = bp_[k];
    if (static_cast<int64_t>(bp_[k + 1]) - u != pat_.nb) return false;
    bool same = true;
    for (int q = 0; q < pat_.nb; ++q) same &= static_cast<int64_t>(bj_[u + q]) == k + pat_.b[q];
    return same;
  }

  // The pattern of row i of A and of the row of B its middle term takes; false (and no pattern) when
  // the rows are too long for it or the policy cannot place the products.
  bool probe(int64_t i) {
    pat_.na = 0;
    const int64_t s = ap_[i], na = static_cast<int64_t>(ap_[i + 1]) - s;
    if (na < 2 || na > kBandMaxA) return false;
    const int64_t k0 = aj_[s + na / 2], u0 = bp_[k0], nb = static_cast<int64_t>(bp_[k0 + 1]) - u0;
    if (nb < 1 || nb > kBandMaxB) return false;
    BandPattern p;
    p.na = static_cast<int>(na);
    p.nb = static_cast<int>(nb);
    for (int t = 0; t < p.na; ++t) p.a[t] = aj_[s + t] - i;
    for (int q = 0; q < p.nb; ++q) p.b[q] = bj_[u0 + q] - k0;
    int64_t sums[kBandMaxA * kBandMaxB];
    int n = 0;
    for (int t = 0; t < p.na; ++t)
      for (int q = 0; q < p.nb; ++q) sums[n++] = p.a[t] + p.b[q];
    std::sort(sums, sums + n);
    n = static_cast<int>(std::unique(sums, sums + n) - sums);
    if (n > kBandMaxC) return false;
    p.nc = n;
    std::copy(sums, sums + n, p.c);
    for (int t = 0; t < p.na; ++t)
      for (int q = 0; q < p.nb; ++q)
        p.slot[t][q] = static_cast<int8_t>(std::lower_bound(p.c, p.c + n, p.a[t] + p.b[q]) - p.c);
    if (!P::band_plan(p, &plan_)) return false;
    pat_ = p;
    BandMemo& memo = band_memo();
    if (memo.runs.size() < static_cast<size_t>(rows_b_)) memo.runs.resize(static_cast<size_t>(rows_b_), 0);
    if (++memo.epoch == 256) {
      std::fill(memo.runs.begin(), memo.runs.end(), uint32_t{0});
      memo.epoch = 1;
    }
    memo_ = memo.runs.data();
    epoch_ = memo.epoch;
    return true;
  }
};

}  // namespace
}  // namespace sparseforge
