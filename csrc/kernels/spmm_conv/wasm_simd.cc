// WebAssembly SIMD128 SpMM over CHW activations (the wasm32 module only; chosen when its ISA is "wasm").
// The loop order and packed format of neon.cc: pixel tiles outer, output-channel blocks inner; per entry
// NV vectors of 4 pixels of x are loaded once and feed R*NV multiply-adds. SIMD128 has no FMA, so every
// pixel sums bias + w*x in the reference's order and matches it bit for bit. Engines map v128 to 16
// xmm registers on x86: R=1: NV=8 (32 px), R=2: NV=4 (16 px), R=4: NV=2 (8 px) keep accumulators,
// x vectors and weights in registers. Pixel tails (< 4) take a scalar loop in the same order.
#include <wasm_simd128.h>

#include <algorithm>

#include "spmm_conv.h"

namespace sparseforge {

namespace {

template <int R, int VS, int NV>
inline void micro(const float* vals, const int32_t* idx, int32_t cnt, const float* x, float* y, int64_t hw,
                  const float* bias, v128_t vmin, v128_t vmax) {
  v128_t acc[R][NV];
  for (int r = 0; r < R; ++r) {
    const v128_t b = wasm_f32x4_splat(bias ? bias[r] : 0.0f);
    for (int v = 0; v < NV; ++v) acc[r][v] = b;
  }
  const float* xp = x;
  for (int32_t e = 0; e < cnt; ++e) {
    xp = (e == 0 ? x : xp) + static_cast<int64_t>(idx[e]) * hw;
    v128_t xv[NV];
    for (int v = 0; v < NV; ++v) xv[v] = wasm_v128_load(xp + 4 * v);
    for (int r = 0; r < R; ++r) {
      const v128_t wv = wasm_v128_load32_splat(vals + static_cast<int64_t>(e) * VS + r);
      for (int v = 0; v < NV; ++v) acc[r][v] = wasm_f32x4_add(acc[r][v], wasm_f32x4_mul(wv, xv[v]));
    }
  }
  // pmax(a, b) = a < b ? b : a and pmin(a, b) = b < a ? b : a are exactly std::max / std::min, so the
  // clamp treats NaN as the reference's std::min(std::max(acc, lo), hi) does (keeps it).
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v)
      wasm_v128_store(y + r * hw + 4 * v, wasm_f32x4_pmin(wasm_f32x4_pmax(acc[r][v], vmin), vmax));
}

// Fewer than 4 pixels: scalar, one row at a time.
inline void scalar_tail(int64_t rem, int rows, int vs, const float* vals, const int32_t* idx, int32_t cnt,
                        const float* x, float* y, int64_t hw, const float* bias, float lo, float hi) {
  for (int r = 0; r < rows; ++r)
    for (int64_t p = 0; p < rem; ++p) {
      float acc = bias ? bias[r] : 0.0f;
      const float* xp = x;
      for (int32_t e = 0; e < cnt; ++e) {
        xp = (e == 0 ? x : xp) + static_cast<int64_t>(idx[e]) * hw;
        acc += vals[static_cast<int64_t>(e) * vs + r] * xp[p];
      }
      y[r * hw + p] = std::min(std::max(acc, lo), hi);
    }
}

template <int R, int VS, int NVMAX>
inline void micro_any(int64_t rem, const float* vals, const int32_t* idx, int32_t cnt, const float* x, float* y,
                      int64_t hw, const float* bias, v128_t vmin, v128_t vmax, float lo, float hi) {
  const int nv = static_cast<int>(rem / 4);  // rem < NVMAX*4 pixels: whole vectors, then a scalar tail
  switch (nv) {
#define SF_CASE(K) \
  case K:          \
    if constexpr (K <= NVMAX) micro<R, VS, K>(vals, idx, cnt, x, y, hw, bias, vmin, vmax); \
    break;
    SF_CASE(1) SF_CASE(2) SF_CASE(3) SF_CASE(4) SF_CASE(5) SF_CASE(6) SF_CASE(7) SF_CASE(8)
#undef SF_CASE
    default: break;
  }
  if (rem % 4) scalar_tail(rem % 4, R, VS, vals, idx, cnt, x + 4 * nv, y + 4 * nv, hw, bias, lo, hi);
}

template <int B, int NV>
void run(const SpmmConvWeights& w, const float* x, float* y, int64_t hw, int64_t m0, int64_t m1, int64_t b0,
         int64_t b1) {
  constexpr int64_t T = 4 * NV;
  const v128_t vmin = wasm_f32x4_splat(w.out_min), vmax = wasm_f32x4_splat(w.out_max);
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
          micro<B, B, NV>(vals, idx, cnt, x + m, y + co * hw + m, hw, bias, vmin, vmax);
        else
          micro_any<B, B, NV>(rem, vals, idx, cnt, x + m, y + co * hw + m, hw, bias, vmin, vmax, w.out_min, w.out_max);
      } else {  // the partial last block: row by row
        const int rows = static_cast<int>(w.c_out - co);
        for (int r = 0; r < rows; ++r) {
          const float* br = bias ? bias + r : nullptr;
          float* yr = y + (co + r) * hw + m;
          if (rem == T)
            micro<1, B, NV>(vals + r, idx, cnt, x + m, yr, hw, br, vmin, vmax);
          else
            micro_any<1, B, NV>(rem, vals + r, idx, cnt, x + m, yr, hw, br, vmin, vmax, w.out_min, w.out_max);
        }
      }
    }
  }
}

}  // namespace

void spmm_conv_f32_wasm(const SpmmConvWeights& w, const float* x, float* y, int64_t hw, int64_t m0, int64_t m1,
                        int64_t b0, int64_t b1) {
  switch (w.block) {
    case 1: run<1, 8>(w, x, y, hw, m0, m1, b0, b1); break;
    case 2: run<2, 4>(w, x, y, hw, m0, m1, b0, b1); break;
    case 4: run<4, 2>(w, x, y, hw, m0, m1, b0, b1); break;
    default: spmm_conv_f32_scalar(w, x, y, hw, m0, m1, b0, b1); break;
  }
}

}  // namespace sparseforge
