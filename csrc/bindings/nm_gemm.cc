#include <pybind11/numpy.h>

#include "kernels/nm_gemm/nm_gemm.h"
#include "op_registry.h"
#include "validate.h"

namespace py = pybind11;
using namespace sparseforge;

namespace {

std::string dims(int64_t a, int64_t b) { return "(" + std::to_string(a) + ", " + std::to_string(b) + ")"; }

py::array nm_gemm(py::handle x_obj, py::handle values_obj, py::handle meta_obj, int n, int m, int64_t k,
                  py::handle bias_obj, py::handle out_obj, const std::string& values_format) {
  const char* fn = "nm_gemm";
  if (m < 2 || m > 64) throw py::value_error("nm_gemm(): argument 'm' must be in [2, 64], got " + std::to_string(m));
  if (n < 1 || n > m)
    throw py::value_error("nm_gemm(): argument 'n' must be in [1, m=" + std::to_string(m) + "], got " + std::to_string(n));
  if (k < 0 || k % m != 0)
    throw py::value_error("nm_gemm(): argument 'k' (" + std::to_string(k) + ") must be a non-negative multiple of m=" +
                          std::to_string(m));
  py::array x = bind::require_array<float>(fn, "x", x_obj, 2);
  const bool bf16 = values_format == "bf16";
  if (!bf16 && values_format != "f32")
    throw py::value_error("nm_gemm(): argument 'values_format' must be 'f32' or 'bf16', got '" + values_format + "'");
  // bf16 values travel as their raw uint16 bits (numpy has no bfloat16): the caller says so explicitly.
  py::array values = bf16 ? bind::require_array<uint16_t>(fn, "values", values_obj, 2)
                          : bind::require_array<float>(fn, "values", values_obj, 2);
  py::array meta = bind::require_array<uint8_t>(fn, "meta", meta_obj, 2);
  const int64_t batch = x.shape(0), rows = values.shape(0);
  const int64_t nnz = k / m * n, mrow = nm_meta_row_bytes(k, n, m);
  if (x.shape(1) != k)
    throw py::value_error("nm_gemm(): argument 'x' has shape " + bind::shape_str(x) + ", expected (batch, k=" +
                          std::to_string(k) + ")");
  if (values.shape(1) != nnz)
    throw py::value_error("nm_gemm(): argument 'values' has shape " + bind::shape_str(values) + ", expected " +
                          dims(rows, nnz) + " for k=" + std::to_string(k) + " at " + std::to_string(n) + ":" +
                          std::to_string(m));
  if (meta.shape(0) != rows || meta.shape(1) != mrow)
    throw py::value_error("nm_gemm(): argument 'meta' has shape " + bind::shape_str(meta) + ", expected " +
                          dims(rows, mrow));
  const float* bias = nullptr;
  if (!bias_obj.is_none()) {
    py::array b = bind::require_array<float>(fn, "bias", bias_obj, 1);
    if (b.shape(0) != rows)
      throw py::value_error("nm_gemm(): argument 'bias' has shape " + bind::shape_str(b) + ", expected (" +
                            std::to_string(rows) + ",)");
    bias = static_cast<const float*>(b.data());
  }
  py::array out;
  if (out_obj.is_none()) {
    out = py::array_t<float>({batch, rows});
  } else {
    out = bind::require_array<float>(fn, "out", out_obj, 2, /*writable=*/true);
    if (out.shape(0) != batch || out.shape(1) != rows)
      throw py::value_error("nm_gemm(): argument 'out' has shape " + bind::shape_str(out) + ", expected " +
                            dims(batch, rows));
  }
  NmGemmArgs a;
  a.x = static_cast<const float*>(x.data());
  a.ldx = k;
  a.values = bf16 ? nullptr : static_cast<const float*>(values.data());
  a.values_bf16 = bf16 ? static_cast<const uint16_t*>(values.data()) : nullptr;
  a.meta = static_cast<const uint8_t*>(meta.data());
  a.bias = bias;
  a.y = static_cast<float*>(out.mutable_data());
  a.ldy = rows;
  a.batch = batch;
  a.rows = rows;
  a.k = k;
  a.n = n;
  a.m = m;
  {
    py::gil_scoped_release release;
    if (k == 0) {
      for (int64_t b = 0; b < batch; ++b)
        for (int64_t r = 0; r < rows; ++r) a.y[b * rows + r] = bias ? bias[r] : 0.0f;
    } else {
      nm_gemm_f32(a);
    }
  }
  return out;
}

}  // namespace

SPARSEFORGE_BIND_OP(
    nm_gemm,
    [](py::module_& mod) {
      mod.def("nm_gemm", &nm_gemm, py::arg("x"), py::arg("values"), py::arg("meta"), py::arg("n"), py::arg("m"),
              py::arg("k"), py::arg("bias") = py::none(), py::arg("out") = py::none(), py::arg("values_format") = "f32",
              "Y = X @ W.T (+ bias) with W stored N:M sparse along K (sparseforge.formats.NMSparse layout).\n\n"
              "x: float32 [batch, k]; values: float32 [rows, k // m * n]; meta: uint8 [rows, ceil(k // m * n * "
              "bits / 8)] with bits = ceil(log2 m) per kept value, LSB first; bias: float32 [rows] or None;\n"
              "out: float32 [batch, rows] to write into, or None. All C-contiguous; nothing is copied or cast.\n"
              "values_format='bf16': values are bfloat16 bits as uint16 (torch: values.view(torch.uint16).numpy()); "
              "accumulation stays fp32.");
      mod.def("nm_gemm_variant", [](int64_t batch, int n, int m) {
        return std::string(select_nm_gemm(active_isa(), batch, n, m).variant);
      }, py::arg("batch"), py::arg("n"), py::arg("m"), "Which code path nm_gemm takes now for this batch and pattern.");
    },
    [] { return kernel_name("nm_gemm", "f32", select_nm_gemm(active_isa(), 1, 2, 4).isa); });
