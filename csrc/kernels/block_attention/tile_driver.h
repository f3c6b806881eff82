// The per-tile online-softmax driver, shared by every ISA: which key blocks a query tile visits, the skip
// votes, the statistics. Each ISA file instantiates it with its own `Ops` (the dense sub-problems:
// scores, row max, exp, P·V), so skip semantics are written once and every ISA agrees on them.
//
// Everything here is a template over an ISA-local Ops type (internal linkage), so the copies compiled
// with AVX2 flags can never be picked by the linker for the scalar path. No std containers or algorithms
// are instantiated here for the same reason: workspaces and the top-k live in dispatch.cc.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "block_attention.h"

namespace sparseforge {

namespace attn {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int kGatherChunk = 128;  // keys per step of the gathered decode (any size works; fits L1)

// Online-softmax state of one query tile: R rows (stride ldq) that share one K/V head.
template <class Ops>
struct Tile {
  const float* q;
  int64_t ldq;
  int R, D;
  float scale;
  AttnWorkspace& w;

  void begin() {
    for (int r = 0; r < R; ++r) {
      w.m[r] = kNegInf;
      w.l[r] = 0.0f;
    }
    for (int64_t i = 0; i < static_cast<int64_t>(R) * D; ++i) w.O[i] = 0.0f;
  }

  // S = scale * q·kᵀ for keys kp[0..nk) (absolute index j0 + j), causal: row r sees keys <= lim0 + r.
  void score(int nk, int64_t j0, bool causal, int64_t lim0) {
    Ops::scores(q, ldq, R, w.kp, nk, D, scale, w.S, w.ldS);
    if (causal) {
      for (int r = 0; r < R; ++r) {
        const int64_t first_masked = lim0 + r + 1 - j0;  // keys j >= this are in row r's future
        for (int64_t j = first_masked < 0 ? 0 : first_masked; j < nk; ++j) w.S[r * w.ldS + j] = kNegInf;
      }
    }
    Ops::rowmax(w.S, w.ldS, R, nk, w.mt);
  }

  // True when every row votes skip: exp(mt - m) < threshold, i.e. mt - m < log_thr. A row with m = -inf
  // gives +inf or nan, so it votes against: the first visited block is never skipped.
  bool vote_skip(float log_thr) const {
    for (int r = 0; r < R; ++r)
      if (!(w.mt[r] - w.m[r] < log_thr)) return false;
    return true;
  }

  void accumulate(int nk) {
    for (int r = 0; r < R; ++r) {
      const float mnew = w.mt[r] > w.m[r] ? w.mt[r] : w.m[r];
      w.alpha[r] = w.m[r] == kNegInf ? 0.0f : std::exp(w.m[r] - mnew);
      w.meff[r] = mnew == kNegInf ? 0.0f : mnew;  // all-masked row so far: exp(-inf - 0) = 0, no nan
      w.m[r] = mnew;
    }
    Ops::exp_rows(w.S, w.ldS, R, nk, w.meff, w.sums);
    for (int r = 0; r < R; ++r) w.l[r] = w.l[r] * w.alpha[r] + w.sums[r];
    Ops::pv(w.O, D, R, w.S, w.ldS, w.vp, nk, D, w.alpha);
  }

  void finish(float* out) const {
    for (int r = 0; r < R; ++r) {
      const float inv = w.l[r] > 0.0f ? 1.0f / w.l[r] : 0.0f;  // a row that saw no key gets zeros
      for (int d = 0; d < D; ++d) out[r * ldq + d] = w.O[r * D + d] * inv;
    }
  }
};

// Tiles [t0, t1) of block_attention (enumeration in block_attention_tiles / _grouped, dispatch.cc).
template <class Ops>
void run_block_tiles(const BlockAttnArgs& a, int64_t t0, int64_t t1, AttnWorkspace& w, BlockAttnStats* st) {
  const int64_t G = a.Hq / a.Hkv, D = a.D, BK = a.block_k;
  const int64_t nkv = (a.Lk + BK - 1) / BK;
  const bool grouped = block_attention_grouped(a);
  const int64_t nq = grouped ? 1 : (a.Lq + a.block_q - 1) / a.block_q;
  const bool skip_mode = a.mode == AttnMode::kThreshold || a.mode == AttnMode::kEarlyStop;
  const float log_thr = a.threshold > 0.0f ? std::log(a.threshold) : kNegInf;
  for (int64_t t = t0; t < t1; ++t) {
    int64_t b, h, hk, qb = 0, off, lim0, R;
    bool causal = a.causal;
    if (grouped) {  // decode: the tile is the GQA group (G query heads, consecutive in q), all at position 0
      b = t / a.Hkv;
      hk = t % a.Hkv;
      h = hk;
      off = (b * a.Hq + hk * G) * D;
      R = G;
      lim0 = a.Lk - 1;
      causal = false;  // a decode query sees every key
    } else {
      qb = t % nq;
      h = (t / nq) % a.Hq;
      b = t / (nq * a.Hq);
      hk = h / G;
      const int64_t p0 = qb * a.block_q;
      R = a.Lq - p0 < a.block_q ? a.Lq - p0 : a.block_q;
      off = ((b * a.Hq + h) * a.Lq + p0) * D;
      lim0 = p0 + a.Lk - a.Lq;  // bottom-right alignment
    }
    const int64_t lim_max = lim0 + (causal ? R - 1 : 0);
    int64_t nvis = nkv;
    if (causal) nvis = lim_max < 0 ? 0 : (lim_max / BK + 1 < nkv ? lim_max / BK + 1 : nkv);
    st->total += nvis;
    Tile<Ops> tile{a.q + off, D, static_cast<int>(R), static_cast<int>(D), a.scale, w};
    tile.begin();
    const float* kb_base = a.k + (b * a.Hkv + hk) * a.Lk * D;
    const float* vb_base = a.v + (b * a.Hkv + hk) * a.Lk * D;
    const int32_t* list = nullptr;
    int64_t nlist = nvis;
    if (a.mode == AttnMode::kBlockMask || a.mode == AttnMode::kEarlyStop) {
      const int64_t mb = a.mB == 1 ? 0 : b;
      const int64_t mh = a.mH == 1 ? 0 : grouped ? hk : (a.mH == a.Hq ? h : hk);
      const int64_t row = (mb * a.mH + mh) * nq + qb;
      list = a.list + row * a.cap;
      nlist = a.mode == AttnMode::kBlockMask ? a.kv_num[row] : nkv;
    }
    for (int64_t i = 0; i < nlist; ++i) {
      const int64_t kb = list ? list[i] : i;
      if (kb >= nvis) continue;  // entirely in the causal future of the tile: costs nothing, counts nowhere
      const int64_t j0 = kb * BK;
      const int nk = static_cast<int>(a.Lk - j0 < BK ? a.Lk - j0 : BK);
      for (int j = 0; j < nk; ++j) {
        w.kp[j] = kb_base + (j0 + j) * D;
        w.vp[j] = vb_base + (j0 + j) * D;
      }
      tile.score(nk, j0, causal, lim0);
      if (skip_mode && tile.vote_skip(log_thr)) {
        ++st->scored_only;
        if (a.mode == AttnMode::kEarlyStop) break;  // this block and every later one are skipped
        continue;
      }
      tile.accumulate(nk);
      ++st->computed;
    }
    tile.finish(a.out + off);
  }
}

// Tiles [t0, t1) of the gathered decode: tile = (b, selection head); with per-K/V-head selection the
// tile's rows are the G query heads of the group, so each selected K/V row is read once per group.
template <class Ops>
void run_gather_tiles(const GatherAttnArgs& a, int64_t t0, int64_t t1, AttnWorkspace& w) {
  const int64_t G = a.Hq / a.Hkv, D = a.D;
  const bool per_kv = a.Hsel == a.Hkv;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t b = t / a.Hsel, hs = t % a.Hsel;
    const int64_t hk = per_kv ? hs : hs / G;
    const int64_t off = per_kv ? (b * a.Hq + hs * G) * D : (b * a.Hq + hs) * D;
    const int R = static_cast<int>(per_kv ? G : 1);
    const float* kb_base = a.k + (b * a.Hkv + hk) * a.Lk * D;
    const float* vb_base = a.v + (b * a.Hkv + hk) * a.Lk * D;
    const int32_t* sel;
    if (a.label) {
      // Label scores of every token: the R rows' query values at the head's channels against the label
      // cache (a [R x r] x [r x Lk] product in chunks); a group keeps each token's best score over its heads.
      const int64_t r = a.r;
      const int32_t* ch = a.channels + hs * r;
      for (int rr = 0; rr < R; ++rr)
        for (int64_t c = 0; c < r; ++c) w.qsel[rr * r + c] = a.q[off + rr * D + ch[c]];
      const float* lab = a.label + (b * a.Hkv + hk) * a.Lk * r;
      for (int64_t j0 = 0; j0 < a.Lk; j0 += kGatherChunk) {
        const int nk = static_cast<int>(a.Lk - j0 < kGatherChunk ? a.Lk - j0 : kGatherChunk);
        for (int j = 0; j < nk; ++j) w.kp[j] = lab + (j0 + j) * r;
        Ops::scores(w.qsel, r, R, w.kp, nk, static_cast<int>(r), 1.0f, w.S, w.ldS);
        Ops::colmax(w.S, w.ldS, R, nk, w.score + j0);
      }
      attn_topk(w.score, a.Lk, a.n_sel, w.topk_tmp, w.sel);
      sel = w.sel;
    } else {
      sel = a.idx + (b * a.Hsel + hs) * a.n_sel;
    }
    Tile<Ops> tile{a.q + off, D, R, static_cast<int>(D), a.scale, w};
    tile.begin();
    for (int64_t i0 = 0; i0 < a.n_sel; i0 += kGatherChunk) {
      const int nk = static_cast<int>(a.n_sel - i0 < kGatherChunk ? a.n_sel - i0 : kGatherChunk);
      for (int j = 0; j < nk; ++j) {
        w.kp[j] = kb_base + static_cast<int64_t>(sel[i0 + j]) * D;
        w.vp[j] = vb_base + static_cast<int64_t>(sel[i0 + j]) * D;
      }
      tile.score(nk, 0, false, 0);
      tile.accumulate(nk);
    }
    tile.finish(a.out + off);
  }
}

}  // namespace attn
}  // namespace sparseforge
