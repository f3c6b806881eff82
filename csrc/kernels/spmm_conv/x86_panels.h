// The x86 SpMM driver shared by x86_avx2.cc and x86_avx512.cc, parameterised by a vector type V
// (V::W lanes). Each includer compiles it with its own ISA flags; everything here has internal linkage
// (anonymous namespace), so the AVX-512 instantiation can never be merged into the AVX2 one.
//
// Loop order: pixel tiles of T = V::W * NV px outer; inside a tile, input-channel panels (groups of
// w.panel channels from the panel index) sized so the tile of x they cover fits L1 (kPanelBytes); per
// panel group the x rows are first copied into an aligned, zero-padded buffer, then every output-channel
// block walks its entries of that group. Why the copy: x rows of a 14x14 or 7x7 map start at arbitrary
// 16-byte offsets, so most full-width loads straddle two cache lines, and the rows of a large c_in do not
// fit L1 at all; the packed buffer makes every load aligned and L1-resident, and it is reused by all
// c_out rows (a 0.1-dense 1024-channel layer reads each copied row ~100 times). Costs: the copy (one pass
// over the tile of x) and, when c_in spans several groups, a load + store of the partial y tile per group.
// Per entry a block of R rows loads NV vectors of x once and issues R*NV FMAs into registers; with few
// accumulators (R*NV <= 4) even and odd entries go to two sets to cover the FMA latency.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include <immintrin.h>

#include "spmm_conv.h"

namespace sparseforge {
namespace {

// The x buffer: L1 (48 KiB on Zen 5) plus what L2 prefetch hides. 72 rather than 64 KiB: a 1024-channel
// 7x7 layer (48 px + the 4-float tail per channel) then fits in 3 panel groups instead of 4 (-4%).
constexpr int64_t kPanelBytes = 72 * 1024;

// The 128-bit ops of the 4-lane tail, the same for both vector types (each includer's flags give FMA);
// a vector type adds low4 and the masked 1-4 lane load / store its ISA has.
struct Xmm4 {
  using Reg4 = __m128;
  static Reg4 load4(const float* p) { return _mm_load_ps(p); }
  static Reg4 fma4(Reg4 a, Reg4 b, Reg4 c) { return _mm_fmadd_ps(a, b, c); }
  static Reg4 add4(Reg4 a, Reg4 b) { return _mm_add_ps(a, b); }
  static Reg4 min4(Reg4 a, Reg4 b) { return _mm_min_ps(a, b); }
  static Reg4 max4(Reg4 a, Reg4 b) { return _mm_max_ps(a, b); }
};

// Pixels of a tile of rem px that go through the 4-lane tail (0: none): 1-4 px past at least one whole vector.
template <class V>
inline int tail_px(int64_t rem) {
  const int64_t t = rem % V::W;
  return rem >= V::W && t >= 1 && t <= 4 ? static_cast<int>(t) : 0;
}

template <class V, int R, int VS, int NV, bool MASK, bool TAIL, bool CLAMP>
__attribute__((always_inline)) inline void panel_micro(const float* vals, const int32_t* chan, int32_t cnt, const float* xb, int64_t xs,
                        const float* xt, int tail, float* y, int64_t hw, const float* bias, bool from_y, bool final,
                        typename V::Reg vmin, typename V::Reg vmax, typename V::Mask mask) {
  using Reg = typename V::Reg;
  using Reg4 = typename V::Reg4;
  constexpr int S = (R * NV <= 4) ? 2 : 1;
  Reg acc[S][R][NV];
  Reg4 acc4[S][R];
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < NV; ++v) {
      const float* yp = y + r * hw + V::W * v;
      acc[0][r][v] = from_y ? ((MASK && v == NV - 1) ? V::load_masked(yp, mask) : V::loadu(yp))
                            : V::set1(bias ? bias[r] : 0.0f);
      if (S > 1) acc[S - 1][r][v] = V::zero();
    }
    if constexpr (TAIL) {
      acc4[0][r] = from_y ? V::load4_masked(y + r * hw + V::W * NV, tail) : V::low4(V::set1(bias ? bias[r] : 0.0f));
      if (S > 1) acc4[S - 1][r] = V::low4(V::zero());
    }
  }
  int32_t e = 0;
  auto step = [&](int s) __attribute__((always_inline)) {
    const int64_t k = chan[e];
    const float* xp = xb + k * xs;
    Reg xv[NV];
    for (int v = 0; v < NV; ++v) xv[v] = V::load(xp + V::W * v);
    typename V::Reg4 xv4;
    if constexpr (TAIL) xv4 = V::load4(xt + 4 * k);
    for (int r = 0; r < R; ++r) {
      const Reg wv = V::set1(vals[static_cast<int64_t>(e) * VS + r]);
      for (int v = 0; v < NV; ++v) acc[s][r][v] = V::fma(xv[v], wv, acc[s][r][v]);
      if constexpr (TAIL) acc4[s][r] = V::fma4(xv4, V::low4(wv), acc4[s][r]);
    }
    ++e;
  };
  if (S > 1)
    while (e + 1 < cnt) {
      step(0);
      step(S - 1);
    }
  while (e < cnt) step(0);
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < NV; ++v) {
      Reg a = acc[0][r][v];
      if (S > 1) a = V::add(a, acc[S - 1][r][v]);
      if (CLAMP && final) a = V::min(V::max(a, vmin), vmax);
      float* yp = y + r * hw + V::W * v;
      if (MASK && v == NV - 1)
        V::store_masked(yp, mask, a);
      else
        V::storeu(yp, a);
    }
    if constexpr (TAIL) {
      Reg4 a = acc4[0][r];
      if (S > 1) a = V::add4(a, acc4[S - 1][r]);
      if (CLAMP && final) a = V::min4(V::max4(a, V::low4(vmin)), V::low4(vmax));
      V::store4_masked(y + r * hw + V::W * NV, tail, a);
    }
  }
}

// A tile of rem <= (NVMAX + 1) * W px. When it ends in 1-4 px past whole vectors (7x7 maps: 48 + 1,
// 14x14: 192 + 4), those px come from a 4-float-per-channel tail buffer `xt` through 128-bit loads and
// FMAs: a whole vector per entry for them cost a fifth of the 7x7 time (4 loads per entry instead of 3),
// and the padded rows crowded the x buffer. Otherwise ceil(rem / W) vectors, y's last one masked.
template <class V, int R, int VS, int NVMAX, bool CLAMP>
__attribute__((always_inline)) inline void panel_tile(int64_t rem, const float* vals, const int32_t* chan, int32_t cnt, const float* xb, int64_t xs,
                       const float* xt, float* y, int64_t hw, const float* bias, bool from_y, bool final,
                       typename V::Reg vmin, typename V::Reg vmax) {
  const int tail = tail_px<V>(rem);
  if (tail > 0) {
    switch (rem / V::W) {
#define SF_CASE(K)                                                                                              \
  case K:                                                                                                       \
    if constexpr (K <= NVMAX)                                                                                   \
      panel_micro<V, R, VS, K, false, true, CLAMP>(vals, chan, cnt, xb, xs, xt, tail, y, hw, bias, from_y, final, \
                                                   vmin, vmax, V::tail_mask(V::W));                             \
    break;
      SF_CASE(1) SF_CASE(2) SF_CASE(3) SF_CASE(4) SF_CASE(5) SF_CASE(6) SF_CASE(7) SF_CASE(8)
#undef SF_CASE
      default: break;
    }
    return;
  }
  if (rem == V::W * NVMAX) {
    panel_micro<V, R, VS, NVMAX, false, false, CLAMP>(vals, chan, cnt, xb, xs, xt, 0, y, hw, bias, from_y, final,
                                                      vmin, vmax, V::tail_mask(V::W));
    return;
  }
  const int nv = static_cast<int>((rem + V::W - 1) / V::W);
  const typename V::Mask mask = V::tail_mask(rem - V::W * (nv - 1));
  switch (nv) {
#define SF_CASE(K)                                                                                              \
  case K:                                                                                                       \
    if constexpr (K <= NVMAX + 1)                                                                               \
      panel_micro<V, R, VS, K, true, false, CLAMP>(vals, chan, cnt, xb, xs, xt, 0, y, hw, bias, from_y, final,   \
                                                   vmin, vmax, mask);                                           \
    break;
    SF_CASE(1) SF_CASE(2) SF_CASE(3) SF_CASE(4) SF_CASE(5) SF_CASE(6) SF_CASE(7) SF_CASE(8) SF_CASE(9)
#undef SF_CASE
    default: break;
  }
}

// Panels per group for tiles of up to T px over a range of px pixels: the x buffer holds them all (a row
// of a tile with a 4-lane tail takes its whole vectors plus 4 floats). The groups come out as even as
// their count allows: 32 panels in 11 + 11 + 10, not 12 + 12 + 8.
template <class V>
int64_t panel_group(const SpmmConvWeights& w, int64_t T, int64_t px) {
  const int64_t t = std::min<int64_t>(T, px), tail = tail_px<V>(t);
  const int64_t row = tail ? t - tail + 4 : (t + V::W - 1) / V::W * V::W;
  const int64_t most = std::max<int64_t>(1, kPanelBytes / (w.panel * row * 4));
  const int64_t groups = (w.n_panels + most - 1) / most;
  return (w.n_panels + groups - 1) / groups;
}

template <class V, int B, int NV, bool CLAMP>
void panel_run(const SpmmConvWeights& w, const float* x, float* y, int64_t hw, int64_t m0, int64_t m1, int64_t b0,
               int64_t b1) {
  constexpr int64_t T = V::W * NV;
  static_assert(kSpmmConvPanel * T * 4 <= kPanelBytes, "one panel of one tile must fit the buffer");
  // A last remainder of at most one vector joins the tile before it (one more vector, or the 4-lane
  // tail, instead of a walk of its own), so that tile may take up to (NV + 1) / NV of the budget.
  alignas(64) float xb[kPanelBytes / 4 / NV * (NV + 1)];
  alignas(64) float xt[kPanelBytes / 4 / V::W * 4];  // tail rows, 4 floats per channel
  const typename V::Reg vmin = V::set1(w.out_min), vmax = V::set1(w.out_max);
  const int64_t full_blocks_end = std::min<int64_t>(b1, w.c_out / B);
  const int64_t P = w.n_panels;
  const int64_t group = panel_group<V>(w, T, m1 - m0);
  for (int64_t m = m0, rem; m < m1; m += rem) {
    rem = m1 - m <= T + V::W ? m1 - m : T;
    const int tail = tail_px<V>(rem);
    // Buffer row stride: whole vectors, zero-padded (without the tail's px, which go to xt).
    const int64_t xs = tail ? rem - tail : (rem + V::W - 1) / V::W * V::W;
    const typename V::Mask copy_tail = V::tail_mask(rem - tail - (xs - V::W));
    for (int64_t s0 = 0; s0 < P; s0 += group) {
      const int64_t s1 = std::min(P, s0 + group);
      const bool first = s0 == 0, last = s1 == P;
      const int64_t k0 = s0 * w.panel, k1 = std::min<int64_t>(w.c_in, s1 * w.panel);
      for (int64_t k = k0; k < k1; ++k) {
        const float* src = x + k * hw + m;
        float* dst = xb + (k - k0) * xs;
        for (int64_t v = 0; v + V::W < xs; v += V::W) V::store(dst + v, V::loadu(src + v));
        V::store(dst + xs - V::W, V::load_masked(src + xs - V::W, copy_tail));
        if (tail) {
          float* t4 = xt + (k - k0) * 4;
          for (int q = 0; q < 4; ++q) t4[q] = q < tail ? src[xs + q] : 0.0f;
        }
      }
      const float* xk = xb - k0 * xs;  // indexed by absolute channel
      const float* xtk = xt - k0 * 4;
      for (int64_t b = b0; b < b1; ++b) {
        const int32_t* pe = w.panel_entry + b * (P + 1);
        const int32_t e0 = pe[s0], cnt = pe[s1] - e0;
        // The next block's entries of this group: its first channel index gates the address of every x
        // load of its walk, and the group's entries are not contiguous across blocks (the other groups'
        // lie between), so the stream prefetcher misses the jump. 1024x1024x49 at 90%, whose weights
        // (840 KB) do not stay in L2: -4% on one thread, -2..4% on two; the other shapes within noise.
        if (b + 1 < b1) {
          const int32_t en = pe[P + 1 + s0];
          __builtin_prefetch(w.chan + en);
          __builtin_prefetch(w.values + static_cast<int64_t>(en) * B);
        }
        // Nothing to add: y already holds the partial sum, unless this is the last group and it clamps.
        if (cnt == 0 && !first && !(last && CLAMP)) continue;
        const int32_t* chan = w.chan + e0;
        const float* vals = w.values + static_cast<int64_t>(e0) * B;
        const int64_t co = b * B;
        const float* bias = w.bias ? w.bias + co : nullptr;
        if (b < full_blocks_end) {
          panel_tile<V, B, B, NV, CLAMP>(rem, vals, chan, cnt, xk, xs, xtk, y + co * hw + m, hw, bias, !first, last,
                                         vmin, vmax);
        } else {  // the last, partial block: its rows one at a time
          for (int r = 0; r < static_cast<int>(w.c_out - co); ++r)
            panel_tile<V, 1, B, NV, CLAMP>(rem, vals + r, chan, cnt, xk, xs, xtk, y + (co + r) * hw + m, hw,
                                           bias ? bias + r : nullptr, !first, last, vmin, vmax);
        }
      }
    }
  }
}

inline bool spmm_conv_clamps(const SpmmConvWeights& w) {
  return !(std::isinf(w.out_min) && w.out_min < 0 && std::isinf(w.out_max) && w.out_max > 0);
}

// R rows per block -> NV vectors per tile, chosen per ISA by the includer.
template <class V, int NV1, int NV2, int NV4>
void panel_dispatch(const SpmmConvWeights& w, const float* x, float* y, int64_t hw, int64_t m0, int64_t m1,
                    int64_t b0, int64_t b1) {
  // No activation (both bounds infinite): the store skips the clamp, which is a fifth of the work of a
  // row with few nonzeros (90% sparse, small C_in).
  const bool clamp = spmm_conv_clamps(w);
  switch (w.block * 2 + (clamp ? 1 : 0)) {
    case 2:
    case 3:
      // Half-width tiles when that lets one panel group cover more of c_in: fewer partial-y passes
      // and longer entry runs outweigh the per-entry overhead of the shorter tile (256x256x784 at 90%:
      // 108 -> 101 us). Unstructured layers only.
      if (panel_group<V>(w, V::W * (NV1 / 2), m1 - m0) > panel_group<V>(w, V::W * NV1, m1 - m0) &&
          panel_group<V>(w, V::W * NV1, m1 - m0) < w.n_panels) {
        if (clamp) panel_run<V, 1, NV1 / 2, true>(w, x, y, hw, m0, m1, b0, b1);
        else panel_run<V, 1, NV1 / 2, false>(w, x, y, hw, m0, m1, b0, b1);
      } else {
        if (clamp) panel_run<V, 1, NV1, true>(w, x, y, hw, m0, m1, b0, b1);
        else panel_run<V, 1, NV1, false>(w, x, y, hw, m0, m1, b0, b1);
      }
      break;
    case 4: panel_run<V, 2, NV2, false>(w, x, y, hw, m0, m1, b0, b1); break;
    case 5: panel_run<V, 2, NV2, true>(w, x, y, hw, m0, m1, b0, b1); break;
    case 8: panel_run<V, 4, NV4, false>(w, x, y, hw, m0, m1, b0, b1); break;
    case 9: panel_run<V, 4, NV4, true>(w, x, y, hw, m0, m1, b0, b1); break;
    default: spmm_conv_f32_scalar(w, x, y, hw, m0, m1, b0, b1); break;
  }
}

}  // namespace
}  // namespace sparseforge
