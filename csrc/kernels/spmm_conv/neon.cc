// ARM64 NEON SpMM over CHW activations (aarch64 only; NEON is baseline there).
// Same loop order and packed format as x86_avx2.cc: pixel tiles outer, output-channel blocks inner;
// per entry NV 4-float vectors of x are loaded once and feed R*NV FMAs (vfmaq_n_f32-style by lane).
// AArch64 has 32 vector registers: R=1: NV=8 (32 px), R=2: NV=6 (24 px), R=4: NV=4 (16 px).
// Pixel tails (< 4) go through a scalar loop with the same accumulation order per pixel.
#include <arm_neon.h>

#include <algorithm>

#include "spmm_conv.h"

namespace sparseforge {

namespace {

template <int R, int VS, int NV>
inline void micro(const float* vals, const int32_t* idx, int32_t cnt, const float* x, float* y, int64_t hw,
                  const float* bias, float32x4_t vmin, float32x4_t vmax) {
  float32x4_t acc[R][NV];
  for (int r = 0; r < R; ++r) {
    const float32x4_t b = vdupq_n_f32(bias ? bias[r] : 0.0f);
    for (int v = 0; v < NV; ++v) acc[r][v] = b;
  }
  const float* xp = x;
  for (int32_t e = 0; e < cnt; ++e) {
    xp = (e == 0 ? x : xp) + static_cast<int64_t>(idx[e]) * hw;
    float32x4_t xv[NV];
    for (int v = 0; v < NV; ++v) xv[v] = vld1q_f32(xp + 4 * v);
    for (int r = 0; r < R; ++r) {
      const float32x4_t wv = vld1q_dup_f32(vals + static_cast<int64_t>(e) * VS + r);
      for (int v = 0; v < NV; ++v) acc[r][v] = vfmaq_f32(acc[r][v], xv[v], wv);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) vst1q_f32(y + r * hw + 4 * v, vminq_f32(vmaxq_f32(acc[r][v], vmin), vmax));
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
        acc = __builtin_fmaf(vals[static_cast<int64_t>(e) * vs + r], xp[p], acc);
      }
      y[r * hw + p] = std::min(std::max(acc, lo), hi);
    }
}

template <int R, int VS, int NVMAX>
inline void micro_any(int64_t rem, const float* vals, const int32_t* idx, int32_t cnt, const float* x, float* y,
                      int64_t hw, const float* bias, float32x4_t vmin, float32x4_t vmax, float lo, float hi) {
  // rem <= NVMAX*4 pixels: whole vectors, then a scalar tail.
  const int nv = static_cast<int>(rem / 4);
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
  const float32x4_t vmin = vdupq_n_f32(w.out_min), vmax = vdupq_n_f32(w.out_max);
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
      } else {
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

void spmm_conv_f32_neon(const SpmmConvWeights& w, const float* x, float* y, int64_t hw, int64_t m0, int64_t m1,
                        int64_t b0, int64_t b1) {
  switch (w.block) {
    case 1: run<1, 8>(w, x, y, hw, m0, m1, b0, b1); break;
    case 2: run<2, 6>(w, x, y, hw, m0, m1, b0, b1); break;
    case 4: run<4, 4>(w, x, y, hw, m0, m1, b0, b1); break;
    default: spmm_conv_f32_scalar(w, x, y, hw, m0, m1, b0, b1); break;
  }
}

}  // namespace sparseforge
