// AVX2 + FMA SpMM over CHW activations. Compiled with -mavx2 -mfma; reached only when the CPU has them.
//
// Loop order as in XNNPACK's spmm micro-kernels: the outer loop walks pixel tiles, the inner loop
// walks output-channel blocks, so one tile of x (c_in x tile floats) stays in L1/L2 while every
// block's nonzeros stream over it. Per nonzero entry a block of R output rows loads NV vectors of x
// once and issues R*NV FMAs (R = 1, 2, 4), with R*NV accumulators kept in registers:
//   R=1: NV=8 (64 px), R=2: NV=4 (32 px), R=4: NV=3 (24 px) -> at most 12 accumulators + NV + 1.
// Unlike XNNPACK's SSE path this uses 256-bit FMA and keeps the activation clamp fused.
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "spmm_conv.h"

namespace sparseforge {

namespace {

inline __m256i tail_mask(int64_t rem) {  // rem in [1, 8]
  alignas(32) static const int32_t kLanes[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLanes + 8 - rem));
}

// R rows (values at vals[e*VS + r]) x NV vectors of 8 pixels starting at x / y; the last vector is
// masked when MASK. y points at row 0 of the block (row stride hw).
template <int R, int VS, int NV, bool MASK, bool CLAMP>
inline void micro(const float* vals, const int32_t* idx, int32_t cnt, const float* x, float* y, int64_t hw,
                  const float* bias, __m256 vmin, __m256 vmax, __m256i mask) {
  __m256 acc[R][NV];
  for (int r = 0; r < R; ++r) {
    const __m256 b = _mm256_set1_ps(bias ? bias[r] : 0.0f);
    for (int v = 0; v < NV; ++v) acc[r][v] = b;
  }
  const float* xp = x;
  for (int32_t e = 0; e < cnt; ++e) {
    xp = (e == 0 ? x : xp) + static_cast<int64_t>(idx[e]) * hw;
    __m256 xv[NV];
    for (int v = 0; v < NV; ++v)
      xv[v] = (MASK && v == NV - 1) ? _mm256_maskload_ps(xp + 8 * v, mask) : _mm256_loadu_ps(xp + 8 * v);
    for (int r = 0; r < R; ++r) {
      const __m256 wv = _mm256_broadcast_ss(vals + static_cast<int64_t>(e) * VS + r);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(xv[v], wv, acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) {
      const __m256 o = CLAMP ? _mm256_min_ps(_mm256_max_ps(acc[r][v], vmin), vmax) : acc[r][v];
      float* yp = y + r * hw + 8 * v;
      if (MASK && v == NV - 1)
        _mm256_maskstore_ps(yp, mask, o);
      else
        _mm256_storeu_ps(yp, o);
    }
}

// Tail of fewer than NVMAX*8 pixels: ceil(rem/8) vectors, the last one masked.
template <int R, int VS, int NVMAX, bool CLAMP>
inline void micro_tail(int64_t rem, const float* vals, const int32_t* idx, int32_t cnt, const float* x, float* y,
                       int64_t hw, const float* bias, __m256 vmin, __m256 vmax) {
  const int nv = static_cast<int>((rem + 7) / 8);
  const __m256i mask = tail_mask(rem - 8 * (nv - 1));
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
  constexpr int64_t T = 8 * NV;
  const __m256 vmin = _mm256_set1_ps(w.out_min), vmax = _mm256_set1_ps(w.out_max);
  const __m256i full = _mm256_set1_epi32(-1);
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

void spmm_conv_f32_avx2(const SpmmConvWeights& w, const float* x, float* y, int64_t hw, int64_t m0, int64_t m1,
                        int64_t b0, int64_t b1) {
  // No activation (both bounds infinite): the store skips the clamp, which is a fifth of the work of a
  // row with few nonzeros (90% sparse, small C_in).
  const bool clamp = !(std::isinf(w.out_min) && w.out_min < 0 && std::isinf(w.out_max) && w.out_max > 0);
  switch (w.block * 2 + (clamp ? 1 : 0)) {
    case 2: run<1, 8, false>(w, x, y, hw, m0, m1, b0, b1); break;
    case 3: run<1, 8, true>(w, x, y, hw, m0, m1, b0, b1); break;
    case 4: run<2, 4, false>(w, x, y, hw, m0, m1, b0, b1); break;
    case 5: run<2, 4, true>(w, x, y, hw, m0, m1, b0, b1); break;
    case 8: run<4, 3, false>(w, x, y, hw, m0, m1, b0, b1); break;
    case 9: run<4, 3, true>(w, x, y, hw, m0, m1, b0, b1); break;
    default: spmm_conv_f32_scalar(w, x, y, hw, m0, m1, b0, b1); break;
  }
}

}  // namespace sparseforge
