// Picks the ISA, splits the work tiles over the thread pool, owns the per-thread workspaces and the top-k
// (std containers and algorithms stay out of the ISA files; see tile_driver.h).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <vector>

#include "block_attention.h"
#include "sparseforge/threading.h"
#include "tile_driver.h"

namespace sparseforge {

namespace {

// Owns one thread's scratch; sized for `rows` query rows, key chunks of `chunk`, label rank r, Lk tokens.
struct WorkspaceBuf {
  std::vector<float> f;
  std::vector<int32_t> sel;
  std::vector<const float*> ptrs;
  AttnWorkspace w{};
  WorkspaceBuf(int64_t rows, int64_t chunk, int64_t D, int64_t r, int64_t lk, int64_t n_sel) {
    const int64_t ldS = (chunk + 7) / 8 * 8;
    const int64_t sizes[] = {rows * ldS, rows * D, rows, rows, rows, rows, rows, rows, rows * r, lk, lk};
    int64_t total = 0;
    for (int64_t s : sizes) total += (s + 15) / 16 * 16;  // every array starts 64-byte aligned
    f.assign(static_cast<size_t>(total + 16), 0.0f);
    float* p = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(f.data()) + 63) & ~uintptr_t{63});
    float** dst[] = {&w.S, &w.O, &w.m, &w.l, &w.mt, &w.alpha, &w.meff, &w.sums, &w.qsel, &w.score, &w.topk_tmp};
    for (int i = 0; i < 11; ++i) {
      *dst[i] = p;
      p += (sizes[i] + 15) / 16 * 16;
    }
    sel.assign(static_cast<size_t>(std::max<int64_t>(n_sel, 1)), 0);
    ptrs.assign(static_cast<size_t>(2 * chunk), nullptr);
    w.sel = sel.data();
    w.kp = ptrs.data();
    w.vp = ptrs.data() + chunk;
    w.ldS = static_cast<int>(ldS);
  }
};

// Tiles per pool chunk: enough work (~256k multiply-adds) that a hand-off pays for itself.
int64_t grain_for(int64_t work_per_tile) { return std::max<int64_t>(1, (1 << 18) / std::max<int64_t>(1, work_per_tile)); }

}  // namespace

void attn_topk(const float* score, int64_t n, int64_t k, float* tmp, int32_t* sel) {
  if (k >= n) {
    for (int64_t i = 0; i < n; ++i) sel[i] = static_cast<int32_t>(i);
    return;
  }
  // The k-th largest value by selection on a copy (O(n)), then one pass picks the tokens above it and a
  // second fills up with ties at it; a nan score is taken last.
  std::copy(score, score + n, tmp);
  std::nth_element(tmp, tmp + (k - 1), tmp + n, std::greater<float>());
  const float thr = tmp[k - 1];
  int64_t c = 0;
  for (int64_t i = 0; i < n && c < k; ++i)
    if (score[i] > thr) sel[c++] = static_cast<int32_t>(i);
  for (int64_t i = 0; i < n && c < k; ++i)
    if (score[i] == thr) sel[c++] = static_cast<int32_t>(i);
  for (int64_t i = 0; i < n && c < k; ++i)
    if (std::isnan(score[i])) sel[c++] = static_cast<int32_t>(i);
}

bool block_attention_grouped(const BlockAttnArgs& a) {
  const bool per_head_input = a.mode == AttnMode::kBlockMask || a.mode == AttnMode::kEarlyStop;
  return a.Lq == 1 && a.Hq > a.Hkv && !(per_head_input && a.mH == a.Hq);
}

int64_t block_attention_tiles(const BlockAttnArgs& a) {
  if (block_attention_grouped(a)) return a.B * a.Hkv;
  return a.B * a.Hq * ((a.Lq + a.block_q - 1) / a.block_q);
}

Isa select_block_attention(Isa isa) {
#if defined(SPARSEFORGE_HAVE_AVX2)
  if (runs_avx2(isa)) return Isa::kAvx2;
#endif
  return Isa::kScalar;
}

BlockAttnStats block_attention_f32(const BlockAttnArgs& a) {
  BlockAttnFn fn = block_attention_f32_scalar;
#if defined(SPARSEFORGE_HAVE_AVX2)
  if (select_block_attention(active_isa()) == Isa::kAvx2) fn = block_attention_f32_avx2;
#endif
  const bool grouped = block_attention_grouped(a);
  const int64_t rows = grouped ? a.Hq / a.Hkv : std::min<int64_t>(a.block_q, a.Lq);
  const int64_t tiles = block_attention_tiles(a);
  // Atomics, not a mutex: the single-threaded wasm libc++ has no std::mutex.
  std::atomic<int64_t> total_n{0}, computed{0}, scored_only{0};
  parallel_for(tiles, grain_for(rows * a.Lk * a.D), [&](int64_t t0, int64_t t1) {
    WorkspaceBuf buf(rows, a.block_k, a.D, 0, 0, 0);
    BlockAttnStats st;
    fn(a, t0, t1, buf.w, &st);
    total_n += st.total;
    computed += st.computed;
    scored_only += st.scored_only;
  });
  BlockAttnStats total;
  total.total = total_n.load();
  total.computed = computed.load();
  total.scored_only = scored_only.load();
  return total;
}

void gather_attention_f32(const GatherAttnArgs& a) {
  GatherAttnFn fn = gather_attention_f32_scalar;
#if defined(SPARSEFORGE_HAVE_AVX2)
  if (select_block_attention(active_isa()) == Isa::kAvx2) fn = gather_attention_f32_avx2;
#endif
  const int64_t rows = a.Hsel == a.Hkv ? a.Hq / a.Hkv : 1;
  const int64_t lk = a.label ? a.Lk : 0;
  const int64_t work = rows * (a.n_sel * a.D + lk * a.r);
  parallel_for(a.B * a.Hsel, grain_for(work), [&](int64_t t0, int64_t t1) {
    WorkspaceBuf buf(rows, attn::kGatherChunk, a.D, a.label ? a.r : 0, lk, a.label ? a.n_sel : 0);
    fn(a, t0, t1, buf.w);
  });
}

}  // namespace sparseforge
