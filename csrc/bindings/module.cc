// The torch-free extension sparseforge._C: run-time facts and the kernel entry points.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>

#include "op_registry.h"
#include "sparseforge/common.h"
#include "sparseforge/threading.h"
#include "validate.h"

namespace py = pybind11;
using namespace sparseforge;

namespace {

std::vector<std::string> names(const std::vector<Isa>& v) {
  std::vector<std::string> out;
  for (Isa i : v) out.push_back(isa_name(i));
  return out;
}

// Every op's kernel choice is queryable by op name.
std::string kernel_for(const std::string& op) {
  auto& ops = bind::op_bindings();
  auto it = ops.find(op);
  if (it == ops.end()) {
    std::string known;
    for (auto& kv : ops) known += (known.empty() ? "" : ", ") + kv.first;
    throw py::value_error("kernel_for(): argument 'op' is '" + op + "', which is not a compiled op; expected one of: " + known);
  }
  return it->second.kernel();
}

}  // namespace

PYBIND11_MODULE(_C, mod) {
  mod.doc() = "sparseforge compiled core (torch-free). Kernels take numpy arrays and never copy or cast them.";

  mod.def("isa", [] { return std::string(isa_name(active_isa())); },
          "ISA the kernels run with now (SPARSEFORGE_ISA when set, else the best this CPU supports).");
  mod.def("best_isa", [] { return std::string(isa_name(best_isa())); });
  mod.def("compiled_isas", [] { return names(compiled_isas()); }, "ISA variants compiled into this build.");
  mod.def("supported_isas", [] { return names(supported_isas()); }, "Compiled ISA variants this CPU can run.");
  mod.def("cpu_features", [] {
    const CpuFeatures& f = cpu_features();
    py::dict d;
    d["avx2"] = f.avx2;
    d["fma"] = f.fma;
    d["f16c"] = f.f16c;
    d["avx512f"] = f.avx512f;
    d["avx512bw"] = f.avx512bw;
    d["avx512vl"] = f.avx512vl;
    d["avx512dq"] = f.avx512dq;
    d["neon"] = f.neon;
    return d;
  });
  mod.def("kernel_for", &kernel_for, py::arg("op"), "Name of the kernel `op` dispatches to now, e.g. group_nnz_f32__avx2.");
  mod.def("num_threads", &num_threads);
  mod.def("threading_backend", &threading_backend,
          "Where parallel kernels run their threads: 'openmp' (the process's OpenMP team, e.g. torch's) or 'pool'.");
  mod.def("openmp_runtime", &openmp_host_name, "Path of the loaded OpenMP runtime kernels share, '' if none.");
  mod.def("set_num_threads", [](int n) {
    if (n < 0) throw py::value_error("set_num_threads(): argument 'n' must be >= 0 (0 restores the default), got " + std::to_string(n));
    set_num_threads(n);
  }, py::arg("n"));
  mod.def("build_info", [] {
    py::dict d;
#if defined(__VERSION__)
    d["compiler"] = std::string(__VERSION__);
#endif
    d["cuda"] = false;
    return d;
  });
  mod.def("ops", [] {
    std::vector<std::string> out;
    for (auto& kv : bind::op_bindings()) out.push_back(kv.first);
    return out;
  }, "Names of the compiled ops.");
  for (auto& kv : bind::op_bindings()) kv.second.define(mod);

  // C++ exceptions that carry user mistakes map to Python's ValueError rather than RuntimeError.
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const std::invalid_argument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });
}
