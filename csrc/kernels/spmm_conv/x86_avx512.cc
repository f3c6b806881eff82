// AVX-512 (F) SpMM over CHW activations: the AVX2 kernel's loop order with 16-pixel vectors.
// Compiled with -mavx512f/bw/vl/dq; reached only when the CPU has them (Isa::kAvx512).
//
// Why a separate variant: on CPUs with a full 512-bit datapath (Zen 5, Sapphire Rapids) each x load
// and FMA covers twice the pixels, and that is what dense conv2d (oneDNN) already uses there. Tails
// use native lane masks, so a 7x7 map (49 px) costs 4 vectors instead of AVX2's 7.
// Register budget (32 zmm): R*NV accumulators + NV x vectors + 1 broadcast weight:
//   R=1: NV=8 (128 px, 17 regs), R=2: NV=6 (96 px, 19), R=4: NV=4 (64 px, 21).
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "spmm_conv.h"

namespace sparseforge {

namespace {

template <int R, int VS, int NV, bool MASK, bool CLAMP>
inline void micro(const float* vals, const int32_t* idx, int32_t cnt, const float* x, float* y, int64_t hw,
                  const float* bias, __m512 vmin, __m512 vmax, __mmask16 mask) {
  __m512 acc[R][NV];
  for (int r = 0; r < R; ++r) {
    const __m512 b = _mm512_set1_ps(bias ? bias[r] : 0.0f);
    for (int v = 0; v < NV; ++v) acc[r][v] = b;
  }
  const float* xp = x;
  for (int32_t e = 0; e < cnt; ++e) {
    xp = (e == 0 ? x : xp) + static_cast<int64_t>(idx[e]) * hw;
    __m512 xv[NV];
    for (int v = 0; v < NV; ++v)
      xv[v] = (MASK && v == NV - 1) ? _mm512_maskz_loadu_ps(mask, xp + 16 * v) : _mm512_loadu_ps(xp + 16 * v);
    for (int r = 0; r < R; ++r) {
      const __m512 wv = _mm512_set1_ps(vals[static_cast<int64_t>(e) * VS + r]);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(xv[v], wv, acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) {
      const __m512 o = CLAMP ? _mm512_min_ps(_mm512_max_ps(acc[r][v], vmin), vmax) : acc[r][v];
      float* yp = y + r * hw + 16 * v;
      if (MASK && v == NV - 1)
        _mm512_mask_storeu_ps(yp, mask, o);
      else
        _mm512_storeu_ps(yp, o);
    }
}

// Tail of fewer than NVMAX*16 pixels: ceil(rem/16) vectors, the last one masked.
template <int R, int VS, int NVMAX, bool CLAMP>
inline void micro_tail(int64_t rem, const float* vals, const int32_t* idx, int32_t cnt, const float* x, float* y,
                       int64_t hw, const float* bias, __m512 vmin, __m512 vmax) {
  const int nv = static_cast<int>((rem + 15) / 16);
  const __mmask16 mask = static_cast<__mmask16>((1u << (rem - 16 * (nv - 1))) - 1u);
  switch (nv) {
#define SF_CASE(K) \
  case K:          \
    if constexpr (K <= NVMAX) micro<R, VS, K, true, CLAMP>(vals, idx, cnt, x, y, hw, bias, vmin, vmax, mask); \
    break;
    SF_CASE(1) SF_CASE(2) SF_CASE(3) SF_CASE(4) SF_CASE(5) SF_CASE(6) SF_CASE(7) SF_CASE(8)
#undef SF_CASE
    default: break;
  }
}

template <int B, int NV, bool CLAMP>
void run(const SpmmConvWeights& w, const float* x, float* y, int64_t hw, int64_t m0, int64_t m1, int64_t b0,
         int64_t b1) {
  constexpr int64_t T = 16 * NV;
  const __m512 vmin = _mm512_set1_ps(w.out_min), vmax = _mm512_set1_ps(w.out_max);
  const __mmask16 full = 0xFFFF;
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
          micro<B, B, NV, false, CLAMP>(vals, idx, cnt, x + m, y + co * hw + m, hw, bias, vmin, vmax, full);
        else
          micro_tail<B, B, NV, CLAMP>(rem, vals, idx, cnt, x + m, y + co * hw + m, hw, bias, vmin, vmax);
      } else {  // the last, partial block: its rows one at a time
        const int rows = static_cast<int>(w.c_out - co);
        for (int r = 0; r < rows; ++r) {
          const float* br = bias ? bias + r : nullptr;
          float* yr = y + (co + r) * hw + m;
          if (rem == T)
            micro<1, B, NV, false, CLAMP>(vals + r, idx, cnt, x + m, yr, hw, br, vmin, vmax, full);
          else
            micro_tail<1, B, NV, CLAMP>(rem, vals + r, idx, cnt, x + m, yr, hw, br, vmin, vmax);
        }
      }
    }
  }
}

}  // namespace

void spmm_conv_f32_avx512(const SpmmConvWeights& w, const float* x, float* y, int64_t hw, int64_t m0, int64_t m1,
                          int64_t b0, int64_t b1) {
  const bool clamp = !(std::isinf(w.out_min) && w.out_min < 0 && std::isinf(w.out_max) && w.out_max > 0);
  switch (w.block * 2 + (clamp ? 1 : 0)) {
    case 2: run<1, 8, false>(w, x, y, hw, m0, m1, b0, b1); break;
    case 3: run<1, 8, true>(w, x, y, hw, m0, m1, b0, b1); break;
    case 4: run<2, 6, false>(w, x, y, hw, m0, m1, b0, b1); break;
    case 5: run<2, 6, true>(w, x, y, hw, m0, m1, b0, b1); break;
    case 8: run<4, 4, false>(w, x, y, hw, m0, m1, b0, b1); break;
    case 9: run<4, 4, true>(w, x, y, hw, m0, m1, b0, b1); break;
    default: spmm_conv_f32_scalar(w, x, y, hw, m0, m1, b0, b1); break;
  }
}

}  // namespace sparseforge
