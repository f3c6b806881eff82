// Scalar reference: the oracle the SIMD variants are tested against, and the portable fallback.

#include "nm_gemm.h"

namespace sparseforge {

namespace {
inline float to_f32(float v) { return v; }
inline float to_f32(uint16_t bf16) { return bf16_to_f32(bf16); }

template <typename T>
void scalar_impl(const NmGemmArgs& a, const T* values, int64_t r0, int64_t r1) {
  const int bits = nm_index_bits(a.m);
  const unsigned mask = (1u << bits) - 1u;
  const int64_t nnz = a.k / a.m * a.n;
  const int64_t mrow = nm_meta_row_bytes(a.k, a.n, a.m);
  for (int64_t r = r0; r < r1; ++r) {
    const T* v = values + r * nnz;
    const uint8_t* md = a.meta + r * mrow;
    for (int64_t b = 0; b < a.batch; ++b) {
      const float* x = a.x + b * a.ldx;
      float acc = 0.0f;
      int64_t bit = 0;
      for (int64_t j = 0; j < nnz; ++j, bit += bits) {
        // An index spans at most two bytes (bits <= 6).
        unsigned w = md[bit >> 3];
        if ((bit & 7) + bits > 8) w |= static_cast<unsigned>(md[(bit >> 3) + 1]) << 8;
        const unsigned idx = (w >> (bit & 7)) & mask;
        acc += to_f32(v[j]) * x[(j / a.n) * a.m + idx];
      }
      a.y[b * a.ldy + r] = acc + (a.bias ? a.bias[r] : 0.0f);
    }
  }
}
}  // namespace

void nm_gemm_f32_scalar(const NmGemmArgs& a, int64_t r0, int64_t r1) {
  if (a.values_bf16)
    scalar_impl(a, a.values_bf16, r0, r1);
  else
    scalar_impl(a, a.values, r0, r1);
}

}  // namespace sparseforge
