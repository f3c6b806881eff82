// WebAssembly SIMD128 variant (the wasm32 module only; chosen when its ISA is "wasm"). For m a multiple of
// 4 (2:4, 4:8, ...): 16 values per step, compared != 0 (true for NaN, false for -0.0, as x != 0), the
// four lane masks narrowed to 16 bytes (-1 / 0) and summed per run of 4 with two pairwise extending
// adds: the negated nonzero count of 4 consecutive quads in one vector. m = 4 stores that directly;
// larger m add m/4 quads. Other m (1:2, 2:3, ...) take the scalar reference.
#include <wasm_simd128.h>

#include <vector>

#include "group_nnz.h"

namespace sparseforge {

namespace {
// Nonzero count of every quad (4 consecutive values) of row[0, cols), cols % 4 == 0, into q.
inline void quad_counts(const float* row, int64_t cols, int32_t* q) {
  const v128_t zero = wasm_f32x4_splat(0.0f);
  int64_t j = 0;
  for (; j + 16 <= cols; j += 16) {
    const v128_t m0 = wasm_f32x4_ne(wasm_v128_load(row + j), zero);
    const v128_t m1 = wasm_f32x4_ne(wasm_v128_load(row + j + 4), zero);
    const v128_t m2 = wasm_f32x4_ne(wasm_v128_load(row + j + 8), zero);
    const v128_t m3 = wasm_f32x4_ne(wasm_v128_load(row + j + 12), zero);
    const v128_t b = wasm_i8x16_narrow_i16x8(wasm_i16x8_narrow_i32x4(m0, m1), wasm_i16x8_narrow_i32x4(m2, m3));
    const v128_t s = wasm_i32x4_extadd_pairwise_i16x8(wasm_i16x8_extadd_pairwise_i8x16(b));
    wasm_v128_store(q + j / 4, wasm_i32x4_neg(s));
  }
  for (; j < cols; j += 4)
    q[j / 4] = (row[j] != 0.0f) + (row[j + 1] != 0.0f) + (row[j + 2] != 0.0f) + (row[j + 3] != 0.0f);
}
}  // namespace

void group_nnz_f32_wasm(const float* w, int64_t rows, int64_t cols, int64_t ld, int m, int32_t* out) {
  if (m % 4 != 0) return group_nnz_f32_scalar(w, rows, cols, ld, m, out);
  const int64_t groups = cols / m;
  const int per = m / 4;
  std::vector<int32_t> quads(per == 1 ? 0 : static_cast<size_t>(cols / 4 + 4));
  for (int64_t r = 0; r < rows; ++r) {
    int32_t* o = out + r * groups;
    if (per == 1) {  // a quad is a group: straight into the output row
      quad_counts(w + r * ld, cols, o);
      continue;
    }
    quad_counts(w + r * ld, cols, quads.data());
    for (int64_t g = 0; g < groups; ++g) {
      int32_t c = 0;
      for (int q = 0; q < per; ++q) c += quads[g * per + q];
      o[g] = c;
    }
  }
}

}  // namespace sparseforge
