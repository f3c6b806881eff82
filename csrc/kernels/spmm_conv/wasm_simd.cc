// WebAssembly SIMD128 SpMM over CHW activations (the wasm32 module only; chosen when its ISA is "wasm"):
// the shared 4-lane driver (simd4_driver.h). SIMD128 has no FMA, so every pixel sums bias + w*x in the
// reference's order and matches it bit for bit. Engines map v128 to 16 xmm registers on x86: R=1: NV=8
// (32 px), R=2: NV=4 (16 px), R=4: NV=2 (8 px) keep accumulators, x vectors and weights in registers.
#include <wasm_simd128.h>

#include "simd4_driver.h"

namespace sparseforge {

namespace {
struct Simd128 {
  using Reg = v128_t;
  static Reg splat(float v) { return wasm_f32x4_splat(v); }
  static Reg load(const float* p) { return wasm_v128_load(p); }
  static Reg load_splat(const float* p) { return wasm_v128_load32_splat(p); }
  static Reg madd(Reg acc, Reg w, Reg x) { return wasm_f32x4_add(acc, wasm_f32x4_mul(w, x)); }
  static float madd1(float acc, float w, float x) { return acc + w * x; }
  // pmax(a, b) = a < b ? b : a and pmin(a, b) = b < a ? b : a are exactly std::max / std::min, so the
  // clamp treats NaN as the reference's std::min(std::max(acc, lo), hi) does (keeps it).
  static Reg clamp(Reg a, Reg lo, Reg hi) { return wasm_f32x4_pmin(wasm_f32x4_pmax(a, lo), hi); }
  static void store(float* p, Reg v) { wasm_v128_store(p, v); }
};
}  // namespace

void spmm_conv_f32_wasm(const SpmmConvWeights& w, const float* x, float* y, int64_t hw, int64_t m0, int64_t m1,
                        int64_t b0, int64_t b1) {
  simd4_dispatch<Simd128, 8, 4, 2>(w, x, y, hw, m0, m1, b0, b1);
}

}  // namespace sparseforge
