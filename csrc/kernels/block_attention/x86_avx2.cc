// AVX2+FMA ops for the shared tile driver (compiled with -mavx2 -mfma; reached only when the CPU has them).
//
// * Scores S = scale·Q·Kᵀ: a 3-row x 4-key register block (1 x 8 for a single row) that walks D in
//   8-lane steps with 12 independent FMA accumulators, then one hadd tree per row turns them into 4 (8)
//   dot products. K rows are read in place through a pointer per key, so contiguous blocks and gathered
//   tokens (Double Sparsity) run the same code and nothing is transposed or packed.
// * P·V: a 4-row x 16-column block of the output (8 accumulators) that streams V rows; the online-softmax
//   rescale by alpha is fused into the load of O.
// * exp: Cephes-style range reduction (x = n·ln2 + r, two-constant ln2) and a degree-7 polynomial,
//   ~1 ulp; inputs below -87.34 (and -inf, i.e. masked scores) give exactly 0, nan stays nan.
#include <immintrin.h>

#include <cmath>

#include "block_attention.h"
#include "tile_driver.h"

namespace sparseforge {

namespace {

inline __m256i lanes_below(int n) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline __m256 exp256(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.33654f);
  const __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);  // true for -inf, false for nan
  x = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(lo, x));  // operand order keeps nan
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  // ln2 split: n·hi is exact
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(underflow, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
}

// Dot products of MR query rows with NK keys, scaled, into S[r * ldS + 0..NK).
template <int MR, int NK>
__attribute__((always_inline)) inline void dot_block(const float* q, int64_t ldq, const float* const* kp, int D, float scale, float* S, int ldS) {
  __m256 acc[MR][NK];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NK; ++j) acc[r][j] = _mm256_setzero_ps();
  int d = 0;
  for (; d + 8 <= D; d += 8) {
    __m256 kv[NK];
    for (int j = 0; j < NK; ++j) kv[j] = _mm256_loadu_ps(kp[j] + d);
    for (int r = 0; r < MR; ++r) {
      const __m256 qv = _mm256_loadu_ps(q + r * ldq + d);
      for (int j = 0; j < NK; ++j) acc[r][j] = _mm256_fmadd_ps(qv, kv[j], acc[r][j]);
    }
  }
  if (d < D) {  // D not a multiple of 8 (general head dims, label rank r): masked loads read only valid lanes
    const __m256i mk = lanes_below(D - d);
    __m256 kv[NK];
    for (int j = 0; j < NK; ++j) kv[j] = _mm256_maskload_ps(kp[j] + d, mk);
    for (int r = 0; r < MR; ++r) {
      const __m256 qv = _mm256_maskload_ps(q + r * ldq + d, mk);
      for (int j = 0; j < NK; ++j) acc[r][j] = _mm256_fmadd_ps(qv, kv[j], acc[r][j]);
    }
  }
  const __m256 sc = _mm256_set1_ps(scale);
  for (int r = 0; r < MR; ++r) {
    float* s = S + r * ldS;
    if constexpr (NK == 1) {
      s[0] = hsum(acc[r][0]) * scale;
    } else {
      // hadd tree: [a0 a1 a2 a3] -> per-128-bit-half sums of each, then low half + high half.
      const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(acc[r][0], acc[r][1]), _mm256_hadd_ps(acc[r][2], acc[r][3]));
      if constexpr (NK == 4) {
        const __m128 v = _mm_add_ps(_mm256_castps256_ps128(u0), _mm256_extractf128_ps(u0, 1));
        _mm_storeu_ps(s, _mm_mul_ps(v, _mm256_castps256_ps128(sc)));
      } else {
        const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(acc[r][4], acc[r][5]), _mm256_hadd_ps(acc[r][6], acc[r][7]));
        const __m256 v = _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
        _mm256_storeu_ps(s, _mm256_mul_ps(v, sc));
      }
    }
  }
}

template <int MR>
inline void score_rows(const float* q, int64_t ldq, const float* const* kp, int nk, int D, float scale, float* S,
                       int ldS) {
  int j = 0;
  if constexpr (MR == 1)  // one row (decode without a group): 8 keys keep 8 accumulators in flight
    for (; j + 8 <= nk; j += 8) dot_block<1, 8>(q, ldq, kp + j, D, scale, S + j, ldS);
  for (; j + 4 <= nk; j += 4) dot_block<MR, 4>(q, ldq, kp + j, D, scale, S + j, ldS);
  for (; j < nk; ++j) dot_block<MR, 1>(q, ldq, kp + j, D, scale, S + j, ldS);
}

// O[r, d0 .. d0+8W) = alpha[r]·O + sum_j P[r, j]·V[j, d0 ..] for MR rows.
template <int MR, int W>
__attribute__((always_inline)) inline void pv_block(float* O, int ldO, const float* P, int ldP, const float* const* vp, int nk, int d0,
                     const float* alpha) {
  __m256 acc[MR][W];
  for (int r = 0; r < MR; ++r) {
    const __m256 a = _mm256_set1_ps(alpha[r]);
    for (int w = 0; w < W; ++w) acc[r][w] = _mm256_mul_ps(_mm256_loadu_ps(O + r * ldO + d0 + 8 * w), a);
  }
  for (int j = 0; j < nk; ++j) {
    __m256 vv[W];
    for (int w = 0; w < W; ++w) vv[w] = _mm256_loadu_ps(vp[j] + d0 + 8 * w);
    for (int r = 0; r < MR; ++r) {
      const __m256 p = _mm256_broadcast_ss(P + r * ldP + j);
      for (int w = 0; w < W; ++w) acc[r][w] = _mm256_fmadd_ps(p, vv[w], acc[r][w]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int w = 0; w < W; ++w) _mm256_storeu_ps(O + r * ldO + d0 + 8 * w, acc[r][w]);
}

template <int MR>
inline void pv_rows(float* O, int ldO, const float* P, int ldP, const float* const* vp, int nk, int D,
                    const float* alpha) {
  // 16-column blocks (12 accumulators for 6 rows: measured fastest on Zen 5, ahead of 4x16 and 2x32),
  // then an 8-column block and scalar columns for head dims that are not multiples of 16.
  int d0 = 0;
  for (; d0 + 16 <= D; d0 += 16) pv_block<MR, 2>(O, ldO, P, ldP, vp, nk, d0, alpha);
  for (; d0 + 8 <= D; d0 += 8) pv_block<MR, 1>(O, ldO, P, ldP, vp, nk, d0, alpha);
  for (int d = d0; d < D; ++d)
    for (int r = 0; r < MR; ++r) {
      float o = O[r * ldO + d] * alpha[r];
      for (int j = 0; j < nk; ++j) o += P[r * ldP + j] * vp[j][d];
      O[r * ldO + d] = o;
    }
}

struct Avx2Ops {
  static void scores(const float* q, int64_t ldq, int R, const float* const* kp, int nk, int D, float scale,
                     float* S, int ldS) {
    int r = 0;
    for (; r + 3 <= R; r += 3) score_rows<3>(q + r * ldq, ldq, kp, nk, D, scale, S + r * ldS, ldS);
    if (R - r == 2) score_rows<2>(q + r * ldq, ldq, kp, nk, D, scale, S + r * ldS, ldS);
    if (R - r == 1) score_rows<1>(q + r * ldq, ldq, kp, nk, D, scale, S + r * ldS, ldS);
  }

  static void rowmax(const float* S, int ldS, int R, int nk, float* out) {
    const __m256 ninf = _mm256_set1_ps(attn::kNegInf);
    const __m256i tail = lanes_below(nk % 8);
    for (int r = 0; r < R; ++r) {
      const float* s = S + r * ldS;
      __m256 m = ninf;
      int j = 0;
      for (; j + 8 <= nk; j += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(s + j));
      if (j < nk) m = _mm256_max_ps(m, _mm256_blendv_ps(ninf, _mm256_maskload_ps(s + j, tail), _mm256_castsi256_ps(tail)));
      out[r] = hmax(m);
    }
  }

  static void colmax(const float* S, int ldS, int R, int nk, float* out) {
    const __m256i tail = lanes_below(nk % 8);
    for (int j = 0; j < nk; j += 8) {
      __m256 m = _mm256_loadu_ps(S + j);  // S rows are padded to a multiple of 8: the load stays inside
      for (int r = 1; r < R; ++r) m = _mm256_max_ps(m, _mm256_loadu_ps(S + r * ldS + j));
      if (j + 8 <= nk)
        _mm256_storeu_ps(out + j, m);
      else
        _mm256_maskstore_ps(out + j, tail, m);
    }
  }

  static void exp_rows(float* S, int ldS, int R, int nk, const float* mrow, float* sums) {
    const __m256i tail = lanes_below(nk % 8);
    for (int r = 0; r < R; ++r) {
      float* s = S + r * ldS;
      const __m256 m = _mm256_set1_ps(mrow[r]);
      __m256 acc = _mm256_setzero_ps();
      int j = 0;
      for (; j + 8 <= nk; j += 8) {
        const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + j), m));
        _mm256_storeu_ps(s + j, e);
        acc = _mm256_add_ps(acc, e);
      }
      if (j < nk) {
        const __m256 e = _mm256_and_ps(exp256(_mm256_sub_ps(_mm256_maskload_ps(s + j, tail), m)), _mm256_castsi256_ps(tail));
        _mm256_maskstore_ps(s + j, tail, e);
        acc = _mm256_add_ps(acc, e);
      }
      sums[r] = hsum(acc);
    }
  }

  static void pv(float* O, int ldO, int R, const float* P, int ldP, const float* const* vp, int nk, int D,
                 const float* alpha) {
    int r = 0;
    for (; r + 6 <= R; r += 6) pv_rows<6>(O + r * ldO, ldO, P + r * ldP, ldP, vp, nk, D, alpha + r);
    switch (R - r) {
      case 5: pv_rows<5>(O + r * ldO, ldO, P + r * ldP, ldP, vp, nk, D, alpha + r); break;
      case 4: pv_rows<4>(O + r * ldO, ldO, P + r * ldP, ldP, vp, nk, D, alpha + r); break;
      case 3: pv_rows<3>(O + r * ldO, ldO, P + r * ldP, ldP, vp, nk, D, alpha + r); break;
      case 2: pv_rows<2>(O + r * ldO, ldO, P + r * ldP, ldP, vp, nk, D, alpha + r); break;
      case 1: pv_rows<1>(O + r * ldO, ldO, P + r * ldP, ldP, vp, nk, D, alpha + r); break;
      default: break;
    }
  }
};

}  // namespace

void block_attention_f32_avx2(const BlockAttnArgs& a, int64_t t0, int64_t t1, AttnWorkspace& w, BlockAttnStats* st) {
  attn::run_block_tiles<Avx2Ops>(a, t0, t1, w, st);
}

void gather_attention_f32_avx2(const GatherAttnArgs& a, int64_t t0, int64_t t1, AttnWorkspace& w) {
  attn::run_gather_tiles<Avx2Ops>(a, t0, t1, w);
}

}  // namespace sparseforge
