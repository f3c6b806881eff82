#include <pybind11/numpy.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/spmm_conv/spmm_conv.h"
#include "op_registry.h"
#include "validate.h"

namespace py = pybind11;
using namespace sparseforge;

namespace {

[[noreturn]] void bad(const std::string& arg, const std::string& msg) {
  throw py::value_error("spmm_conv(): argument '" + arg + "' " + msg);
}

// Checks the packed arrays against each other (O(nnz)) and returns the kernel's view of them.
SpmmConvWeights check_packed(py::handle nnz_obj, py::handle offsets_obj, py::handle idx_obj, py::handle values_obj,
                             int64_t c_out, int64_t c_in, int block) {
  const char* fn = "spmm_conv";
  py::array nnz = bind::require_array<int32_t>(fn, "nnz", nnz_obj, 1);
  py::array offsets = bind::require_array<int32_t>(fn, "offsets", offsets_obj, 1);
  py::array idx = bind::require_array<int32_t>(fn, "idx_delta", idx_obj, 1);
  py::array values = bind::require_array<float>(fn, "values", values_obj, 1);
  if (block != 1 && block != 2 && block != 4) bad("block", "must be 1, 2 or 4, got " + std::to_string(block));
  if (c_out < 1) bad("c_out", "must be >= 1, got " + std::to_string(c_out));
  if (c_in < 1) bad("c_in", "must be >= 1, got " + std::to_string(c_in));
  const int64_t nb = (c_out + block - 1) / block;
  if (nnz.shape(0) != nb) bad("nnz", "must have ceil(c_out / block) = " + std::to_string(nb) + " entries, got " + std::to_string(nnz.shape(0)));
  if (offsets.shape(0) != nb + 1) bad("offsets", "must have " + std::to_string(nb + 1) + " entries, got " + std::to_string(offsets.shape(0)));
  const int32_t* pn = static_cast<const int32_t*>(nnz.data());
  const int32_t* po = static_cast<const int32_t*>(offsets.data());
  const int32_t* pi = static_cast<const int32_t*>(idx.data());
  if (po[0] != 0) bad("offsets", "must start at 0");
  for (int64_t b = 0; b < nb; ++b)
    if (pn[b] < 0 || pn[b] > c_in || po[b + 1] - po[b] != pn[b])
      bad("offsets", "must be the prefix sums of 'nnz' (each count in [0, c_in]); block " + std::to_string(b) + " disagrees");
  const int64_t total = po[nb];
  if (idx.shape(0) != total) bad("idx_delta", "must have offsets[-1] = " + std::to_string(total) + " entries, got " + std::to_string(idx.shape(0)));
  if (values.shape(0) != total * block)
    bad("values", "must have offsets[-1] * block = " + std::to_string(total * block) + " entries, got " + std::to_string(values.shape(0)));
  // Every index must land inside x: the kernels trust them (O(nnz), against O(nnz * hw) of work).
  for (int64_t b = 0; b < nb; ++b) {
    int64_t k = 0;
    for (int64_t e = po[b]; e < po[b + 1]; ++e) {
      k = (e == po[b] ? 0 : k) + pi[e];
      if (k < 0 || k >= c_in) bad("idx_delta", "walks to input channel " + std::to_string(k) + " in block " + std::to_string(b) + ", outside [0, c_in)");
    }
  }
  SpmmConvWeights w;
  w.c_out = c_out;
  w.c_in = c_in;
  w.block = block;
  w.nnz = pn;
  w.offsets = po;
  w.idx_delta = pi;
  w.values = static_cast<const float*>(values.data());
  return w;
}

// y[n, c_out, hw] = clamp(bias + W @ x[n, c_in, hw], out_min, out_max) with w already checked.
py::array run_checked(SpmmConvWeights w, py::handle x_obj, py::handle bias_obj, double out_min, double out_max,
                      py::handle out_obj) {
  const char* fn = "spmm_conv";
  const int64_t c_out = w.c_out, c_in = w.c_in;
  py::array x = bind::require_array<float>(fn, "x", x_obj, 3);
  if (x.shape(1) != c_in)
    bad("x", "has " + std::to_string(x.shape(1)) + " input channels (shape " + bind::shape_str(x) +
                 "), the packed weight has c_in=" + std::to_string(c_in));
  const float* bias = nullptr;
  if (!bias_obj.is_none()) {
    py::array b = bind::require_array<float>(fn, "bias", bias_obj, 1);
    if (b.shape(0) != c_out) bad("bias", "must have c_out = " + std::to_string(c_out) + " entries, got shape " + bind::shape_str(b));
    bias = static_cast<const float*>(b.data());
  }
  if (std::isnan(out_min) || std::isnan(out_max) || out_min > out_max) bad("out_min", "must be <= out_max (and neither NaN)");
  const int64_t n = x.shape(0), hw = x.shape(2);
  py::array y;
  if (out_obj.is_none()) {
    y = py::array_t<float>({n, c_out, hw});
  } else {
    y = bind::require_array<float>(fn, "out", out_obj, 3, /*writable=*/true);
    if (y.shape(0) != n || y.shape(1) != c_out || y.shape(2) != hw)
      bad("out", "must have shape (" + std::to_string(n) + ", " + std::to_string(c_out) + ", " + std::to_string(hw) + "), got " + bind::shape_str(y));
  }
  w.bias = bias;
  w.out_min = static_cast<float>(out_min);
  w.out_max = static_cast<float>(out_max);
  const float* px = static_cast<const float*>(x.data());
  float* py_ = static_cast<float*>(y.mutable_data());
  {
    py::gil_scoped_release release;
    spmm_conv_f32(w, px, py_, n, hw);
  }
  return y;
}

py::array spmm_conv(py::handle x_obj, py::handle nnz_obj, py::handle offsets_obj, py::handle idx_obj,
                    py::handle values_obj, int64_t c_out, int64_t c_in, int block, py::handle bias_obj,
                    double out_min, double out_max, py::handle out_obj) {
  SpmmConvWeights w = check_packed(nnz_obj, offsets_obj, idx_obj, values_obj, c_out, c_in, block);
  return run_checked(w, x_obj, bias_obj, out_min, out_max, out_obj);
}

// The packed weight checked once and copied into memory it owns, so a call checks only x / bias / out:
// the O(nnz) index walk is paid at export time, not on every call (it costs as much as the kernel
// itself at 7x7 maps). This is the explicit packing step, not a silent copy.
class SpmmConvPlan {
 public:
  SpmmConvPlan(py::handle nnz, py::handle offsets, py::handle idx, py::handle values, int64_t c_out, int64_t c_in,
               int block) {
    SpmmConvWeights v = check_packed(nnz, offsets, idx, values, c_out, c_in, block);
    const int64_t nb = (c_out + block - 1) / block, total = v.offsets[nb];
    nnz_.assign(v.nnz, v.nnz + nb);
    offsets_.assign(v.offsets, v.offsets + nb + 1);
    idx_.assign(v.idx_delta, v.idx_delta + total);
    values_.assign(v.values, v.values + total * block);
    w_ = v;
    w_.nnz = nnz_.data();
    w_.offsets = offsets_.data();
    w_.idx_delta = idx_.data();
    w_.values = values_.data();
    panels_ = spmm_conv_panel_index(w_);
    panels_.attach(&w_);
  }
  py::array run(py::handle x, py::handle bias, double out_min, double out_max, py::handle out) const {
    return run_checked(w_, x, bias, out_min, out_max, out);
  }
  const SpmmConvWeights& weights() const { return w_; }

 private:
  std::vector<int32_t> nnz_, offsets_, idx_;
  std::vector<float> values_;
  SpmmConvPanelIndex panels_;
  SpmmConvWeights w_;
};

}  // namespace

SPARSEFORGE_BIND_OP(
    spmm_conv,
    [](py::module_& mod) {
      const double inf = INFINITY;
      mod.def("spmm_conv", &spmm_conv, py::arg("x"), py::arg("nnz"), py::arg("offsets"), py::arg("idx_delta"),
              py::arg("values"), py::arg("c_out"), py::arg("c_in"), py::arg("block"), py::arg("bias") = py::none(),
              py::arg("out_min") = -inf, py::arg("out_max") = inf, py::arg("out") = py::none(),
              "Sparse 1x1 convolution over CHW activations: y = clamp(bias + W @ x, out_min, out_max).\n\n"
              "x: float32 [n, c_in, hw]; W packed in blocks of `block` output channels (1, 2, 4): nnz int32\n"
              "[ceil(c_out/block)], offsets int32 (prefix sums), idx_delta int32 (input-channel deltas, the\n"
              "first of each block absolute), values float32 [total*block]. Returns (or fills `out`)\n"
              "float32 [n, c_out, hw].");
      py::class_<SpmmConvPlan>(mod, "SpmmConvPlan",
                               "A packed sparse 1x1-conv weight checked once and owned by the core; run() then "
                               "checks only x, bias and out.")
          .def(py::init<py::handle, py::handle, py::handle, py::handle, int64_t, int64_t, int>(), py::arg("nnz"),
               py::arg("offsets"), py::arg("idx_delta"), py::arg("values"), py::arg("c_out"), py::arg("c_in"),
               py::arg("block"))
          .def("run", &SpmmConvPlan::run, py::arg("x"), py::arg("bias") = py::none(), py::arg("out_min") = -inf,
               py::arg("out_max") = inf, py::arg("out") = py::none(), "Same as spmm_conv(x, <this weight>, ...).")
          .def_property_readonly("c_out", [](const SpmmConvPlan& p) { return p.weights().c_out; })
          .def_property_readonly("c_in", [](const SpmmConvPlan& p) { return p.weights().c_in; })
          .def_property_readonly("block", [](const SpmmConvPlan& p) { return p.weights().block; });
    },
    [] { return kernel_name("spmm_conv", "f32", select_spmm_conv(active_isa()).isa); });
