// WebAssembly SIMD128 variant (the wasm32 module only; chosen when its ISA is "wasm"). For m a multiple of
// 4 (2:4, 4:8, ...) a group is m/4 vectors: compare != 0 (true for NaN, false for -0.0, as x != 0),
// i32x4.bitmask, popcount. Other m (1:2, 2:3, ...) take the scalar reference.
#include <wasm_simd128.h>

#include "group_nnz.h"

namespace sparseforge {

void group_nnz_f32_wasm(const float* w, int64_t rows, int64_t cols, int64_t ld, int m, int32_t* out) {
  if (m % 4 != 0) return group_nnz_f32_scalar(w, rows, cols, ld, m, out);
  const int64_t groups = cols / m;
  const int vecs = m / 4;
  const v128_t zero = wasm_f32x4_splat(0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    const float* p = w + r * ld;
    int32_t* o = out + r * groups;
    for (int64_t g = 0; g < groups; ++g) {
      int32_t c = 0;
      for (int q = 0; q < vecs; ++q, p += 4)
        c += __builtin_popcount(wasm_i32x4_bitmask(wasm_f32x4_ne(wasm_v128_load(p), zero)));
      o[g] = c;
    }
  }
}

}  // namespace sparseforge
