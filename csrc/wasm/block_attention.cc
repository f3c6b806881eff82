// block_attention (tiled attention that skips key blocks), gathered decode and the fused Double Sparsity
// decode; the layouts of csrc/kernels/block_attention/block_attention.h. The host checks dtypes and shapes
// (python/sparseforge/backends/wasm_attention.py); here every index array is range-checked, as the native
// binding does, because the kernels trust them. Built only when csrc/kernels/block_attention/ exists.
#include <string>

#include "abi.h"
#include "kernels/block_attention/block_attention.h"

using namespace sparseforge;

namespace {
std::string out_of_range(const char* arg, const int32_t* p, int64_t n, int64_t lo, int64_t hi) {
  for (int64_t i = 0; i < n; ++i)
    if (p[i] < lo || p[i] >= hi)
      return std::string("argument '") + arg + "' holds " + std::to_string(p[i]) + " at flat index " +
             std::to_string(i) + ", expected values in [" + std::to_string(lo) + ", " + std::to_string(hi) + ")";
  return "";
}
}  // namespace

// mode: 0 dense, 1 threshold, 2 block_mask (kv_num [mB, mH, nq], list = kv_indices [.., cap]), 3 early_stop
// (list = order [mB, mH, nq, cap = n_kv_blocks]). stats: int64 [4] = total, computed, skipped, scored_only.
SF_EXPORT(sf_block_attention)(const float* q, const float* k, const float* v, float* out, int32_t B, int32_t Hq,
                              int32_t Hkv, int32_t Lq, int32_t Lk, int32_t D, float scale, int32_t causal,
                              int32_t mode, float threshold, int32_t block_q, int32_t block_k, const int32_t* kv_num,
                              const int32_t* list, int32_t mB, int32_t mH, int32_t cap, int64_t* stats) {
  BlockAttnArgs a{};
  a.q = q, a.k = k, a.v = v, a.out = out;
  a.B = B, a.Hq = Hq, a.Hkv = Hkv, a.Lq = Lq, a.Lk = Lk, a.D = D;
  a.scale = scale;
  a.causal = causal != 0;
  a.mode = static_cast<AttnMode>(mode);
  a.threshold = threshold;
  a.block_q = block_q, a.block_k = block_k;
  a.mB = a.mH = 1;
  const int64_t nq = (Lq + block_q - 1) / block_q, nkv = (Lk + block_k - 1) / block_k;
  std::string err;
  if (a.mode == AttnMode::kBlockMask) {
    const int64_t rows = int64_t{mB} * mH * nq;
    err = out_of_range("kv_num_blocks", kv_num, rows, 0, int64_t{cap} + 1);
    for (int64_t i = 0; err.empty() && i < rows; ++i) err = out_of_range("kv_indices", list + i * cap, kv_num[i], 0, nkv);
    a.kv_num = kv_num, a.list = list, a.cap = cap, a.mB = mB, a.mH = mH;
  } else if (a.mode == AttnMode::kEarlyStop) {
    err = out_of_range("order", list, int64_t{mB} * mH * nq * nkv, 0, nkv);
    a.list = list, a.cap = nkv, a.mB = mB, a.mH = mH;
  }
  if (!err.empty()) return wasm::fail("block_attention(): " + err);
  BlockAttnStats st;
  if (B > 0 && Hq > 0 && Lq > 0) st = block_attention_f32(a);
  stats[0] = st.total, stats[1] = st.computed, stats[2] = st.total - st.computed, stats[3] = st.scored_only;
  return 0;
}

// Decode (q [B, Hq, 1, D]) over token_indices idx [B, Hsel, n_sel], Hsel = Hq or Hkv.
SF_EXPORT(sf_gathered_decode_attention)(const float* q, const float* k, const float* v, const int32_t* idx, float* out,
                                        int32_t B, int32_t Hq, int32_t Hkv, int32_t Lk, int32_t D, int32_t Hsel,
                                        int32_t n_sel, float scale) {
  const std::string err = out_of_range("token_indices", idx, int64_t{B} * Hsel * n_sel, 0, Lk);
  if (!err.empty()) return wasm::fail("gathered_decode_attention(): " + err);
  GatherAttnArgs a{};
  a.q = q, a.k = k, a.v = v, a.out = out;
  a.B = B, a.Hq = Hq, a.Hkv = Hkv, a.Lk = Lk, a.D = D;
  a.scale = scale;
  a.idx = idx, a.Hsel = Hsel, a.n_sel = n_sel;
  gather_attention_f32(a);
  return 0;
}

// Double Sparsity decode: label [B, Hkv, Lk, r], channels [Hsel, r] (Hsel = Hq or Hkv), top n_sel tokens.
SF_EXPORT(sf_double_sparsity_decode)(const float* q, const float* k, const float* v, const float* label,
                                     const int32_t* channels, float* out, int32_t B, int32_t Hq, int32_t Hkv, int32_t Lk,
                                     int32_t D, int32_t Hsel, int32_t r, int32_t n_sel, float scale) {
  const std::string err = out_of_range("q_channels", channels, int64_t{Hsel} * r, 0, D);
  if (!err.empty()) return wasm::fail("double_sparsity_decode(): " + err);
  GatherAttnArgs a{};
  a.q = q, a.k = k, a.v = v, a.out = out;
  a.B = B, a.Hq = Hq, a.Hkv = Hkv, a.Lk = Lk, a.D = D;
  a.scale = scale;
  a.Hsel = Hsel, a.n_sel = n_sel < Lk ? n_sel : Lk;
  a.label = label, a.channels = channels, a.r = r;
  gather_attention_f32(a);
  return 0;
}
