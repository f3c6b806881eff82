// nm_gemm: Y = X · Wᵀ (+ bias) with W stored N:M sparse along the reduction dimension K.
//
// W layout (sparseforge.formats.NMSparse):
//   values [rows, K / m * n] fp32: the n kept values of every group of m consecutive inputs, in
//          ascending index order (a group with fewer nonzeros keeps explicit zeros);
//   meta   [rows, meta_row_bytes] uint8: the in-group index (0..m-1) of every kept value, bits = ceil(log2 m)
//          bits per value, packed LSB-first as one bit stream per row; meta_row_bytes = ceil(nnz_row * bits / 8).
// X is [B, K] (row stride ldx), Y is [B, rows] (row stride ldy).
#pragma once

#include <cstdint>
#include <cstring>

#include "sparseforge/common.h"

namespace sparseforge {

// A bf16 weight is the top half of an fp32. `static`: every ISA file gets its own copy compiled with its
// own flags (one shared inline copy could come from the AVX2 file and run on a CPU without AVX2).
static inline float bf16_to_f32(uint16_t bf16) {
  const uint32_t u = static_cast<uint32_t>(bf16) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline int nm_index_bits(int m) {
  int b = 0;
  while ((1 << b) < m) ++b;
  return b < 1 ? 1 : b;
}
inline int64_t nm_meta_row_bytes(int64_t k, int n, int m) { return (k / m * n * nm_index_bits(m) + 7) / 8; }

struct NmGemmArgs {
  const float* x;
  int64_t ldx;
  const float* values;          // fp32 kept values, or
  const uint16_t* values_bf16;  // bf16 kept values (exactly one of the two is non-null); fp32 accumulate
  const uint8_t* meta;
  const float* bias;  // may be null
  float* y;
  int64_t ldy;
  int64_t batch, rows, k;
  int n, m;
};

// A kernel computes output columns [r0, r1) (rows of W) for every batch row. Thread-safe.
using NmGemmFn = void (*)(const NmGemmArgs& a, int64_t r0, int64_t r1);

void nm_gemm_f32_scalar(const NmGemmArgs& a, int64_t r0, int64_t r1);
#if defined(SPARSEFORGE_HAVE_AVX2)
// Batch 1, n/m = 1/2 with m in {2, 4, 8}: permute-selected activations, no gathers.
void nm_gemv_half_f32_avx2(const NmGemmArgs& a, int64_t r0, int64_t r1);
// Any batch and any n:m; needs the transposed activation tile built by nm_gemm_pack_xt_avx2.
void nm_gemm_xt_f32_avx2(const NmGemmArgs& a, const float* xt, int64_t btp, int64_t bt, int64_t r0, int64_t r1);
void nm_gemm_pack_xt_avx2(const float* x, int64_t ldx, int64_t bt, int64_t k, int64_t btp, float* xt);
#endif
#if defined(SPARSEFORGE_HAVE_WASM_SIMD)
// WebAssembly SIMD128 (the wasm32 module only): batch-1 2:4 GEMV, else transposed-tile GEMM; any pattern.
void nm_gemm_f32_wasm(const NmGemmArgs& a, int64_t r0, int64_t r1);
bool nm_gemm_wasm_is_gemv(int64_t batch, int n, int m);
#endif

struct NmGemmKernel {
  Isa isa;
  const char* variant;  // "gemv" | "gemm" | "scalar"
};
NmGemmKernel select_nm_gemm(Isa isa, int64_t batch, int n, int m);

// Runs the kernel chosen for active_isa() on num_threads() threads.
void nm_gemm_f32(const NmGemmArgs& a);

}  // namespace sparseforge
