// group_nnz: out [rows, cols / m] int32 = nonzeros per group of m along each row of w [rows, cols] fp32.
#include <string>

#include "abi.h"
#include "kernels/group_nnz/group_nnz.h"

using namespace sparseforge;

SF_EXPORT(sf_group_nnz)(const float* w, int32_t rows, int32_t cols, int32_t m, int32_t* out) {
  if (m < 1 || m > 64) return wasm::fail("group_nnz(): argument 'm' must be in [1, 64], got " + std::to_string(m));
  if (rows < 0 || cols < 0 || cols % m != 0)
    return wasm::fail("group_nnz(): argument 'w' has " + std::to_string(cols) + " columns, not a multiple of m=" +
                      std::to_string(m));
  group_nnz_f32(w, rows, cols, cols, m, out);
  return 0;
}
