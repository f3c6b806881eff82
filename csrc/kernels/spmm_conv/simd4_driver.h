// The 4-lane SpMM driver shared by neon.cc and wasm_simd.cc, parameterised by a vector type V (see
// either file): the loop order and packed format of the x86 kernels without their panel copy. Pixel
// tiles outer, output-channel blocks inner; per entry NV vectors of 4 pixels of x are loaded once and
// feed R*NV multiply-adds (V::madd: an FMA on NEON, mul + add on SIMD128, which has none; V::madd1 is
// the matching scalar step, so the scalar pixel tail (< 4) accumulates exactly as the vector lanes do).
// Internal linkage: each includer compiles its own copy with its own target.
#pragma once

#include <algorithm>
#include <cstdint>

#include "spmm_conv.h"

namespace sparseforge {
namespace {

template <class V, int R, int VS, int NV>
inline void simd4_micro(const float* vals, const int32_t* idx, int32_t cnt, const float* x, float* y, int64_t hw,
                        const float* bias, typename V::Reg vmin, typename V::Reg vmax) {
  using Reg = typename V::Reg;
  Reg acc[R][NV];
  for (int r = 0; r < R; ++r) {
    const Reg b = V::splat(bias ? bias[r] : 0.0f);
    for (int v = 0; v < NV; ++v) acc[r][v] = b;
  }
  const float* xp = x;
  for (int32_t e = 0; e < cnt; ++e) {
    xp = (e == 0 ? x : xp) + static_cast<int64_t>(idx[e]) * hw;
    Reg xv[NV];
    for (int v = 0; v < NV; ++v) xv[v] = V::load(xp + 4 * v);
    for (int r = 0; r < R; ++r) {
      const Reg wv = V::load_splat(vals + static_cast<int64_t>(e) * VS + r);
      for (int v = 0; v < NV; ++v) acc[r][v] = V::madd(acc[r][v], wv, xv[v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) V::store(y + r * hw + 4 * v, V::clamp(acc[r][v], vmin, vmax));
}

// Fewer than 4 pixels: scalar, one row at a time.
template <class V>
inline void simd4_scalar_tail(int64_t rem, int rows, int vs, const float* vals, const int32_t* idx, int32_t cnt,
                              const float* x, float* y, int64_t hw, const float* bias, float lo, float hi) {
  for (int r = 0; r < rows; ++r)
    for (int64_t p = 0; p < rem; ++p) {
      float acc = bias ? bias[r] : 0.0f;
      const float* xp = x;
      for (int32_t e = 0; e < cnt; ++e) {
        xp = (e == 0 ? x : xp) + static_cast<int64_t>(idx[e]) * hw;
        acc = V::madd1(acc, vals[static_cast<int64_t>(e) * vs + r], xp[p]);
      }
      y[r * hw + p] = std::min(std::max(acc, lo), hi);
    }
}

// rem < NVMAX*4 pixels: whole vectors, then the scalar tail.
template <class V, int R, int VS, int NVMAX>
inline void simd4_any(int64_t rem, const float* vals, const int32_t* idx, int32_t cnt, const float* x, float* y,
                      int64_t hw, const float* bias, typename V::Reg vmin, typename V::Reg vmax, float lo, float hi) {
  const int nv = static_cast<int>(rem / 4);
  switch (nv) {
#define SF_CASE(K) \
  case K:          \
    if constexpr (K <= NVMAX) simd4_micro<V, R, VS, K>(vals, idx, cnt, x, y, hw, bias, vmin, vmax); \
    break;
    SF_CASE(1) SF_CASE(2) SF_CASE(3) SF_CASE(4) SF_CASE(5) SF_CASE(6) SF_CASE(7) SF_CASE(8)
#undef SF_CASE
    default: break;
  }
  if (rem % 4) simd4_scalar_tail<V>(rem % 4, R, VS, vals, idx, cnt, x + 4 * nv, y + 4 * nv, hw, bias, lo, hi);
}

template <class V, int B, int NV>
void simd4_run(const SpmmConvWeights& w, const float* x, float* y, int64_t hw, int64_t m0, int64_t m1, int64_t b0,
               int64_t b1) {
  constexpr int64_t T = 4 * NV;
  const typename V::Reg vmin = V::splat(w.out_min), vmax = V::splat(w.out_max);
  const int64_t full_blocks_end = std::min<int64_t>(b1, w.c_out / B);
  for (int64_t m = m0; m < m1; m += T) {
    const int64_t rem = std::min<int64_t>(T, m1 - m);
    for (int64_t b = b0; b < b1; ++b) {
      const int32_t e0 = w.offsets[b], cnt = w.offsets[b + 1] - e0;
      const int32_t* idx = w.idx_delta + e0;
      const float* vals = w.values + static_cast<int64_t>(e0) * B;
      const int64_t co = b * B;
      const float* bias = w.bias ? w.bias + co : nullptr;
      if (b < full_blocks_end) {
        if (rem == T)
          simd4_micro<V, B, B, NV>(vals, idx, cnt, x + m, y + co * hw + m, hw, bias, vmin, vmax);
        else
          simd4_any<V, B, B, NV>(rem, vals, idx, cnt, x + m, y + co * hw + m, hw, bias, vmin, vmax, w.out_min,
                                 w.out_max);
      } else {  // the partial last block: row by row
        for (int r = 0; r < static_cast<int>(w.c_out - co); ++r) {
          const float* br = bias ? bias + r : nullptr;
          float* yr = y + (co + r) * hw + m;
          if (rem == T)
            simd4_micro<V, 1, B, NV>(vals + r, idx, cnt, x + m, yr, hw, br, vmin, vmax);
          else
            simd4_any<V, 1, B, NV>(rem, vals + r, idx, cnt, x + m, yr, hw, br, vmin, vmax, w.out_min, w.out_max);
        }
      }
    }
  }
}

// Register budgets differ per target, so the includer picks NV per block size.
template <class V, int NV1, int NV2, int NV4>
void simd4_dispatch(const SpmmConvWeights& w, const float* x, float* y, int64_t hw, int64_t m0, int64_t m1,
                    int64_t b0, int64_t b1) {
  switch (w.block) {
    case 1: simd4_run<V, 1, NV1>(w, x, y, hw, m0, m1, b0, b1); break;
    case 2: simd4_run<V, 2, NV2>(w, x, y, hw, m0, m1, b0, b1); break;
    case 4: simd4_run<V, 4, NV4>(w, x, y, hw, m0, m1, b0, b1); break;
    default: spmm_conv_f32_scalar(w, x, y, hw, m0, m1, b0, b1); break;
  }
}

}  // namespace
}  // namespace sparseforge
