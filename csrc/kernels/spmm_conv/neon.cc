// ARM64 NEON SpMM over CHW activations (aarch64 only; NEON is baseline there): the shared 4-lane
// driver (simd4_driver.h) with FMA. AArch64 has 32 vector registers: R=1: NV=8 (32 px), R=2: NV=6
// (24 px), R=4: NV=4 (16 px).
#include <arm_neon.h>

#include "simd4_driver.h"

namespace sparseforge {

namespace {
struct Neon {
  using Reg = float32x4_t;
  static Reg splat(float v) { return vdupq_n_f32(v); }
  static Reg load(const float* p) { return vld1q_f32(p); }
  static Reg load_splat(const float* p) { return vld1q_dup_f32(p); }
  static Reg madd(Reg acc, Reg w, Reg x) { return vfmaq_f32(acc, x, w); }
  static float madd1(float acc, float w, float x) { return __builtin_fmaf(w, x, acc); }
  static Reg clamp(Reg a, Reg lo, Reg hi) { return vminq_f32(vmaxq_f32(a, lo), hi); }
  static void store(float* p, Reg v) { vst1q_f32(p, v); }
};
}  // namespace

void spmm_conv_f32_neon(const SpmmConvWeights& w, const float* x, float* y, int64_t hw, int64_t m0, int64_t m1,
                        int64_t b0, int64_t b1) {
  simd4_dispatch<Neon, 8, 6, 4>(w, x, y, hw, m0, m1, b0, b1);
}

}  // namespace sparseforge
