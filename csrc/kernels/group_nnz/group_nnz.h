// group_nnz: nonzero count of every group of m consecutive values along each row of a fp32 matrix.
// It answers "is this weight N:M sparse, and how dense is it" without a Python-side pass over the data.
// NaN counts as nonzero, -0.0 as zero (the same rule as x != 0).
#pragma once

#include <cstdint>

#include "sparseforge/common.h"

namespace sparseforge {

// w: [rows, cols] with row stride ld (elements); cols % m == 0; out: [rows, cols / m] int32, dense.
using GroupNnzFn = void (*)(const float* w, int64_t rows, int64_t cols, int64_t ld, int m, int32_t* out);

void group_nnz_f32_scalar(const float* w, int64_t rows, int64_t cols, int64_t ld, int m, int32_t* out);
#if defined(SPARSEFORGE_HAVE_AVX2)
void group_nnz_f32_avx2(const float* w, int64_t rows, int64_t cols, int64_t ld, int m, int32_t* out);
#endif
#if defined(SPARSEFORGE_HAVE_WASM_SIMD)
void group_nnz_f32_wasm(const float* w, int64_t rows, int64_t cols, int64_t ld, int m, int32_t* out);
#endif

struct GroupNnzKernel {
  GroupNnzFn fn;
  Isa isa;
};
GroupNnzKernel select_group_nnz(Isa isa);

// Runs the kernel chosen for active_isa() over row blocks on num_threads() threads.
void group_nnz_f32(const float* w, int64_t rows, int64_t cols, int64_t ld, int m, int32_t* out);

}  // namespace sparseforge
