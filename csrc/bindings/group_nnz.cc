#include <pybind11/numpy.h>

#include "kernels/group_nnz/group_nnz.h"
#include "op_registry.h"
#include "validate.h"

namespace py = pybind11;
using namespace sparseforge;

namespace {

py::array_t<int32_t> group_nnz(py::handle w_obj, int m) {
  py::array w = bind::require_array<float>("group_nnz", "w", w_obj, 2);
  if (m < 1 || m > 64) throw py::value_error("group_nnz(): argument 'm' must be in [1, 64], got " + std::to_string(m));
  const int64_t rows = w.shape(0), cols = w.shape(1);
  if (cols % m != 0)
    throw py::value_error("group_nnz(): argument 'w' has " + std::to_string(cols) +
                          " columns, which is not a multiple of m=" + std::to_string(m));
  py::array_t<int32_t> out({rows, cols / m});
  const float* src = static_cast<const float*>(w.data());
  int32_t* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    group_nnz_f32(src, rows, cols, cols, m, dst);
  }
  return out;
}

}  // namespace

SPARSEFORGE_BIND_OP(
    group_nnz,
    [](py::module_& mod) {
      mod.def("group_nnz", &group_nnz, py::arg("w"), py::arg("m"),
              "Nonzero count per group of m consecutive values along each row.\n\n"
              "w: float32 [rows, cols], C-contiguous, cols % m == 0. Returns int32 [rows, cols // m].");
    },
    [] { return kernel_name("group_nnz", "f32", select_group_nnz(active_isa()).isa); });
