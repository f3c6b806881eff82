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

#include "spmm_conv.h"

namespace sparseforge {
namespace {

constexpr int64_t kPanelBytes = 64 * 1024;  // the x buffer: L1 (48 KiB on Zen 5) plus what L2 prefetch hides

template <class V, int R, int VS, int NV, bool MASK, bool CLAMP>
inline void panel_micro(const float* vals, const int32_t* chan, int32_t cnt, const float* xb, int64_t xs, float* y,
                        int64_t hw, const float* bias, bool from_y, bool final, typename V::Reg vmin,
                        typename V::Reg vmax, typename V::Mask mask) {
  using Reg = typename V::Reg;
  constexpr int S = (R * NV <= 4) ? 2 : 1;
  Reg acc[S][R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) {
      const float* yp = y + r * hw + V::W * v;
      acc[0][r][v] = from_y ? ((MASK && v == NV - 1) ? V::load_masked(yp, mask) : V::loadu(yp))
                            : V::set1(bias ? bias[r] : 0.0f);
      if (S > 1) acc[S - 1][r][v] = V::zero();
    }
  int32_t e = 0;
  auto step = [&](int s) {
    const float* xp = xb + static_cast<int64_t>(chan[e]) * xs;
    Reg xv[NV];
    for (int v = 0; v < NV; ++v) xv[v] = V::load(xp + V::W * v);
    for (int r = 0; r < R; ++r) {
      const Reg wv = V::set1(vals[static_cast<int64_t>(e) * VS + r]);
      for (int v = 0; v < NV; ++v) acc[s][r][v] = V::fma(xv[v], wv, acc[s][r][v]);
    }
    ++e;
  };
  if (S > 1)
    while (e + 1 < cnt) {
      step(0);
      step(S - 1);
    }
  while (e < cnt) step(0);
  for (int r = 0; r < R; ++r)
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
}

// A tile of rem <= NVMAX * W px: ceil(rem / W) vectors, y's last one masked when rem is not a multiple.
template <class V, int R, int VS, int NVMAX, bool CLAMP>
inline void panel_tile(int64_t rem, const float* vals, const int32_t* chan, int32_t cnt, const float* xb, int64_t xs,
                       float* y, int64_t hw, const float* bias, bool from_y, bool final, typename V::Reg vmin,
                       typename V::Reg vmax) {
  if (rem == V::W * NVMAX) {
    panel_micro<V, R, VS, NVMAX, false, CLAMP>(vals, chan, cnt, xb, xs, y, hw, bias, from_y, final, vmin, vmax,
                                               V::tail_mask(V::W));
    return;
  }
  const int nv = static_cast<int>((rem + V::W - 1) / V::W);
  const typename V::Mask mask = V::tail_mask(rem - V::W * (nv - 1));
  switch (nv) {
#define SF_CASE(K)                                                                                              \
  case K:                                                                                                       \
    if constexpr (K <= NVMAX)                                                                                   \
      panel_micro<V, R, VS, K, true, CLAMP>(vals, chan, cnt, xb, xs, y, hw, bias, from_y, final, vmin, vmax, mask); \
    break;
    SF_CASE(1) SF_CASE(2) SF_CASE(3) SF_CASE(4) SF_CASE(5) SF_CASE(6) SF_CASE(7) SF_CASE(8)
#undef SF_CASE
    default: break;
  }
}

// Panels per group for tiles of up to T px over a range of px pixels: the x buffer holds them all.
template <class V>
int64_t panel_group(const SpmmConvWeights& w, int64_t T, int64_t px) {
  const int64_t tile = (std::min<int64_t>(T, px) + V::W - 1) / V::W * V::W;
  return std::max<int64_t>(1, kPanelBytes / (w.panel * tile * 4));
}

template <class V, int B, int NV, bool CLAMP>
void panel_run(const SpmmConvWeights& w, const float* x, float* y, int64_t hw, int64_t m0, int64_t m1, int64_t b0,
               int64_t b1) {
  constexpr int64_t T = V::W * NV;
  static_assert(kSpmmConvPanel * T * 4 <= kPanelBytes, "one panel of one tile must fit the buffer");
  alignas(64) float xb[kPanelBytes / 4];
  const typename V::Reg vmin = V::set1(w.out_min), vmax = V::set1(w.out_max);
  const int64_t full_blocks_end = std::min<int64_t>(b1, w.c_out / B);
  const int64_t P = w.n_panels;
  const int64_t group = panel_group<V>(w, T, m1 - m0);
  for (int64_t m = m0; m < m1; m += T) {
    const int64_t rem = std::min<int64_t>(T, m1 - m);
    const int64_t xs = (rem + V::W - 1) / V::W * V::W;  // buffer row stride: whole vectors, zero-padded
    const typename V::Mask copy_tail = V::tail_mask(rem - (xs - V::W));
    for (int64_t s0 = 0; s0 < P; s0 += group) {
      const int64_t s1 = std::min(P, s0 + group);
      const bool first = s0 == 0, last = s1 == P;
      const int64_t k0 = s0 * w.panel, k1 = std::min<int64_t>(w.c_in, s1 * w.panel);
      for (int64_t k = k0; k < k1; ++k) {
        const float* src = x + k * hw + m;
        float* dst = xb + (k - k0) * xs;
        for (int64_t v = 0; v + V::W < xs; v += V::W) V::store(dst + v, V::loadu(src + v));
        V::store(dst + xs - V::W, V::load_masked(src + xs - V::W, copy_tail));
      }
      const float* xk = xb - k0 * xs;  // indexed by absolute channel
      for (int64_t b = b0; b < b1; ++b) {
        const int32_t* pe = w.panel_entry + b * (P + 1);
        const int32_t e0 = pe[s0], cnt = pe[s1] - e0;
        // Nothing to add: y already holds the partial sum, unless this is the last group and it clamps.
        if (cnt == 0 && !first && !(last && CLAMP)) continue;
        const int32_t* chan = w.chan + e0;
        const float* vals = w.values + static_cast<int64_t>(e0) * B;
        const int64_t co = b * B;
        const float* bias = w.bias ? w.bias + co : nullptr;
        if (b < full_blocks_end) {
          panel_tile<V, B, B, NV, CLAMP>(rem, vals, chan, cnt, xk, xs, y + co * hw + m, hw, bias, !first, last, vmin,
                                         vmax);
        } else {  // the last, partial block: its rows one at a time
          for (int r = 0; r < static_cast<int>(w.c_out - co); ++r)
            panel_tile<V, 1, B, NV, CLAMP>(rem, vals + r, chan, cnt, xk, xs, y + (co + r) * hw + m, hw,
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
