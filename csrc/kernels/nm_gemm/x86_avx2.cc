// Compiled with -mavx2 -mfma -mf16c; reached only when the CPU has them (see dispatch.cc).
//
// Two kernels:
//  * GEMV (batch 1), n/m = 1/2 (1:2, 2:4, 4:8). Memory bound: it streams the kept values and the packed
//    indices once (~0.53x the dense bytes for 2:4). 8 kept values cover 16 inputs = two ymm registers of x;
//    the per-lane index comes straight from the metadata (broadcast, variable shift, mask, + group base)
//    and selects activations with two vpermps and a blend. No gathers.
//  * GEMM (any batch, any n:m). Compute bound: X is transposed into a [K, Bt] tile (Bt <= 64 batch rows,
//    padded to a multiple of 8), so every kept weight is one broadcast FMA'd against Bt/8 contiguous
//    vectors: a decoded index is reused across the whole batch tile. K is blocked so the active part of the
//    tile stays in L1; each row keeps S independent accumulator sets to hide FMA latency.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "nm_gemm.h"

namespace sparseforge {

namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Value loaders: fp32, or bf16 widened to fp32 (a bf16 is the top half of an fp32).
inline float scalar_f32(const float* p) { return *p; }
inline float scalar_f32(const uint16_t* p) { return bf16_to_f32(*p); }
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
}
inline __m256 bcast(const float* p) { return _mm256_broadcast_ss(p); }
inline __m256 bcast(const uint16_t* p) { return _mm256_set1_ps(scalar_f32(p)); }

inline unsigned read_index(const uint8_t* md, int64_t bit, int bits, unsigned mask) {
  unsigned w = md[bit >> 3];
  if ((bit & 7) + bits > 8) w |= static_cast<unsigned>(md[(bit >> 3) + 1]) << 8;
  return (w >> (bit & 7)) & mask;
}

// Lane constants for the half-density decode: lane i of 8 kept values sits in group (i / n) of the
// chunk; within one ymm of x (4 lanes = 8 inputs) its group starts at ((i % 4) / n) * m.
struct HalfDecode {
  __m256i shifts, mask, gofs;
  HalfDecode(int n, int m, int bits) {
    alignas(32) int32_t sh[8], go[8];
    for (int i = 0; i < 8; ++i) {
      sh[i] = i * bits;
      go[i] = ((i % 4) / n) * m;
    }
    shifts = _mm256_load_si256(reinterpret_cast<const __m256i*>(sh));
    gofs = _mm256_load_si256(reinterpret_cast<const __m256i*>(go));
    mask = _mm256_set1_epi32(m - 1);
  }
  // Index (0..7) into the ymm pair of the chunk, from the chunk's `bits` metadata bytes in w.
  inline __m256i idx(uint32_t w) const {
    return _mm256_or_si256(_mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(w)), shifts), mask),
                           gofs);
  }
};

inline uint32_t load_meta(const uint8_t* p, int bytes, bool wide) {
  uint32_t w = 0;
  if (wide) {
    std::memcpy(&w, p, 4);  // constant size: one mov
  } else {
    for (int i = 0; i < bytes; ++i) w |= static_cast<uint32_t>(p[i]) << (8 * i);
  }
  return w;
}

// Software prefetch distance for the value streams (bytes ahead). With 8 rows in flight the hardware
// prefetchers alone leave ~15% of the bandwidth unused on the Zen test machine; 1 KiB ahead recovers it.
constexpr int kPf = 1024;
template <int R, typename T>
void gemv_rows(const NmGemmArgs& a, const T* values, int64_t r, const HalfDecode& dec, int bits, int64_t nnz,
               int64_t mrow, int64_t chunks, int64_t csafe) {
  const float* x = a.x;
  const T* v[R];
  const uint8_t* md[R];
  __m256 acc[R];
  for (int i = 0; i < R; ++i) {
    v[i] = values + (r + i) * nnz;
    md[i] = a.meta + (r + i) * mrow;
    acc[i] = _mm256_setzero_ps();
  }
  auto step = [&](int64_t c, bool wide) {
    const __m256 xl = _mm256_loadu_ps(x + 16 * c);
    const __m256 xh = _mm256_loadu_ps(x + 16 * c + 8);
    for (int i = 0; i < R; ++i) {
      if (kPf > 0 && (c & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(v[i] + 8 * c) + kPf, _MM_HINT_T0);
      const __m256i idx = dec.idx(load_meta(md[i] + c * bits, bits, wide));
      const __m256 xs = _mm256_blend_ps(_mm256_permutevar8x32_ps(xl, idx), _mm256_permutevar8x32_ps(xh, idx), 0xF0);
      acc[i] = _mm256_fmadd_ps(load8(v[i] + 8 * c), xs, acc[i]);
    }
  };
  int64_t c = 0;
  for (; c < csafe; ++c) step(c, true);
  for (; c < chunks; ++c) step(c, false);
  const unsigned mask = static_cast<unsigned>(a.m - 1);
  for (int i = 0; i < R; ++i) {
    float s = hsum(acc[i]);
    for (int64_t j = chunks * 8; j < nnz; ++j) s += scalar_f32(v[i] + j) * x[(j / a.n) * a.m + read_index(md[i], j * bits, bits, mask)];
    a.y[r + i] = s + (a.bias ? a.bias[r + i] : 0.0f);
  }
}

// acc (NV vectors) += sum_j v[j] * xt[off[j] bytes .. + 8*NV floats], S interleaved accumulator sets.
template <int NV, int S, typename T>
void gemm_row(const char* xt, const T* v, const int32_t* off, int64_t cnt, float* yt) {
  // One flat array, fully unrolled loops: GCC keeps every accumulator in a register (a 2-D array made it
  // spill all of them to the stack on every iteration).
  __m256 acc[S * NV];
#pragma GCC unroll 64
  for (int t = 0; t < NV; ++t) acc[t] = _mm256_loadu_ps(yt + 8 * t);
#pragma GCC unroll 64
  for (int t = NV; t < S * NV; ++t) acc[t] = _mm256_setzero_ps();
  const int64_t full = cnt / S * S;
  for (int64_t j = 0; j < full; j += S) {
#pragma GCC unroll 64
    for (int s = 0; s < S; ++s) {
      const __m256 bv = bcast(v + j + s);
      const float* p = reinterpret_cast<const float*>(xt + off[j + s]);
#pragma GCC unroll 64
      for (int t = 0; t < NV; ++t) acc[s * NV + t] = _mm256_fmadd_ps(bv, _mm256_loadu_ps(p + 8 * t), acc[s * NV + t]);
    }
  }
  for (int64_t j = full; j < cnt; ++j) {
    const __m256 bv = bcast(v + j);
    const float* p = reinterpret_cast<const float*>(xt + off[j]);
#pragma GCC unroll 64
    for (int t = 0; t < NV; ++t) acc[t] = _mm256_fmadd_ps(bv, _mm256_loadu_ps(p + 8 * t), acc[t]);
  }
#pragma GCC unroll 64
  for (int s = 1; s < S; ++s)
#pragma GCC unroll 64
    for (int t = 0; t < NV; ++t) acc[t] = _mm256_add_ps(acc[t], acc[s * NV + t]);
#pragma GCC unroll 64
  for (int t = 0; t < NV; ++t) _mm256_storeu_ps(yt + 8 * t, acc[t]);
}

template <typename T>
using GemmRowFn = void (*)(const char*, const T*, const int32_t*, int64_t, float*);

template <typename T>
GemmRowFn<T> gemm_row_for(int64_t nv) {
  switch (nv) {
    case 1: return gemm_row<1, 8, T>;
    case 2: return gemm_row<2, 4, T>;
    case 3: return gemm_row<3, 4, T>;
    case 4: return gemm_row<4, 3, T>;
    case 5: return gemm_row<5, 2, T>;
    case 6: return gemm_row<6, 2, T>;
    case 7: return gemm_row<7, 1, T>;
    default: return gemm_row<8, 1, T>;
  }
}

}  // namespace

namespace {
template <typename T>
void gemv_impl(const NmGemmArgs& a, const T* values, int64_t r0, int64_t r1) {
  const int bits = nm_index_bits(a.m);
  const int64_t nnz = a.k / a.m * a.n;
  const int64_t mrow = nm_meta_row_bytes(a.k, a.n, a.m);
  const int64_t chunks = a.k / 16;
  // A 4-byte metadata read at chunk c stays inside the row while c * bits + 4 <= mrow.
  const int64_t csafe = mrow >= 4 ? std::min<int64_t>(chunks, (mrow - 4) / bits + 1) : 0;
  const HalfDecode dec(a.n, a.m, bits);
  int64_t r = r0;
  for (; r + 8 <= r1; r += 8) gemv_rows<8>(a, values, r, dec, bits, nnz, mrow, chunks, csafe);
  for (; r + 4 <= r1; r += 4) gemv_rows<4>(a, values, r, dec, bits, nnz, mrow, chunks, csafe);
  for (; r < r1; ++r) gemv_rows<1>(a, values, r, dec, bits, nnz, mrow, chunks, csafe);
}
}  // namespace

void nm_gemv_half_f32_avx2(const NmGemmArgs& a, int64_t r0, int64_t r1) {
  if (a.values_bf16)
    gemv_impl(a, a.values_bf16, r0, r1);
  else
    gemv_impl(a, a.values, r0, r1);
}

void nm_gemm_pack_xt_avx2(const float* x, int64_t ldx, int64_t bt, int64_t k, int64_t btp, float* xt) {
  constexpr int64_t kTile = 256;
  for (int64_t k0 = 0; k0 < k; k0 += kTile) {
    const int64_t k1 = std::min(k, k0 + kTile);
    for (int64_t b = 0; b < bt; ++b) {
      const float* src = x + b * ldx;
      for (int64_t kk = k0; kk < k1; ++kk) xt[kk * btp + b] = src[kk];
    }
    for (int64_t kk = k0; kk < k1; ++kk)
      for (int64_t b = bt; b < btp; ++b) xt[kk * btp + b] = 0.0f;
  }
}

namespace {
template <typename T>
void gemm_impl(const NmGemmArgs& a, const T* values, const float* xt, int64_t btp, int64_t bt, int64_t r0, int64_t r1) {
  const int n = a.n, m = a.m, bits = nm_index_bits(m);
  const unsigned imask = (1u << bits) - 1u;
  const int64_t nnz = a.k / m * n;
  const int64_t mrow = nm_meta_row_bytes(a.k, n, m);
  const int64_t nv = btp / 8;
  const int32_t stride = static_cast<int32_t>(btp * 4);  // bytes per k in the tile
  const bool half = 2 * n == m && (m == 2 || m == 4 || m == 8);  // 8 kept values = 16 inputs, power-of-two m
  // K block: the tile rows it touches (kb * btp floats) fit comfortably in L1; a multiple of 16 and of m.
  const int64_t unit = 16 * m;
  // Measured on the Zen 5 test machine (48 KiB L1d, 1 MiB L2): a 48 KiB tile block (128 k x 64 batch)
  // beat 24 KiB by ~15% at batch 64; the L2 serves the part that spills.
  constexpr int64_t kL1 = 49152;
  const int64_t kb = std::max<int64_t>(unit, (kL1 / (btp * 4)) / unit * unit);
  const int64_t jb = kb / m * n;
  constexpr int64_t kRowBlock = 512;  // rows whose partial sums (512 x Bt floats) stay in L2 across K blocks
  std::vector<float> yt(static_cast<size_t>(kRowBlock * btp));
  std::vector<int32_t> off(static_cast<size_t>(jb + 8));
  const GemmRowFn<T> row_fn = gemm_row_for<T>(nv);
  const HalfDecode dec(n, m, bits);
  const __m256i vstride = _mm256_set1_epi32(stride);
  const __m256i hi8 = _mm256_setr_epi32(0, 0, 0, 0, 8, 8, 8, 8);  // lanes 4..7 index the chunk's second 8 inputs
  const char* xtb = reinterpret_cast<const char*>(xt);

  for (int64_t rb = r0; rb < r1; rb += kRowBlock) {
    const int64_t re = std::min(r1, rb + kRowBlock);
    std::fill(yt.begin(), yt.end(), 0.0f);
    for (int64_t k0 = 0; k0 < a.k; k0 += kb) {
      const int64_t k1 = std::min(a.k, k0 + kb);
      const int64_t j0 = k0 / m * n, j1 = k1 / m * n, cnt = j1 - j0;
      for (int64_t r = rb; r < re; ++r) {
        const T* v = values + r * nnz;
        const uint8_t* md = a.meta + r * mrow;
        // Decode this block's indices into byte offsets of the tile rows.
        int64_t j = j0;
        if (half) {
          // 8 kept values = 16 inputs = `bits` metadata bytes, byte aligned (j0 is a multiple of 8).
          for (; j + 8 <= j1; j += 8) {
            const int64_t c = j / 8;
            const bool wide = c * bits + 4 <= mrow;
            const __m256i kk = _mm256_add_epi32(dec.idx(load_meta(md + c * bits, bits, wide)),
                                                _mm256_add_epi32(hi8, _mm256_set1_epi32(static_cast<int>(16 * c))));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(off.data() + (j - j0)), _mm256_mullo_epi32(kk, vstride));
          }
        }
        for (; j < j1; ++j) {
          const int64_t kk = (j / n) * m + read_index(md, j * bits, bits, imask);
          off[j - j0] = static_cast<int32_t>(kk) * stride;
        }
        // Pull the next block of this row's values towards the cache while this one computes.
        if (j1 < nnz) {
          const char* nxt = reinterpret_cast<const char*>(v + j1);
          for (int64_t p = 0; p < std::min<int64_t>(jb, nnz - j1) * static_cast<int64_t>(sizeof(T)); p += 64)
            _mm_prefetch(nxt + p, _MM_HINT_T0);
        }
        row_fn(xtb, v + j0, off.data(), cnt, yt.data() + (r - rb) * btp);
      }
    }
    for (int64_t r = rb; r < re; ++r) {
      const float bias = a.bias ? a.bias[r] : 0.0f;
      const float* src = yt.data() + (r - rb) * btp;
      for (int64_t b = 0; b < bt; ++b) a.y[b * a.ldy + r] = src[b] + bias;
    }
  }
}

}  // namespace

void nm_gemm_xt_f32_avx2(const NmGemmArgs& a, const float* xt, int64_t btp, int64_t bt, int64_t r0, int64_t r1) {
  if (a.values_bf16)
    gemm_impl(a, a.values_bf16, xt, btp, bt, r0, r1);
  else
    gemm_impl(a, a.values, xt, btp, bt, r0, r1);
}

}  // namespace sparseforge
