#include <algorithm>
#include <cstdint>
#include <vector>

#include "nm_gemm.h"
#include "sparseforge/threading.h"

namespace sparseforge {

namespace {
bool half_density(int n, int m) { return 2 * n == m && (m == 2 || m == 4 || m == 8); }
constexpr int64_t kBatchTile = 64;  // batch rows per transposed tile (8 ymm accumulators per weight row)
}  // namespace

NmGemmKernel select_nm_gemm(Isa isa, int64_t batch, int n, int m) {
#if defined(SPARSEFORGE_HAVE_AVX2)
  if (runs_avx2(isa)) return {Isa::kAvx2, (batch == 1 && half_density(n, m)) ? "gemv" : "gemm"};
#endif
#if defined(SPARSEFORGE_HAVE_WASM_SIMD)
  if (isa == Isa::kWasm) return {Isa::kWasm, nm_gemm_wasm_is_gemv(batch, n, m) ? "gemv" : "gemm"};
#endif
  return {Isa::kScalar, "scalar"};
}

void nm_gemm_f32(const NmGemmArgs& a) {
  if (a.batch <= 0 || a.rows <= 0) return;
  const NmGemmKernel kern = select_nm_gemm(active_isa(), a.batch, a.n, a.m);
  const int64_t nnz = a.k / a.m * a.n;
  // Row chunks of at least ~256k kept values per thread: below that thread hand-off costs more than it saves.
  const int64_t work_per_row = std::max<int64_t>(1, nnz * std::min<int64_t>(a.batch, kBatchTile));
  const int64_t grain = std::max<int64_t>(4, (262144 + work_per_row - 1) / work_per_row);
#if defined(SPARSEFORGE_HAVE_AVX2)
  if (kern.isa == Isa::kAvx2) {
    if (kern.variant[3] == 'v') {  // "gemv"
      parallel_for(a.rows, grain, [&](int64_t b, int64_t e) { nm_gemv_half_f32_avx2(a, b, e); });
      return;
    }
    for (int64_t b0 = 0; b0 < a.batch; b0 += kBatchTile) {
      const int64_t bt = std::min(kBatchTile, a.batch - b0);
      const int64_t btp = (bt + 7) / 8 * 8;
      // 64-byte aligned, so every 32-byte load of a tile row stays inside one cache line.
      std::vector<float> xt_buf(static_cast<size_t>(a.k * btp + 16));
      float* xt = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(xt_buf.data()) + 63) & ~uintptr_t{63});
      const float* xb = a.x + b0 * a.ldx;
      parallel_for(a.k, 512, [&](int64_t s, int64_t e) {
        // Pack rows [s, e) of the transposed tile.
        nm_gemm_pack_xt_avx2(xb + s, a.ldx, bt, e - s, btp, xt + s * btp);
      });
      NmGemmArgs sub = a;
      sub.x = xb;
      sub.y = a.y + b0 * a.ldy;
      sub.batch = bt;
      parallel_for(a.rows, grain, [&](int64_t s, int64_t e) { nm_gemm_xt_f32_avx2(sub, xt, btp, bt, s, e); });
    }
    return;
  }
#endif
#if defined(SPARSEFORGE_HAVE_WASM_SIMD)
  if (kern.isa == Isa::kWasm) {
    parallel_for(a.rows, grain, [&](int64_t b, int64_t e) { nm_gemm_f32_wasm(a, b, e); });
    return;
  }
#endif
  parallel_for(a.rows, grain, [&](int64_t b, int64_t e) { nm_gemm_f32_scalar(a, b, e); });
}

}  // namespace sparseforge
