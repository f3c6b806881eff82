// AVX2 + FMA SpMM over CHW activations: the shared panel driver (x86_panels.h) with 8-px vectors.
// Compiled with -mavx2 -mfma; reached only when the CPU has them. Unlike XNNPACK's SSE path this uses
// 256-bit FMA, aligned L1-resident copies of x and keeps the activation clamp fused.
// Register budget (16 ymm): R*NV accumulators + NV x vectors + 1 weight:
//   R=1: NV=8 (64 px), R=2: NV=4 (32 px), R=4: NV=3 (24 px).
#include <immintrin.h>

#include "x86_panels.h"

namespace sparseforge {

namespace {
struct Ymm : Xmm4 {
  using Reg = __m256;
  using Mask = __m256i;
  static constexpr int W = 8;
  static Reg load(const float* p) { return _mm256_load_ps(p); }
  static Reg loadu(const float* p) { return _mm256_loadu_ps(p); }
  static Reg load_masked(const float* p, Mask m) { return _mm256_maskload_ps(p, m); }
  static void store(float* p, Reg v) { _mm256_store_ps(p, v); }
  static void storeu(float* p, Reg v) { _mm256_storeu_ps(p, v); }
  static void store_masked(float* p, Mask m, Reg v) { _mm256_maskstore_ps(p, m, v); }
  static Reg set1(float v) { return _mm256_set1_ps(v); }
  static Reg zero() { return _mm256_setzero_ps(); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  static Reg add(Reg a, Reg b) { return _mm256_add_ps(a, b); }
  static Reg min(Reg a, Reg b) { return _mm256_min_ps(a, b); }
  static Reg max(Reg a, Reg b) { return _mm256_max_ps(a, b); }
  static Mask tail_mask(int64_t rem) {  // rem in [1, 8]
    alignas(32) static const int32_t kLanes[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLanes + 8 - rem));
  }
  // The 4-lane tail (x86_panels.h): 1-4 lanes masked by an int vector.
  static __m128i mask4(int n) {
    alignas(16) static const int32_t kLanes[8] = {-1, -1, -1, -1, 0, 0, 0, 0};
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(kLanes + 4 - n));
  }
  static Reg4 low4(Reg v) { return _mm256_castps256_ps128(v); }
  static Reg4 load4_masked(const float* p, int n) { return _mm_maskload_ps(p, mask4(n)); }
  static void store4_masked(float* p, int n, Reg4 v) { _mm_maskstore_ps(p, mask4(n), v); }
};
}  // namespace

void spmm_conv_f32_avx2(const SpmmConvWeights& w, const float* x, float* y, int64_t hw, int64_t m0, int64_t m1,
                        int64_t b0, int64_t b1) {
  panel_dispatch<Ymm, 8, 4, 3>(w, x, y, hw, m0, m1, b0, b1);
}

}  // namespace sparseforge
