// WebAssembly SIMD128 variant: compiled only into the wasm32 module (-msimd128, scripts/build_wasm.py) and
// chosen there when the module's ISA is "wasm". Two paths, as on x86:
//  * GEMV (batch 1) at 2:4: one metadata byte holds the in-group indices of 4 kept values (2 groups = 8
//    inputs = two v128 of x). A 256-entry table turns the byte into two i8x16.swizzle masks that pick the 4
//    activations, so one multiply covers 4 kept values; SIMD128 has no gather. (A per-call table of all 16
//    selections per group of x, fetched with 64-bit loads, was as fast at K=1024 and 2x slower at K=4096:
//    32 bytes per input fall out of L1/L2.) Lane-wise partial sums:
//    results differ from the reference in the last bits (summation order).
//  * GEMM (any batch, any n:m): X transposed into tiles of [K, 16] batch rows, so a decoded column feeds
//    16 rows of the batch with one splat. Each lane sums its batch row in the reference's order, and
//    SIMD128 has no FMA to contract into, so this path matches the scalar reference bit for bit.
//    Two weight rows run together: 8 independent accumulator chains hide the add latency. (Blocking K so
//    the tile's active rows stay in L1, as x86 does, gained nothing measurable under wasmtime.)
#include <wasm_simd128.h>

#include <algorithm>
#include <vector>

#include "nm_gemm.h"

namespace sparseforge {

namespace {

inline float to_f32(float v) { return v; }
inline float to_f32(uint16_t bf16) { return bf16_to_f32(bf16); }
inline v128_t load4(const float* p) { return wasm_v128_load(p); }
inline v128_t load4(const uint16_t* p) {  // 4 bf16 -> 4 fp32: a bf16 is the top half of an fp32
  return wasm_i32x4_shl(wasm_u32x4_extend_low_u16x8(wasm_v128_load64_zero(p)), 16);
}

// ---- GEMV, 2:4 -----------------------------------------------------------------------------------

struct SwizzleTable {
  v128_t lo[256], hi[256];  // lo picks lanes 0-1 from x[0..4), hi lanes 2-3 from x[4..8); 0xFF -> 0
  SwizzleTable() {
    for (int b = 0; b < 256; ++b) {
      uint8_t l[16], h[16];
      std::memset(l, 0xFF, 16);
      std::memset(h, 0xFF, 16);
      for (int lane = 0; lane < 4; ++lane) {
        const int idx = (b >> (2 * lane)) & 3;
        uint8_t* dst = lane < 2 ? l : h;
        for (int q = 0; q < 4; ++q) dst[4 * lane + q] = static_cast<uint8_t>(4 * idx + q);
      }
      lo[b] = wasm_v128_load(l);
      hi[b] = wasm_v128_load(h);
    }
  }
};

const SwizzleTable& swizzle_table() {
  static const SwizzleTable t;  // 8 KiB, built on first use
  return t;
}

template <typename T>
void gemv_2of4(const NmGemmArgs& a, const T* values, int64_t r0, int64_t r1) {
  const SwizzleTable& t = swizzle_table();
  const int64_t nnz = a.k / 2, mrow = nm_meta_row_bytes(a.k, 2, 4);
  const int64_t full = nnz / 4;  // meta bytes that cover 4 kept values
  const float* x = a.x;
  for (int64_t r = r0; r < r1; ++r) {
    const T* v = values + r * nnz;
    const uint8_t* md = a.meta + r * mrow;
    v128_t acc0 = wasm_f32x4_splat(0.0f), acc1 = acc0;
    int64_t q = 0;
    for (; q + 2 <= full; q += 2) {  // two independent chains
      const uint8_t b0 = md[q], b1 = md[q + 1];
      const float* xp = x + 8 * q;
      const v128_t s0 = wasm_v128_or(wasm_i8x16_swizzle(wasm_v128_load(xp), t.lo[b0]),
                                     wasm_i8x16_swizzle(wasm_v128_load(xp + 4), t.hi[b0]));
      const v128_t s1 = wasm_v128_or(wasm_i8x16_swizzle(wasm_v128_load(xp + 8), t.lo[b1]),
                                     wasm_i8x16_swizzle(wasm_v128_load(xp + 12), t.hi[b1]));
      acc0 = wasm_f32x4_add(acc0, wasm_f32x4_mul(load4(v + 4 * q), s0));
      acc1 = wasm_f32x4_add(acc1, wasm_f32x4_mul(load4(v + 4 * q + 4), s1));
    }
    for (; q < full; ++q) {
      const uint8_t b0 = md[q];
      const float* xp = x + 8 * q;
      const v128_t s0 = wasm_v128_or(wasm_i8x16_swizzle(wasm_v128_load(xp), t.lo[b0]),
                                     wasm_i8x16_swizzle(wasm_v128_load(xp + 4), t.hi[b0]));
      acc0 = wasm_f32x4_add(acc0, wasm_f32x4_mul(load4(v + 4 * q), s0));
    }
    const v128_t s = wasm_f32x4_add(acc0, acc1);
    float acc = (wasm_f32x4_extract_lane(s, 0) + wasm_f32x4_extract_lane(s, 1)) +
                (wasm_f32x4_extract_lane(s, 2) + wasm_f32x4_extract_lane(s, 3));
    for (int64_t j = 4 * full; j < nnz; ++j)  // K % 8 == 4: the last group's two values
      acc += to_f32(v[j]) * x[(j / 2) * 4 + ((md[j >> 2] >> (2 * (j & 3))) & 3)];
    a.y[r] = acc + (a.bias ? a.bias[r] : 0.0f);
  }
}

// ---- GEMM, any n:m -------------------------------------------------------------------------------

constexpr int64_t kTile = 16;     // batch rows per transposed tile (4 v128 lanes-sets)
constexpr int64_t kRowBlock = 32; // weight rows whose decoded columns are kept while all tiles run

// Absolute input column of every kept value of one weight row.
void decode_cols(const uint8_t* md, int64_t nnz, int n, int m, int32_t* cols) {
  const int bits = nm_index_bits(m);
  const unsigned mask = (1u << bits) - 1u;
  int64_t bit = 0;
  for (int64_t j = 0; j < nnz; ++j, bit += bits) {
    unsigned w = md[bit >> 3];
    if ((bit & 7) + bits > 8) w |= static_cast<unsigned>(md[(bit >> 3) + 1]) << 8;
    cols[j] = static_cast<int32_t>((j / n) * m + ((w >> (bit & 7)) & mask));
  }
}

// Rows r and r + 1 (the same when odd) against one tile xt [K, 4 * NV]; lane sums in acc[2][NV].
template <int NV, typename T>
inline void tile_pair(const T* v0, const T* v1, const int32_t* c0, const int32_t* c1, int64_t nnz, const float* xt,
                      float* out0, float* out1) {
  v128_t acc0[NV], acc1[NV];
  for (int i = 0; i < NV; ++i) acc0[i] = acc1[i] = wasm_f32x4_splat(0.0f);
  for (int64_t j = 0; j < nnz; ++j) {
    // f32x4.splat of a scalar: v128.load32_splat was 1.5x slower here under wasmtime.
    const v128_t w0 = wasm_f32x4_splat(to_f32(v0[j])), w1 = wasm_f32x4_splat(to_f32(v1[j]));
    const float* x0 = xt + static_cast<int64_t>(c0[j]) * (4 * NV);
    const float* x1 = xt + static_cast<int64_t>(c1[j]) * (4 * NV);
    for (int i = 0; i < NV; ++i) {
      acc0[i] = wasm_f32x4_add(acc0[i], wasm_f32x4_mul(w0, wasm_v128_load(x0 + 4 * i)));
      acc1[i] = wasm_f32x4_add(acc1[i], wasm_f32x4_mul(w1, wasm_v128_load(x1 + 4 * i)));
    }
  }
  for (int i = 0; i < NV; ++i) {
    wasm_v128_store(out0 + 4 * i, acc0[i]);
    wasm_v128_store(out1 + 4 * i, acc1[i]);
  }
}

template <int NV, typename T>
void gemm_tile(const NmGemmArgs& a, const T* values, const std::vector<int32_t>& cols, int64_t rb, int64_t re,
               const float* xt, int64_t b0, int64_t bt) {
  const int64_t nnz = a.k / a.m * a.n;
  alignas(16) float s0[kTile], s1[kTile];
  for (int64_t r = rb; r < re; r += 2) {
    const int64_t r1 = std::min(r + 1, re - 1);  // an odd last row runs twice, stored once
    const int32_t* c0 = cols.data() + (r - rb) * nnz;
    const int32_t* c1 = cols.data() + (r1 - rb) * nnz;
    tile_pair<NV>(values + r * nnz, values + r1 * nnz, c0, c1, nnz, xt, s0, s1);
    const float bias0 = a.bias ? a.bias[r] : 0.0f, bias1 = a.bias ? a.bias[r1] : 0.0f;
    for (int64_t b = 0; b < bt; ++b) {
      a.y[(b0 + b) * a.ldy + r] = s0[b] + bias0;
      if (r1 != r) a.y[(b0 + b) * a.ldy + r1] = s1[b] + bias1;
    }
  }
}

template <typename T>
void gemm_any(const NmGemmArgs& a, const T* values, int64_t r0, int64_t r1) {
  const int64_t nnz = a.k / a.m * a.n, mrow = nm_meta_row_bytes(a.k, a.n, a.m);
  const int64_t tiles = (a.batch + kTile - 1) / kTile;
  // The whole batch transposed once, tile by tile ([K, 4 * NV] each, zero padded): the size of X.
  const int nv_last = static_cast<int>((a.batch - (tiles - 1) * kTile + 3) / 4);
  std::vector<float> xt(static_cast<size_t>(a.k * kTile * tiles), 0.0f);
  std::vector<int64_t> tile_off(static_cast<size_t>(tiles));
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t b0 = t * kTile, bt = std::min(kTile, a.batch - b0);
    const int64_t width = t == tiles - 1 ? 4 * nv_last : kTile;
    float* dst = xt.data() + t * a.k * kTile;
    tile_off[static_cast<size_t>(t)] = t * a.k * kTile;
    for (int64_t b = 0; b < bt; ++b) {
      const float* src = a.x + (b0 + b) * a.ldx;
      for (int64_t c = 0; c < a.k; ++c) dst[c * width + b] = src[c];
    }
  }
  std::vector<int32_t> cols(static_cast<size_t>(kRowBlock * nnz));
  for (int64_t rb = r0; rb < r1; rb += kRowBlock) {
    const int64_t re = std::min(r1, rb + kRowBlock);
    for (int64_t r = rb; r < re; ++r) decode_cols(a.meta + r * mrow, nnz, a.n, a.m, cols.data() + (r - rb) * nnz);
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t b0 = t * kTile, bt = std::min(kTile, a.batch - b0);
      const float* tile = xt.data() + tile_off[static_cast<size_t>(t)];
      switch (t == tiles - 1 ? nv_last : 4) {
        case 1: gemm_tile<1>(a, values, cols, rb, re, tile, b0, bt); break;
        case 2: gemm_tile<2>(a, values, cols, rb, re, tile, b0, bt); break;
        case 3: gemm_tile<3>(a, values, cols, rb, re, tile, b0, bt); break;
        default: gemm_tile<4>(a, values, cols, rb, re, tile, b0, bt); break;
      }
    }
  }
}

template <typename T>
void run(const NmGemmArgs& a, const T* values, int64_t r0, int64_t r1) {
  if (a.batch == 1 && a.n == 2 && a.m == 4)
    gemv_2of4(a, values, r0, r1);
  else
    gemm_any(a, values, r0, r1);
}

}  // namespace

bool nm_gemm_wasm_is_gemv(int64_t batch, int n, int m) { return batch == 1 && n == 2 && m == 4; }

// Output columns [r0, r1) for every batch row. The module is single-threaded, so this runs once per call
// over all rows and transposes X once.
void nm_gemm_f32_wasm(const NmGemmArgs& a, int64_t r0, int64_t r1) {
  if (a.values_bf16)
    run(a, a.values_bf16, r0, r1);
  else
    run(a, a.values, r0, r1);
}

}  // namespace sparseforge
