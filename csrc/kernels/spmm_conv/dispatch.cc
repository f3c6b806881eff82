#include <algorithm>
#include <vector>

#include "spmm_conv.h"
#include "sparseforge/threading.h"

namespace sparseforge {

SpmmConvKernel select_spmm_conv(Isa isa) {
#if defined(SPARSEFORGE_HAVE_AVX512)
  if (isa == Isa::kAvx512) return {spmm_conv_f32_avx512, Isa::kAvx512};
#endif
#if defined(SPARSEFORGE_HAVE_AVX2)
  if (runs_avx2(isa)) return {spmm_conv_f32_avx2, Isa::kAvx2};
#endif
#if defined(SPARSEFORGE_HAVE_NEON)
  if (isa == Isa::kNeon) return {spmm_conv_f32_neon, Isa::kNeon};
#endif
#if defined(SPARSEFORGE_HAVE_WASM_SIMD)
  if (isa == Isa::kWasm) return {spmm_conv_f32_wasm, Isa::kWasm};
#endif
  return {spmm_conv_f32_scalar, Isa::kScalar};
}

SpmmConvPanelIndex spmm_conv_panel_index(const SpmmConvWeights& w, int32_t panel) {
  SpmmConvPanelIndex out;
  const int64_t nb = spmm_conv_blocks(w), total = w.offsets[nb];
  out.panel = panel;
  out.n_panels = (w.c_in + panel - 1) / panel;
  const int64_t np = out.n_panels;
  out.chan.resize(static_cast<size_t>(total));
  out.entry.resize(static_cast<size_t>(nb * (np + 1)));
  for (int64_t b = 0; b < nb; ++b) {
    const int32_t e0 = w.offsets[b], e1 = w.offsets[b + 1];
    int32_t k = 0;
    for (int32_t e = e0; e < e1; ++e) out.chan[e] = k = (e == e0 ? 0 : k) + w.idx_delta[e];
    int32_t* pe = out.entry.data() + b * (np + 1);
    int32_t e = e0;  // channels ascend within a block, so one sweep fills the block's row
    for (int64_t p = 0; p <= np; ++p) {
      while (e < e1 && out.chan[e] < p * panel) ++e;
      pe[p] = e;
    }
    pe[np] = e1;
  }
  return out;
}

void spmm_conv_f32(const SpmmConvWeights& w_in, const float* x, float* y, int64_t n, int64_t hw) {
  const SpmmConvKernel kern = select_spmm_conv(active_isa());
  SpmmConvFn fn = kern.fn;
  // The x86 kernels walk the weight panel by panel: without a prebuilt index (SpmmConvPlan has one) it is
  // built here, O(entries), which the raw one-shot call also pays for its index check.
  SpmmConvWeights w = w_in;
  SpmmConvPanelIndex index;
  if (runs_avx2(kern.isa) && w.panel_entry == nullptr) {
    index = spmm_conv_panel_index(w);
    index.attach(&w);
  }
  const int64_t nb = spmm_conv_blocks(w);
  if (n <= 0 || hw <= 0 || nb <= 0) return;
  const int64_t total = w.offsets[nb];
  const int64_t work = std::max<int64_t>(1, total * w.block * hw * n);  // multiply-adds
  // A second thread pays off past ~128k multiply-adds of its own (~2 us of AVX-512 work) on torch's
  // OpenMP team: 64x384x196 at 90% sparse (480k) runs 10.6 -> 7.3 us on two threads.
  const int64_t threads = std::min<int64_t>(num_threads(), std::max<int64_t>(1, work / (1 << 17)));
  const int64_t xs = w.c_in * hw, ys = w.c_out * hw;
  if (threads <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(w, x + i * xs, y + i * ys, hw, 0, hw, 0, nb);
    return;
  }
  if (n >= threads) {  // a batch: whole images per thread
    parallel_for(n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) fn(w, x + i * xs, y + i * ys, hw, 0, hw, 0, nb);
    });
    return;
  }
  if (hw >= 128 * threads) {
    // Large maps: contiguous pixel ranges (multiples of 16: whole cache lines, whole zmm) per thread,
    // every thread walks all the weights over its own x strip. 32-px rounding left 416 / 368 px of a
    // 28x28 map on two threads (13% imbalance); 16 gives 400 / 384.
    const int64_t span = ((hw + threads - 1) / threads + 15) / 16 * 16;
    const int64_t parts = (hw + span - 1) / span;
    parallel_for(n * parts, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t i = t / parts, m0 = (t % parts) * span;
        fn(w, x + i * xs, y + i * ys, hw, m0, std::min(hw, m0 + span), 0, nb);
      }
    });
    return;
  }
  // Balance output-channel chunks by nonzeros, not by count.
  const int64_t chunks = threads;
  std::vector<int64_t> cut(static_cast<size_t>(chunks + 1), nb);
  cut[0] = 0;
  for (int64_t c = 1; c < chunks; ++c) {
    const int64_t target = total * c / chunks;
    cut[c] = std::upper_bound(w.offsets, w.offsets + nb + 1, static_cast<int32_t>(target)) - w.offsets - 1;
    cut[c] = std::max(cut[c], cut[c - 1]);
  }
  parallel_for(chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c)
      for (int64_t i = 0; i < n; ++i) fn(w, x + i * xs, y + i * ys, hw, 0, hw, cut[c], cut[c + 1]);
  });
}

}  // namespace sparseforge
