// spmm_conv: 1x1 convolution with a sparse weight over CHW activations (the XNNPACK / "Fast Sparse
// ConvNets" SpMM):  y[co, p] = clamp(bias[co] + sum_k W[co, k] * x[k, p], out_min, out_max).
// W is packed once (python/sparseforge/formats/sparse_conv.py) in blocks of `block` (1, 2 or 4)
// consecutive output channels that share their input-channel indices (SparseByteNN / XNNPACK 2x1, 4x1):
//   nnz[b]        index entries of block b (output channels [b*block, min(b*block+block, c_out)))
//   offsets[b]    prefix sums of nnz (offsets[n_blocks] = total entries)
//   idx_delta[e]  input-channel deltas: the first entry of a block is the absolute channel, later ones
//                 the step from the previous entry (so every block can start on any thread)
//   values[e*block + r]  weight of row r of the entry's block (zero-filled where a row lacks it)
// Torch- and Python-free so the file cross-compiles alone for the NEON test under qemu.
#pragma once

#include <cstdint>
#include <vector>

#include "sparseforge/common.h"

namespace sparseforge {

struct SpmmConvWeights {
  int64_t c_out = 0, c_in = 0;
  int block = 1;
  const int32_t* nnz = nullptr;
  const int32_t* offsets = nullptr;
  const int32_t* idx_delta = nullptr;
  const float* values = nullptr;
  const float* bias = nullptr;  // [c_out] or nullptr
  float out_min = -__builtin_inff(), out_max = __builtin_inff();
  // Optional panel index (spmm_conv_panel_index): the x86 kernels copy x in panels of input channels
  // that stay in L1 and walk each block's entries panel by panel. spmm_conv_f32 builds it when absent.
  int32_t panel = 0;                      // input channels per panel; 0 = no index
  int64_t n_panels = 0;                   // ceil(c_in / panel)
  const int32_t* panel_entry = nullptr;   // [n_blocks * (n_panels + 1)]: first entry of block b in panel p
  const int32_t* chan = nullptr;          // [entries]: absolute input channel of every entry
};

// Owns a panel index and points a SpmmConvWeights at it. O(entries), paid once per packed weight.
struct SpmmConvPanelIndex {
  std::vector<int32_t> entry, chan;
  int32_t panel = 0;
  int64_t n_panels = 0;
  void attach(SpmmConvWeights* w) const {
    w->panel = panel;
    w->n_panels = n_panels;
    w->panel_entry = entry.data();
    w->chan = chan.data();
  }
};
constexpr int32_t kSpmmConvPanel = 32;
SpmmConvPanelIndex spmm_conv_panel_index(const SpmmConvWeights& w, int32_t panel = kSpmmConvPanel);

inline int64_t spmm_conv_blocks(const SpmmConvWeights& w) { return (w.c_out + w.block - 1) / w.block; }

// One image: x [c_in, hw], y [c_out, hw] (row stride hw). Computes pixels [m0, m1) of blocks [b0, b1).
using SpmmConvFn = void (*)(const SpmmConvWeights& w, const float* x, float* y, int64_t hw, int64_t m0, int64_t m1,
                            int64_t b0, int64_t b1);

void spmm_conv_f32_scalar(const SpmmConvWeights& w, const float* x, float* y, int64_t hw, int64_t m0, int64_t m1,
                          int64_t b0, int64_t b1);
#if defined(SPARSEFORGE_HAVE_AVX2)
void spmm_conv_f32_avx2(const SpmmConvWeights& w, const float* x, float* y, int64_t hw, int64_t m0, int64_t m1,
                        int64_t b0, int64_t b1);
#endif
#if defined(SPARSEFORGE_HAVE_AVX512)
void spmm_conv_f32_avx512(const SpmmConvWeights& w, const float* x, float* y, int64_t hw, int64_t m0, int64_t m1,
                          int64_t b0, int64_t b1);
#endif
#if defined(SPARSEFORGE_HAVE_WASM_SIMD)
void spmm_conv_f32_wasm(const SpmmConvWeights& w, const float* x, float* y, int64_t hw, int64_t m0, int64_t m1,
                        int64_t b0, int64_t b1);
#endif
#if defined(SPARSEFORGE_HAVE_NEON)
void spmm_conv_f32_neon(const SpmmConvWeights& w, const float* x, float* y, int64_t hw, int64_t m0, int64_t m1,
                        int64_t b0, int64_t b1);
#endif

struct SpmmConvKernel {
  SpmmConvFn fn;
  Isa isa;
};
SpmmConvKernel select_spmm_conv(Isa isa);

// Batch of n images x [n, c_in, hw] -> y [n, c_out, hw] with the kernel chosen for active_isa(), on
// num_threads() threads split over (image, pixel tile) or, for small hw, over output-channel blocks.
void spmm_conv_f32(const SpmmConvWeights& w, const float* x, float* y, int64_t n, int64_t hw);

}  // namespace sparseforge
