// Scalar reference: the oracle the AVX2 variant is tested against, and the portable fallback. Plain loops
// and std::exp over the shared tile driver (tile_driver.h), so it has the same skip rules by construction.
#include <cmath>

#include "block_attention.h"
#include "tile_driver.h"

namespace sparseforge {

namespace {

struct ScalarOps {
  static void scores(const float* q, int64_t ldq, int R, const float* const* kp, int nk, int D, float scale,
                     float* S, int ldS) {
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < nk; ++j) {
        float acc = 0.0f;
        for (int d = 0; d < D; ++d) acc += q[r * ldq + d] * kp[j][d];
        S[r * ldS + j] = acc * scale;
      }
  }
  static void rowmax(const float* S, int ldS, int R, int nk, float* out) {
    for (int r = 0; r < R; ++r) {
      float m = attn::kNegInf;
      for (int j = 0; j < nk; ++j) m = S[r * ldS + j] > m ? S[r * ldS + j] : m;
      out[r] = m;
    }
  }
  static void colmax(const float* S, int ldS, int R, int nk, float* out) {
    for (int j = 0; j < nk; ++j) {
      float m = S[j];
      for (int r = 1; r < R; ++r) m = S[r * ldS + j] > m ? S[r * ldS + j] : m;
      out[j] = m;
    }
  }
  static void exp_rows(float* S, int ldS, int R, int nk, const float* m, float* sums) {
    for (int r = 0; r < R; ++r) {
      float s = 0.0f;
      for (int j = 0; j < nk; ++j) s += (S[r * ldS + j] = std::exp(S[r * ldS + j] - m[r]));
      sums[r] = s;
    }
  }
  static void pv(float* O, int ldO, int R, const float* P, int ldP, const float* const* vp, int nk, int D,
                 const float* alpha) {
    for (int r = 0; r < R; ++r) {
      float* o = O + r * ldO;
      for (int d = 0; d < D; ++d) o[d] *= alpha[r];
      for (int j = 0; j < nk; ++j) {
        const float p = P[r * ldP + j];
        for (int d = 0; d < D; ++d) o[d] += p * vp[j][d];
      }
    }
  }
};

}  // namespace

void block_attention_f32_scalar(const BlockAttnArgs& a, int64_t t0, int64_t t1, AttnWorkspace& w,
                                BlockAttnStats* st) {
  attn::run_block_tiles<ScalarOps>(a, t0, t1, w, st);
}

void gather_attention_f32_scalar(const GatherAttnArgs& a, int64_t t0, int64_t t1, AttnWorkspace& w) {
  attn::run_gather_tiles<ScalarOps>(a, t0, t1, w);
}

}  // namespace sparseforge
