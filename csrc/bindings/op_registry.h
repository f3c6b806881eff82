// Each op binds itself from its own file in csrc/bindings/, so adding an op touches no shared file:
//
//   SPARSEFORGE_BIND_OP(nm_gemm, [](py::module_& m) { m.def(...); },
//                       [] { return kernel_name("nm_gemm", "f32", chosen_isa()); });
//
// The first callable adds the op's functions to sparseforge._C; the second names the kernel that
// the op dispatches to now (for _C.kernel_for and sparseforge.info()).
#pragma once

#include <pybind11/pybind11.h>

#include <functional>
#include <map>
#include <string>

namespace sparseforge::bind {

namespace py = pybind11;

struct OpBinding {
  std::function<void(py::module_&)> define;
  std::function<std::string()> kernel;
};

inline std::map<std::string, OpBinding>& op_bindings() {
  static std::map<std::string, OpBinding> ops;  // function-local: safe from static-init order
  return ops;
}

struct OpRegistrar {
  OpRegistrar(const char* name, std::function<void(py::module_&)> define, std::function<std::string()> kernel) {
    op_bindings()[name] = OpBinding{std::move(define), std::move(kernel)};
  }
};

}  // namespace sparseforge::bind

#define SPARSEFORGE_BIND_OP(op, define, kernel) \
  static ::sparseforge::bind::OpRegistrar sparseforge_bind_##op##_registrar(#op, define, kernel)
