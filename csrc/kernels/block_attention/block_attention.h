// block_attention: tiled fp32 attention with online softmax that can skip key blocks, plus decode over a
// gathered token subset and the fused Double Sparsity decode (label scores -> top-k -> attention).
//
// Layouts (all C-contiguous fp32): q [B, Hq, Lq, D], k/v [B, Hkv, Lk, D], out like q; Hq % Hkv == 0 and
// query head h reads K/V head h / (Hq / Hkv). Semantics (skip votes, causal alignment, query tiles, stats)
// are documented in README.md next to this file and in python/sparseforge/ops/block_attention.py.
#pragma once

#include <cstdint>

#include "sparseforge/common.h"

namespace sparseforge {

enum class AttnMode : int { kDense = 0, kThreshold = 1, kBlockMask = 2, kEarlyStop = 3 };

struct BlockAttnArgs {
  const float* q;
  const float* k;
  const float* v;
  float* out;
  int64_t B, Hq, Hkv, Lq, Lk, D;
  float scale;
  bool causal;
  AttnMode mode;
  float threshold;  // probability domain; a block is skipped when exp(m~ - m) < threshold for every row
  int block_q, block_k;
  // kBlockMask: kv_num [mB, mH, nq], kv_idx [mB, mH, nq, cap]; kEarlyStop: order [mB, mH, nq, nkv] (cap = nkv).
  const int32_t* kv_num;
  const int32_t* list;
  int64_t mB, mH, cap;
};

struct BlockAttnStats {
  int64_t total = 0, computed = 0, scored_only = 0;  // skipped = total - computed
};

// Decode (Lq == 1) over selected tokens: idx [B, Hsel, n_sel] with Hsel == Hq or Hkv (shared by a group).
struct GatherAttnArgs {
  const float* q;
  const float* k;
  const float* v;
  float* out;
  int64_t B, Hq, Hkv, Lk, D;
  float scale;
  const int32_t* idx;
  int64_t Hsel, n_sel;
  // Double Sparsity (when label != nullptr, idx is ignored): label [B, Hkv, Lk, r], channels [Hsel, r].
  const float* label;
  const int32_t* channels;
  int64_t r;
};

// Per-thread scratch, allocated by dispatch.cc: O(rows x (block_k + D)) floats, plus O(Lk) for the
// Double Sparsity label scores. Never O(Lq x Lk).
struct AttnWorkspace {
  float* S;        // [rows, ldS] scores, then probabilities
  float* O;        // [rows, D] unnormalised output accumulator
  float* m;        // [rows] running max
  float* l;        // [rows] running sum
  float* mt;       // [rows] this block's row max
  float* alpha;    // [rows] rescale of O and l
  float* meff;     // [rows] max used by the exp (0 where a row has seen no key yet)
  float* sums;     // [rows]
  float* qsel;     // [rows, r] label-channel query values (Double Sparsity)
  float* score;    // [Lk] label scores (Double Sparsity)
  float* topk_tmp; // [Lk] the top-k's scratch
  int32_t* sel;    // [n_sel] selected tokens (Double Sparsity)
  const float** kp;  // [chunk] key row pointers
  const float** vp;  // [chunk] value row pointers
  int ldS;
};

// k-th-largest selection over label scores: implemented in dispatch.cc (no std algorithms in ISA files).
void attn_topk(const float* score, int64_t n, int64_t k, float* tmp, int32_t* sel);

// Number of work tiles (the parallel_for range) and the kernels over a range of them.
int64_t block_attention_tiles(const BlockAttnArgs& a);
bool block_attention_grouped(const BlockAttnArgs& a);

using BlockAttnFn = void (*)(const BlockAttnArgs& a, int64_t t0, int64_t t1, AttnWorkspace& w, BlockAttnStats* st);
using GatherAttnFn = void (*)(const GatherAttnArgs& a, int64_t t0, int64_t t1, AttnWorkspace& w);

void block_attention_f32_scalar(const BlockAttnArgs& a, int64_t t0, int64_t t1, AttnWorkspace& w, BlockAttnStats* st);
void gather_attention_f32_scalar(const GatherAttnArgs& a, int64_t t0, int64_t t1, AttnWorkspace& w);
#if defined(SPARSEFORGE_HAVE_AVX2)
void block_attention_f32_avx2(const BlockAttnArgs& a, int64_t t0, int64_t t1, AttnWorkspace& w, BlockAttnStats* st);
void gather_attention_f32_avx2(const GatherAttnArgs& a, int64_t t0, int64_t t1, AttnWorkspace& w);
#endif

Isa select_block_attention(Isa isa);

// Run on num_threads() threads with the kernel chosen for active_isa(). Thread-safe.
BlockAttnStats block_attention_f32(const BlockAttnArgs& a);
void gather_attention_f32(const GatherAttnArgs& a);

}  // namespace sparseforge
