// nm_gemm: y [batch, rows] = x [batch, k] · Wᵀ (+ bias), W N:M sparse (sparseforge.formats.NMSparse:
// values [rows, k/m*n] fp32, or bf16 bits when values_bf16 != 0; meta [rows, meta_row_bytes] uint8).
#include <string>

#include "abi.h"
#include "kernels/nm_gemm/nm_gemm.h"

using namespace sparseforge;

SF_EXPORT(sf_nm_gemm)(const float* x, const void* values, int32_t values_bf16, const uint8_t* meta,
                      const float* bias, float* y, int32_t batch, int32_t rows, int32_t k, int32_t n, int32_t m) {
  if (m < 2 || m > 64) return wasm::fail("nm_gemm(): argument 'm' must be in [2, 64], got " + std::to_string(m));
  if (n < 1 || n > m) return wasm::fail("nm_gemm(): argument 'n' must be in [1, m], got " + std::to_string(n));
  if (k < 0 || k % m != 0 || batch < 0 || rows < 0)
    return wasm::fail("nm_gemm(): argument 'k' (" + std::to_string(k) + ") must be a non-negative multiple of m");
  if (k == 0) {  // no kept values: y is the bias (as the native binding does)
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t r = 0; r < rows; ++r) y[b * rows + r] = bias ? bias[r] : 0.0f;
    return 0;
  }
  NmGemmArgs a{};
  a.x = x;
  a.ldx = k;
  a.values = values_bf16 ? nullptr : static_cast<const float*>(values);
  a.values_bf16 = values_bf16 ? static_cast<const uint16_t*>(values) : nullptr;
  a.meta = meta;
  a.bias = bias;
  a.y = y;
  a.ldy = rows;
  a.batch = batch;
  a.rows = rows;
  a.k = k;
  a.n = n;
  a.m = m;
  nm_gemm_f32(a);
  return 0;
}
