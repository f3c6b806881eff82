// AVX2 variant of spgemm (compiled with -mavx2 -mfma; reached only when the CPU has them).
// The hashed accumulation is scatter-bound and stays scalar (AVX2 has no scatter, and products are kept
// unfused so values stay bit-identical to the reference). AVX2 helps where rows are dense:
//   * reading back the dense accumulator: 32 column flags per compare + movemask, and a run of 32 live
//     columns (the common case of dense output rows such as X·Xᵀ) emitted with 256-bit loads/stores;
//   * scaled copies of single-term rows, 8 (f32) or 4 (f64) lanes at a time;
//   * sorting a row's columns (int32, up to 160): a branch-free rank sort with 8-lane compares, so rows
//     with random columns (Erdős–Rényi, R-MAT) stay on the dense accumulator instead of the hash;
//   * rows whose products all have distinct columns (nnz(C_i) == flops, typical of random matrices):
//     the products are rank-sorted with their values, with no accumulator at all.
#if defined(SPARSEFORGE_HAVE_AVX2)
// Loops start on 64-byte boundaries, here and in x86_avx512.cc: the same row code ran up to 11% apart
// between the two files depending on where its loops landed (pyamg bar/DG; the AVX2 policy built in
// the AVX-512 file, unchanged, was 11% slower until both aligned their loops).
#pragma GCC optimize("align-loops=64")
#include "spgemm_passes.h"
#include "x86_avx2_policy.h"

namespace sparseforge {

SPARSEFORGE_SPGEMM_DEFINE(avx2, Avx2Policy)

}  // namespace sparseforge
#endif  // SPARSEFORGE_HAVE_AVX2
