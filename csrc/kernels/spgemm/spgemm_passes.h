// The passes of spgemm over a part's rows, around RowEngine (spgemm_rows.h): the fused first pass
// (forwards into a direct or buffered part, backwards in blocks for the lower half of a two-thread call,
// the two-thread halves protocol, band-row runs) and the second pass over the rows it left. Internal
// linkage like the row kernels: each ISA's translation unit expands SPARSEFORGE_SPGEMM_DEFINE once.
#pragma once

#include <algorithm>
#include <cstring>
#include <new>

#include "spgemm.h"
#include "spgemm_band.h"
#include "spgemm_checks.h"
#include "spgemm_rows.h"
#include "spgemm_stream.h"

namespace sparseforge {
namespace {

// Fused pass over rows [r0, r1) (one part): each row is computed once into the part's buffer, while
// the buffer can grow within the call's budget; rows are counted only (symbolic; computed again by
// numeric_rows once C is allocated) after the budget runs out, and for rows with far more products than
// columns, whose count stops early once the row has every column (dense rows such as X·Xᵀ).
constexpr int64_t kDeferFlopPerCol = 8;
// Products of row i (sum over k in A_i of nnz(B_k)).
template <typename V, typename I>
inline int64_t row_flop(const CsrRef<V, I>& a, const CsrRef<V, I>& b, int64_t i) {
  int64_t f = 0;
  for (int64_t t = a.indptr[i], te = a.indptr[i + 1]; t < te; ++t)
    f += static_cast<int64_t>(b.indptr[a.indices[t] + 1]) - b.indptr[a.indices[t]];
  return f;
}

// One row of the first pass, with f > 0 products: computed into the part's buffer (a direct part: at
// direct_j/x + used, through the stage `so` when there is one), or only counted (fused[i] = 0, flop[i] = f
// for the second pass) when *fuse is off or it has too many products. flop[i] is left alone for the rows
// computed here, which nothing reads it for (8 bytes a row less to write: 1.3 MB of Poisson 2-D).
template <class P, typename V, typename I>
__attribute__((always_inline)) inline void fuse_row(RowEngine<P, V, I>& eng, int64_t i, int64_t f, int64_t cols,
                                                    int64_t* flop, I* counts, uint8_t* fused, SpgemmPart<V, I>* part,
                                                    bool* fuse, StreamOut<V, I>* so = nullptr) {
  I* const dj = part->direct_j;
  V* const dx = part->direct_x;
  if (*fuse && f < kDeferFlopPerCol * cols) {
    if (dj != nullptr ? part->direct_allowance() : part->place(std::min(f, cols))) {
      const int64_t u = part->used;
      I* oj;
      V* ox;
      const bool staged = so != nullptr && so->place(u, std::min(f, cols), &oj, &ox);
      if (!staged) {
        void* c = dj != nullptr ? nullptr : part->chunks.back();
        oj = (dj != nullptr ? dj : SpgemmPart<V, I>::cols_of(c)) + u;
        ox = (dx != nullptr ? dx : SpgemmPart<V, I>::vals_of(c)) + u;
      }
      const int64_t n = eng.compute(i, f, -1, oj, ox);
      if (staged) so->wrote(u + n), ++part->streamed;
      part->used = u + n;
      if (dj == nullptr) part->note_buffered(i, u);
      counts[i] = static_cast<I>(n);
      fused[i] = 1;
      return;
    }
    *fuse = false;
  }
  const int64_t n = eng.count(i, f);
  flop[i] = f;
  counts[i] = static_cast<I>(n);
  fused[i] = 0;
  ++part->deferred;
  if (dj != nullptr) part->used += n;  // its slots in C, filled by the second pass
}

// Band rows from row i on, before `end` (spgemm_band.h), fused into the part: returns how many were
// computed, 0 when row i is not one or the part has no room for it. Not on a budgeted direct part,
// whose allowance is drawn row by row.
template <class P, typename V, typename I>
inline int64_t fuse_band_run(RowEngine<P, V, I>& eng, int64_t i, int64_t end, int64_t* flop, I* counts,
                             uint8_t* fused, SpgemmPart<V, I>* part, StreamOut<V, I>* so = nullptr) {
  using Part = SpgemmPart<V, I>;
  if constexpr (P::kBand) {
    if (part->direct_budgeted) return 0;
    BandRows<P, V, I>& band = eng.band();
    const int64_t nc = band.start(i);
    if (nc == 0) return 0;
    I* oj;
    V* ox;
    bool staged = false;
    if (part->direct_j != nullptr) {
      staged = so != nullptr && so->place(part->used, nc, &oj, &ox);
      if (staged) {
        end = std::min(end, i + so->room(part->used) / nc);
      } else {
        oj = part->direct_j + part->used;
        ox = part->direct_x + part->used;
      }
    } else {
      if (!part->place(nc)) return 0;
      end = std::min(end, i + (Part::kEntries - part->used) / nc);
      oj = Part::cols_of(part->chunks.back()) + part->used;
      ox = Part::vals_of(part->chunks.back()) + part->used;
    }
    const int64_t rows = band.run(i, end, oj, ox);
    for (int64_t r = i; r < i + rows; ++r) {
      counts[r] = static_cast<I>(nc);
      fused[r] = 1;
    }
    if (part->direct_j == nullptr) part->note_buffered(i, part->used, rows);
    part->used += rows * nc;
    if (staged) so->wrote(part->used), part->streamed += rows;
    part->band += rows;
    return rows;
  } else {
    return 0;
  }
}

// Rows [r0, r1) forwards into the part (in place for a direct part, else its buffer); *fuse as fuse_row.
template <class P, typename V, typename I>
void fused_rows_forward(RowEngine<P, V, I>& eng, const CsrRef<V, I>& a, const CsrRef<V, I>& b, int64_t* flop,
                        int64_t r0, int64_t r1, I* counts, uint8_t* fused, SpgemmPart<V, I>* part, bool* fuse,
                        StreamOut<V, I>* so = nullptr) {
  for (int64_t i = r0; i < r1; ++i) {
    if (*fuse) {
      const int64_t n = fuse_band_run(eng, i, r1, flop, counts, fused, part, so);
      if (n > 0) {
        i += n - 1;
        continue;
      }
    }
    const int64_t f = row_flop(a, b, i);
    if (f == 0) {
      counts[i] = 0;
      fused[i] = 1;
      continue;
    }
    fuse_row(eng, i, f, b.cols, flop, counts, fused, part, fuse, so);
  }
}

// A backward part (SpgemmPart::backward) ends where the next part's rows begin, at direct_j/x, which is
// all it knows of its place: it walks its rows from the last down, in blocks of about kBackBlock
// entries, each computed forwards into a scratch chunk (so rows and B-row prefetches still go forwards)
// and then copied from there, still in L2, to just below the block before it. `used` ends as the
// number of entries below direct_j/x.
constexpr int64_t kBackBlock = int64_t{1} << 15;
template <class P, typename V, typename I>
void fused_rows_backward(RowEngine<P, V, I>& eng, const CsrRef<V, I>& a, const CsrRef<V, I>& b, int64_t* flop,
                         int64_t r0, int64_t r1, I* counts, uint8_t* fused, SpgemmPart<V, I>* part, bool stream,
                         int64_t b_longest = 0) {
  using Part = SpgemmPart<V, I>;
  const int64_t cols = b.cols;
  Part tmp;
  void* chunk = spgemm_chunk_acquire();
  if (chunk == nullptr) throw std::bad_alloc();
  tmp.direct_j = Part::cols_of(chunk);
  tmp.direct_x = Part::vals_of(chunk);
  int64_t below = part->used;  // continues below the rows it wrote before
  for (int64_t hi = r1; hi > r0;) {
    // The block [lo, hi): rows down from hi while their bounds fit; a row that fits no scratch on its own
    // goes alone, counted only (the second pass computes it in place). A row's bound is nnz(A_i) times B's
    // longest row when that is known and fits a chunk: no pass over the rows of B it takes (its products
    // are counted when it is computed), which on stencils was a pass over all of B the upper half
    // does not make. Otherwise its products, min(f, cols).
    int64_t lo = hi, room = 0;
    bool alone = false;
    while (lo > r0) {
      const int64_t i = lo - 1;
      int64_t need = b_longest > 0 ? std::min<int64_t>((static_cast<int64_t>(a.indptr[i + 1]) - a.indptr[i]) * b_longest, cols)
                                   : Part::kEntries + 1;
      if (need > Part::kEntries) {
        const int64_t f = row_flop(a, b, i);
        flop[i] = f;
        need = std::min(f, cols);  // counted-only rows keep their slots in the block too
      }
      if (lo < hi && room + need > kBackBlock) break;
      room += need;
      --lo;
      if (need > Part::kEntries) {
        alone = true;
        break;
      }
    }
    tmp.used = 0;
    bool fuse = !alone;
    fused_rows_forward(eng, a, b, flop, lo, hi, counts, fused, &tmp, &fuse);
    below += tmp.used;
    if (!alone && stream) {
      stream_copy_any(part->direct_j - below, tmp.direct_j, tmp.used);
      stream_copy_any(part->direct_x - below, tmp.direct_x, tmp.used);
      part->streamed += hi - lo;
    } else if (!alone) {
      std::memcpy(part->direct_j - below, tmp.direct_j, static_cast<size_t>(tmp.used) * sizeof(I));
      std::memcpy(part->direct_x - below, tmp.direct_x, static_cast<size_t>(tmp.used) * sizeof(V));
    }
    hi = lo;
  }
  if (stream) stream_fence();
  part->used = below;
  part->deferred += tmp.deferred;
  part->band += tmp.band;
  tmp.direct_j = nullptr;
  tmp.direct_x = nullptr;
  spgemm_chunk_release(chunk);
}

// One thread's share of a two-thread call with halves (SpgemmHalves): own a half while one is free,
// then take rows from the far ends of the others' into `mine` (a buffered part).
template <class P, typename V, typename I>
void fused_rows_halves(RowEngine<P, V, I>& eng, const CsrRef<V, I>& a, const CsrRef<V, I>& b, int64_t* flop,
                       I* counts, uint8_t* fused, SpgemmPart<V, I>* mine, bool candidate, bool all) {
  SpgemmHalves<V, I>& hv = *mine->halves;
  // The stage of the half this thread owns, if a candidate: the upper half's rows go out in order, claim
  // after claim; the lower half's blocks are streamed out of their scratch.
  std::unique_ptr<StreamGate<V, I>> gate;
  bool fuse_mine = mine->chunks_left != nullptr;
  for (;;) {
    int h = -1;
    bool own = false;
    int64_t r0 = 0, r1 = 0;
    hv.lock();
    for (int k = 0; k < 2 && h < 0; ++k)
      if (!hv.owned[k] && hv.lo[k] < hv.hi[k]) hv.owned[k] = true, h = k, own = true;
    if (h < 0) {
      const int64_t c0 = hv.cost(hv.lo[0], hv.hi[0]), c1 = hv.cost(hv.lo[1], hv.hi[1]);
      if (c0 > 0 || c1 > 0) {
        h = c0 >= c1 ? 0 : 1;
        if (h == 0) r0 = hv.lo[0], r1 = hv.lo[0] = hv.from_bottom(hv.lo[0], hv.hi[0]);
        else r1 = hv.hi[1], r0 = hv.hi[1] = hv.from_top(hv.lo[1], hv.hi[1]);
      }
    }
    hv.unlock();
    if (h < 0) return;
    if (!own) {
      mine->taken += r1 - r0;
      fused_rows_forward(eng, a, b, flop, r0, r1, counts, fused, mine, &fuse_mine);
      // Out of buffer: stop taking rows, which would only be counted (cheaply) and leave the owner's
      // work to the second pass.
      if (!fuse_mine) return;
      continue;
    }
    bool fuse = true;
    for (;;) {
      hv.lock();
      if (hv.lo[h] < hv.hi[h]) {
        if (h == 0) r1 = hv.hi[0], r0 = hv.hi[0] = hv.from_top(hv.lo[0], hv.hi[0]);
        else r0 = hv.lo[1], r1 = hv.lo[1] = hv.from_bottom(hv.lo[1], hv.hi[1]);
      } else {
        r0 = r1 = 0;
      }
      hv.unlock();
      if (r0 == r1) break;
      // The half's first claim starts the gate: the lower half's rows [0, r1) counted down from r1, the
      // upper half's [r0, a.rows) up from r0.
      if (candidate && !gate)
        gate.reset(h == 0 ? new StreamGate<V, I>(r1, r1, all) : new StreamGate<V, I>(r0, a.rows - r0, all));
      if (h == 0) {
        const bool stream = gate && gate->on(gate->start - r1, hv.lower);
        fused_rows_backward(eng, a, b, flop, r0, r1, counts, fused, hv.lower, stream, hv.b_longest);
      } else {
        fused_rows_forward(eng, a, b, flop, r0, r1, counts, fused, hv.upper, &fuse,
                           gate ? gate->stage(r0 - gate->start, hv.upper) : nullptr);
      }
    }
  }
}

template <class P, typename V, typename I>
void fused_rows(const CsrRef<V, I>& a, const CsrRef<V, I>& b, int64_t* flop, int64_t r0, int64_t r1,
                I* counts, uint8_t* fused, SpgemmPart<V, I>* part) {
  RowEngine<P, V, I> eng(a, b);
  // Candidates for the stage (spgemm_stream.h): C estimated at nnz(A) times B's mean row past
  // kStreamMinBytes (with halves, the whole product). The part decides once it has written 1/32 of its
  // rows (StreamGate).
  const int64_t ra0 = part->halves != nullptr ? 0 : r0, ra1 = part->halves != nullptr ? a.rows : r1;
  const double est = static_cast<double>(a.indptr[ra1] - a.indptr[ra0]) * static_cast<double>(b.indptr[b.rows]) /
                     static_cast<double>(std::max<int64_t>(b.rows, 1)) * static_cast<double>(sizeof(I) + sizeof(V));
  const StreamMode mode = P::kStreamOut ? stream_mode() : StreamMode::kOff;
  const bool all = mode == StreamMode::kAll;
  const bool candidate = all || (mode == StreamMode::kAuto && est >= static_cast<double>(kStreamMinBytes));
  if (part->halves != nullptr) return fused_rows_halves(eng, a, b, flop, counts, fused, part, candidate, all);
  if (part->backward) return fused_rows_backward(eng, a, b, flop, r0, r1, counts, fused, part, all);
  // A direct part writes into C itself, whose room the caller bounded (no chunks; the allowance only
  // when other parts run too, SpgemmPart::direct_allowance).
  bool fuse = part->direct_j != nullptr || part->chunks_left != nullptr;
  if (candidate && part->direct_j != nullptr) {
    StreamGate<V, I> gate(r0, r1 - r0, all);
    const int64_t probe = std::min(r1, r0 + gate.probe());
    fused_rows_forward(eng, a, b, flop, r0, probe, counts, fused, part, &fuse);
    fused_rows_forward(eng, a, b, flop, probe, r1, counts, fused, part, &fuse, gate.stage(probe - r0, part));
    return;
  }
  fused_rows_forward(eng, a, b, flop, r0, r1, counts, fused, part, &fuse);
}

// Second pass over rows [r0, r1) of C, allocated: computes the rows the first pass left (fused[i] = 0)
// into place. The buffered rows are copied by spgemm_numeric (part->runs); a direct part's are in place.
template <class P, typename V, typename I>
void numeric_rows(const CsrRef<V, I>& a, const CsrRef<V, I>& b, const int64_t* flop, int64_t r0, int64_t r1,
                  const I* cp, I* cj, V* cx, const uint8_t* fused, const SpgemmPart<V, I>* part) {
  (void)part;
  RowEngine<P, V, I> eng(a, b);
  for (int64_t i = r0; i < r1; ++i) {
    const int64_t nnz = static_cast<int64_t>(cp[i + 1]) - cp[i];
    if (nnz != 0 && (fused == nullptr || !fused[i])) eng.compute(i, flop[i], nnz, cj + cp[i], cx + cp[i]);
  }
}

}  // namespace
}  // namespace sparseforge


// Defines and instantiates one ISA's entry points from the row templates above; each ISA's .cc file
// expands it once, so the same templates are compiled with that file's flags.
#define SPARSEFORGE_SPGEMM_DEFINE(suffix, Policy)                                                             \
  template <typename V, typename I>                                                                            \
  void spgemm_fused_##suffix(const CsrRef<V, I>& a, const CsrRef<V, I>& b, int64_t* flop, int64_t r0,         \
                             int64_t r1, I* counts, uint8_t* fused, SpgemmPart<V, I>* part) {                  \
    fused_rows<Policy, V, I>(a, b, flop, r0, r1, counts, fused, part);                                         \
  }                                                                                                            \
  template <typename V, typename I>                                                                            \
  void spgemm_numeric_##suffix(const CsrRef<V, I>& a, const CsrRef<V, I>& b, const int64_t* flop, int64_t r0, \
                               int64_t r1, const I* cp, I* cj, V* cx, const uint8_t* fused,                    \
                               const SpgemmPart<V, I>* part) {                                                 \
    numeric_rows<Policy, V, I>(a, b, flop, r0, r1, cp, cj, cx, fused, part);                                   \
  }                                                                                                            \
  SPARSEFORGE_SPGEMM_CHECKS_DEFINE(suffix)                                                                     \
  SPARSEFORGE_SPGEMM_INSTANTIATE(suffix, float, int32_t)                                                       \
  SPARSEFORGE_SPGEMM_INSTANTIATE(suffix, float, int64_t)                                                       \
  SPARSEFORGE_SPGEMM_INSTANTIATE(suffix, double, int32_t)                                                      \
  SPARSEFORGE_SPGEMM_INSTANTIATE(suffix, double, int64_t)
#define SPARSEFORGE_SPGEMM_INSTANTIATE(suffix, V, I)                                                          \
  template void spgemm_fused_##suffix<V, I>(const CsrRef<V, I>&, const CsrRef<V, I>&, int64_t*, int64_t,       \
                                            int64_t, I*, uint8_t*, SpgemmPart<V, I>*);                         \
  template void spgemm_numeric_##suffix<V, I>(const CsrRef<V, I>&, const CsrRef<V, I>&, const int64_t*,       \
                                              int64_t, int64_t, const I*, I*, V*, const uint8_t*,              \
                                              const SpgemmPart<V, I>*);
