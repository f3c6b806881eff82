// AVX-512 (F) SpMM over CHW activations: the shared panel driver (x86_panels.h) with 16-px vectors.
// Compiled with -mavx512f/bw/vl/dq; reached only when the CPU has them (Isa::kAvx512). Why a variant of
// its own: on CPUs with a full 512-bit datapath (Zen 5, Sapphire Rapids) each load and FMA covers twice
// the pixels, and dense conv2d (oneDNN) already runs 512-bit there. Lane masks are native.
// Register budget (32 zmm): R*NV accumulators + NV x vectors + 1 weight:
//   R=1: NV=8 (128 px), R=2: NV=6 (96 px), R=4: NV=4 (64 px).
#include <immintrin.h>

#include "x86_panels.h"

namespace sparseforge {

namespace {
struct Zmm : Xmm4 {
  using Reg = __m512;
  using Mask = __mmask16;
  static constexpr int W = 16;
  static Reg load(const float* p) { return _mm512_load_ps(p); }
  static Reg loadu(const float* p) { return _mm512_loadu_ps(p); }
  static Reg load_masked(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(float* p, Reg v) { _mm512_store_ps(p, v); }
  static void storeu(float* p, Reg v) { _mm512_storeu_ps(p, v); }
  static void store_masked(float* p, Mask m, Reg v) { _mm512_mask_storeu_ps(p, m, v); }
  static Reg set1(float v) { return _mm512_set1_ps(v); }
  static Reg zero() { return _mm512_setzero_ps(); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  static Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
  static Reg min(Reg a, Reg b) { return _mm512_min_ps(a, b); }
  static Reg max(Reg a, Reg b) { return _mm512_max_ps(a, b); }
  static Mask tail_mask(int64_t rem) { return static_cast<Mask>((1u << rem) - 1u); }  // rem in [1, 16]
  // The 4-lane tail (x86_panels.h): 1-4 lanes masked by AVX-512VL masks.
  static Reg4 low4(Reg v) { return _mm512_castps512_ps128(v); }
  static Reg4 load4_masked(const float* p, int n) { return _mm_maskz_loadu_ps(static_cast<__mmask8>((1u << n) - 1u), p); }
  static void store4_masked(float* p, int n, Reg4 v) { _mm_mask_storeu_ps(p, static_cast<__mmask8>((1u << n) - 1u), v); }
};
}  // namespace

void spmm_conv_f32_avx512(const SpmmConvWeights& w, const float* x, float* y, int64_t hw, int64_t m0, int64_t m1,
                          int64_t b0, int64_t b1) {
  panel_dispatch<Zmm, 8, 6, 4>(w, x, y, hw, m0, m1, b0, b1);
}

}  // namespace sparseforge
