// Scalar reference: the oracle of the SIMD variants and the portable fallback.
#include <algorithm>
#include <vector>

#include "spmm_conv.h"

namespace sparseforge {

void spmm_conv_f32_scalar(const SpmmConvWeights& w, const float* x, float* y, int64_t hw, int64_t m0, int64_t m1,
                          int64_t b0, int64_t b1) {
  const int B = w.block;
  if (m1 <= m0) return;
  std::vector<float> acc(static_cast<size_t>(m1 - m0));
  for (int64_t b = b0; b < b1; ++b) {
    const int rows = static_cast<int>(std::min<int64_t>(B, w.c_out - b * B));
    for (int r = 0; r < rows; ++r) {
      const int64_t co = b * B + r;
      std::fill(acc.begin(), acc.end(), w.bias ? w.bias[co] : 0.0f);
      int64_t k = 0;
      for (int32_t e = w.offsets[b]; e < w.offsets[b + 1]; ++e) {
        k = (e == w.offsets[b] ? 0 : k) + w.idx_delta[e];
        const float v = w.values[static_cast<int64_t>(e) * B + r];
        const float* xr = x + k * hw;
        for (int64_t p = m0; p < m1; ++p) acc[p - m0] += v * xr[p];
      }
      float* yr = y + co * hw;
      for (int64_t p = m0; p < m1; ++p) yr[p] = std::min(std::max(acc[p - m0], w.out_min), w.out_max);
    }
  }
}

}  // namespace sparseforge
