// Band rows of spgemm: stencil matrices (finite differences on a grid, image operators) have rows whose
// columns are the row's index plus fixed offsets. Where row i of A has the columns i + a[t] and the row
// k = i + a[t] of B that term t takes has the columns k + b[t][q], row i of C has the columns i + c[s]
// (the sorted distinct sums a[t] + b[t][q]) and product (t, q) always lands in the same slot: no
// accumulator, no touch list, no sort, and B's columns need not be read again. Consecutive rows with
// the same pattern are computed as a run: their values in A, their terms' rows of B and their rows of C
// all sit at fixed strides, so a run needs no row pointers either. The policy's band_rows adds the
// products into the output slots (AVX-512: each term's products permuted into place), in A's order per
// slot, so the sums are scipy's bit for bit.
//
// A pattern is keyed by A's offsets and, per term, the "shape" of the row of B it takes (its offsets,
// numbered in a registry of up to kMaxShapes per engine). Each row of B is classified once: the memo
// keeps its shape and how many rows from it on share that shape, so a run is bounded by one lookup per
// term and only its rows of A are checked row by row. Patterns are kept in a small cache: the rows near
// a grid's faces (22% of a 3-D Poisson product's rows) have patterns of their own that recur on every
// grid line. A pattern is planned on its second sighting, so matrices whose rows never repeat one plan
// nothing; after kFails rows in a row that are not band rows, rows are tried only every kGap, then
// every kOffRows. SPARSEFORGE_SPGEMM_BAND=0 turns the path off.
#pragma once

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "spgemm.h"
#include "spgemm_row_tools.h"

namespace sparseforge {
namespace {

// The shape memo of the engine running on this thread (one at a time per thread: an engine lives for
// one part of one call). Kept between calls: allocating and clearing a word per row of B for every
// engine cost two page-faulting, zero-filling allocations per two-thread call (P3: 5.1-5.6 -> 4.4 ms).
// Entries are tagged with their engine's epoch, so another engine's entries read as unknown.
struct BandMemo {
  std::vector<uint32_t> rows;
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
      : a_(a), b_(b) {
    const char* env = std::getenv("SPARSEFORGE_SPGEMM_BAND");
    if (!P::kBand || (env != nullptr && env[0] == '0')) gap_ = INT_MAX;
  }

  // The length of row i of C if row i is a band row, else 0.
  int64_t start(int64_t i) {
    if (cur_ != nullptr && matches(*cur_, i)) return cur_->pat.nc;
    if (++skipped_ < gap_) return 0;
    skipped_ = 0;
    if (memo_ == nullptr) take_memo();
    Plan* p = find_plan(i);
    if (p == nullptr) {
      ++fails_;
      gap_ = fails_ >= kFailsOff ? kOffRows : fails_ >= kFails ? kGap : 1;
      return 0;
    }
    fails_ = 0;
    gap_ = 1;
    cur_ = p;
    return p->pat.nc;
  }
  // Rows i0 .. while they follow the pattern start(i0) found, before `end`, into oj/ox (nc entries
  // each); returns how many.
  int64_t run(int64_t i0, int64_t end, I* oj, V* ox) {
    const Plan& p = *cur_;
    for (int t = 0; t < p.pat.na; ++t) end = std::min(end, i0 + shape_run(i0 + p.pat.a[t]));
    int64_t i = i0 + 1;
    while (i < end && a_row_matches(p, i)) ++i;
    const int64_t rows = i - i0;
    const V* brow[kBandMaxA];
    for (int t = 0; t < p.pat.na; ++t) brow[t] = b_.data + b_.indptr[i0 + p.pat.a[t]];
    P::band_rows(p.plan, a_.data + a_.indptr[i0], brow, rows, ox);
    P::band_cols(p.plan, i0, rows, oj);
    return rows;
  }

 private:
  static constexpr int kFails = 16, kFailsOff = 64, kGap = 16, kOffRows = 1024;
  static constexpr int kMaxShapes = 64, kMaxPlans = 32, kNoShape = 255;
  static constexpr uint32_t kRunCap = 0xFFFF;
  struct Shape {
    int nb;
    int64_t b[kBandMaxB];
  };
  struct Plan {
    bool valid = false;
    uint64_t hash = 0;
    uint8_t shape[kBandMaxA];
    BandPattern pat;
    typename P::template BandPlan<V> plan;
  };

  const CsrRef<V, I> a_, b_;
  // Per row k of B: epoch_ << 24 | shape << 16 | how many rows from k on have that shape (capped).
  uint32_t* memo_ = nullptr;
  uint32_t epoch_ = 0;
  std::vector<Shape> shapes_;
  int last_shape_ = -1;
  std::unique_ptr<Plan[]> plans_;
  int n_plans_ = 0, next_plan_ = 0;
  Plan* cur_ = nullptr;
  uint64_t seen_[256] = {};  // hashes of patterns met once (planned when met again)
  int skipped_ = 0, gap_ = 1, fails_ = 0;

  void take_memo() {
    BandMemo& memo = band_memo();
    if (memo.rows.size() < static_cast<size_t>(b_.rows)) memo.rows.resize(static_cast<size_t>(b_.rows), 0);
    if (++memo.epoch == 256) {
      std::fill(memo.rows.begin(), memo.rows.end(), uint32_t{0});
      memo.epoch = 1;
    }
    memo_ = memo.rows.data();
    epoch_ = memo.epoch;
  }
  static bool same_shape(const Shape& x, const Shape& y) {
    if (x.nb != y.nb) return false;
    bool same = true;
    for (int q = 0; q < x.nb; ++q) same &= x.b[q] == y.b[q];
    return same;
  }
  bool a_row_matches(const Plan& p, int64_t i) const {
    const int64_t s = a_.indptr[i];
    return static_cast<int64_t>(a_.indptr[i + 1]) - s == p.pat.na && P::band_a_matches(p.plan, a_.indices + s, i);
  }
  bool matches(const Plan& p, int64_t i) {
    if (!a_row_matches(p, i)) return false;
    for (int t = 0; t < p.pat.na; ++t)
      if (shape_of(i + p.pat.a[t]) != p.shape[t]) return false;
    return true;
  }

  __attribute__((always_inline)) uint32_t lookup(int64_t k) {
    const uint32_t m = memo_[k];
    return (m >> 24) == epoch_ ? m : classify(k);
  }
  int shape_of(int64_t k) { return static_cast<int>(lookup(k) >> 16 & 0xFF); }
  int64_t shape_run(int64_t k) { return lookup(k) & kRunCap; }

  // Row k of B and the rows after it with the same offsets: their shape in the registry (kNoShape when
  // it is full or the rows are too long), memoised with each row's run. Rows k..k+n-1 share their offsets
  // when each has k's length nb and, stored one after another, each entry is one more than the entry nb
  // before it: both are checked 16 at a time over indptr and the indices (a row at a time, comparing
  // each row with row k, this was 15% of a one-thread Poisson 2-D product). A run that reaches rows
  // classified already joins theirs, and only the rows before them are memoised here: the lower half of
  // a two-thread call walks its blocks downwards, and each block's runs would otherwise be walked again
  // up to the cap (Poisson 2-D: 24% more rows classified on two threads than on one).
  __attribute__((noinline)) uint32_t classify(int64_t k) {
    using U = std::make_unsigned_t<I>;
    const I* bp = b_.indptr;
    const I* bj = b_.indices;
    const int64_t u = bp[k], nb = static_cast<int64_t>(bp[k + 1]) - u;
    const int64_t limit = std::min<int64_t>(kRunCap, b_.rows - k);
    const I len = static_cast<I>(nb);
    int64_t n = first_false(k + 1, k + limit, [=](int64_t r) { return bp[r + 1] - bp[r] == len; }) - k;
    if (nb > 0 && n > 1) {
      const int64_t t = first_false(u, u + (n - 1) * nb, [=](int64_t q) {
        return static_cast<U>(static_cast<U>(bj[q + nb]) - static_cast<U>(bj[q])) == U{1};
      });
      n = std::min(n, (t - u) / nb + 1);
    }
    const uint32_t* memo = memo_;
    const uint32_t epoch = epoch_;
    const int64_t joined = first_false(k + 1, k + n, [=](int64_t r) { return (memo[r] >> 24) != epoch; }) - k;
    int64_t fresh = n;
    if (joined < n) {
      fresh = joined;
      n = std::min<int64_t>(kRunCap, joined + (memo_[k + joined] & kRunCap));
    }
    int id = kNoShape;
    if (nb >= 1 && nb <= kBandMaxB) {
      Shape sh;
      sh.nb = static_cast<int>(nb);
      for (int q = 0; q < sh.nb; ++q) sh.b[q] = bj[u + q] - k;
      if (last_shape_ >= 0 && same_shape(shapes_[last_shape_], sh)) id = last_shape_;
      for (size_t x = 0; x < shapes_.size() && id == kNoShape; ++x)
        if (same_shape(shapes_[x], sh)) id = static_cast<int>(x);
      if (id == kNoShape && shapes_.size() < kMaxShapes) {
        id = static_cast<int>(shapes_.size());
        shapes_.push_back(sh);
      }
      if (id != kNoShape) last_shape_ = id;
    }
    const uint32_t tag = epoch_ << 24 | static_cast<uint32_t>(id) << 16;
    for (int64_t r = 0; r < fresh; ++r) memo_[k + r] = tag | static_cast<uint32_t>(n - r);
    return tag | static_cast<uint32_t>(n);
  }
  // The first j in [from, to) where pred(j) is false (`to` when none): 16 at a time, branch-free within a
  // block so that the compiler vectorises it, then one at a time within the block that fails.
  template <class F>
  static int64_t first_false(int64_t from, int64_t to, F pred) {
    constexpr int64_t kBlock = 64;
    int64_t j = from;
    for (; j + kBlock <= to; j += kBlock) {
      uint32_t fails = 0;
      for (int64_t q = 0; q < kBlock; ++q) fails |= static_cast<uint32_t>(!pred(j + q));
      if (fails != 0) break;
    }
    for (; j < to; ++j)
      if (!pred(j)) return j;
    return to;
  }

  // The cached plan for row i's pattern (planned here if the pattern was met before); nullptr when row i
  // is not a band row.
  Plan* find_plan(int64_t i) {
    const int64_t s = a_.indptr[i], na = static_cast<int64_t>(a_.indptr[i + 1]) - s;
    if (na < 2 || na > kBandMaxA) return nullptr;
    int64_t a[kBandMaxA];
    uint8_t shape[kBandMaxA];
    uint64_t h = static_cast<uint64_t>(na);
    for (int t = 0; t < na; ++t) {
      a[t] = a_.indices[s + t] - i;
      const int id = shape_of(i + a[t]);
      if (id == kNoShape) return nullptr;
      shape[t] = static_cast<uint8_t>(id);
      h = (h ^ static_cast<uint64_t>(a[t] * 64 + id)) * 0x9E3779B97F4A7C15ull;
    }
    for (int x = 0; x < n_plans_; ++x) {
      Plan& p = plans_[x];
      if (p.hash == h && p.pat.na == na && std::equal(a, a + na, p.pat.a) && std::equal(shape, shape + na, p.shape))
        return p.valid ? &p : nullptr;
    }
    uint64_t& seen = seen_[h >> 56];
    if (seen != h) {
      seen = h;
      return nullptr;
    }
    if (!plans_) plans_.reset(new Plan[kMaxPlans]);
    Plan& p = plans_[next_plan_];
    next_plan_ = (next_plan_ + 1) % kMaxPlans;
    n_plans_ = std::max(n_plans_, next_plan_ == 0 ? kMaxPlans : next_plan_);
    if (cur_ == &p) cur_ = nullptr;
    p.hash = h;
    p.pat.na = static_cast<int>(na);
    std::copy(a, a + na, p.pat.a);
    std::copy(shape, shape + na, p.shape);
    p.valid = plan(&p);
    return p.valid ? &p : nullptr;
  }
  bool plan(Plan* p) {
    BandPattern& pat = p->pat;
    int64_t sums[kBandMaxA * kBandMaxB];
    int n = 0;
    for (int t = 0; t < pat.na; ++t) {
      const Shape& sh = shapes_[p->shape[t]];
      pat.nb[t] = sh.nb;
      for (int q = 0; q < sh.nb; ++q) {
        pat.b[t][q] = sh.b[q];
        sums[n++] = pat.a[t] + sh.b[q];
      }
    }
    std::sort(sums, sums + n);
    n = static_cast<int>(std::unique(sums, sums + n) - sums);
    if (n > kBandMaxC) return false;
    pat.nc = n;
    std::copy(sums, sums + n, pat.c);
    for (int t = 0; t < pat.na; ++t)
      for (int q = 0; q < pat.nb[t]; ++q)
        pat.slot[t][q] = static_cast<int8_t>(std::lower_bound(pat.c, pat.c + n, pat.a[t] + pat.b[t][q]) - pat.c);
    return P::band_plan(pat, &p->plan);
  }
};

}  // namespace
}  // namespace sparseforge
