#include "group_nnz.h"

#include "sparseforge/threading.h"

namespace sparseforge {

GroupNnzKernel select_group_nnz(Isa isa) {
#if defined(SPARSEFORGE_HAVE_AVX2)
  if (runs_avx2(isa)) return {group_nnz_f32_avx2, Isa::kAvx2};
#endif
#if defined(SPARSEFORGE_HAVE_WASM_SIMD)
  if (isa == Isa::kWasm) return {group_nnz_f32_wasm, Isa::kWasm};
#endif
  return {group_nnz_f32_scalar, Isa::kScalar};
}

void group_nnz_f32(const float* w, int64_t rows, int64_t cols, int64_t ld, int m, int32_t* out) {
  GroupNnzFn fn = select_group_nnz(active_isa()).fn;
  const int64_t groups = cols / m;
  // ~64k elements per chunk keeps thread start-up well below the work it carries.
  const int64_t grain = cols > 0 ? (65536 + cols - 1) / cols : rows;
  parallel_for(rows, grain, [&](int64_t b, int64_t e) { fn(w + b * ld, e - b, cols, ld, m, out + b * groups); });
}

}  // namespace sparseforge
