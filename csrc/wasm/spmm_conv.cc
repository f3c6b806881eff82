// spmm_conv: y [n, c_out, hw] = clamp(bias + W · x [n, c_in, hw], out_min, out_max), W packed as in
// sparseforge.formats.SparseConvWeight (nnz, offsets, idx_delta, values; blocks of 1, 2 or 4 rows).
#include <string>

#include "abi.h"
#include "kernels/spmm_conv/spmm_conv.h"

using namespace sparseforge;

namespace {
// The packed arrays against each other and every index inside [0, c_in): the kernels trust them.
std::string check_packed(const SpmmConvWeights& w, int32_t entries) {
  if (w.block != 1 && w.block != 2 && w.block != 4) return "argument 'block' must be 1, 2 or 4";
  if (w.c_out < 1 || w.c_in < 1) return "arguments 'c_out' and 'c_in' must be >= 1";
  const int64_t nb = spmm_conv_blocks(w);
  if (w.offsets[0] != 0) return "argument 'offsets' must start at 0";
  for (int64_t b = 0; b < nb; ++b) {
    if (w.nnz[b] < 0 || w.nnz[b] > w.c_in || w.offsets[b + 1] - w.offsets[b] != w.nnz[b])
      return "argument 'offsets' must be the prefix sums of 'nnz'; block " + std::to_string(b) + " disagrees";
    int64_t k = 0;
    for (int64_t e = w.offsets[b]; e < w.offsets[b + 1]; ++e) {
      if (e >= entries) return "argument 'idx_delta' is shorter than offsets[-1]";
      k = (e == w.offsets[b] ? 0 : k) + w.idx_delta[e];
      if (k < 0 || k >= w.c_in)
        return "argument 'idx_delta' walks to input channel " + std::to_string(k) + " in block " + std::to_string(b) +
               ", outside [0, c_in)";
    }
  }
  if (w.offsets[nb] != entries) return "argument 'idx_delta' must have offsets[-1] entries";
  return "";
}
}  // namespace

SF_EXPORT(sf_spmm_conv)(const float* x, const int32_t* nnz, const int32_t* offsets, const int32_t* idx_delta,
                        int32_t entries, const float* values, const float* bias, float* y, int32_t c_out,
                        int32_t c_in, int32_t block, int32_t n, int32_t hw, float out_min, float out_max) {
  SpmmConvWeights w;
  w.c_out = c_out;
  w.c_in = c_in;
  w.block = block;
  w.nnz = nnz;
  w.offsets = offsets;
  w.idx_delta = idx_delta;
  w.values = values;
  w.bias = bias;
  w.out_min = out_min;
  w.out_max = out_max;
  // A resident weight (the host's plan) was checked when it was copied in: entries < 0 skips the walk.
  if (entries >= 0) {
    const std::string err = check_packed(w, entries);
    if (!err.empty()) return wasm::fail("spmm_conv(): " + err);
  }
  if (!(out_min <= out_max)) return wasm::fail("spmm_conv(): argument 'out_min' must be <= out_max (and neither NaN)");
  spmm_conv_f32(w, x, y, n, hw);
  return 0;
}
