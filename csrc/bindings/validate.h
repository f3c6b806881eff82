// Argument checks shared by every binding. Kernels take raw pointers, so everything a pointer cannot
// say (type, dtype, rank, layout) is checked here, and nothing is ever converted or copied behind the
// caller's back: a wrong array raises an error that names the argument and says what was expected.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

namespace sparseforge::bind {

namespace py = pybind11;

inline std::string type_name(py::handle obj) {
  py::handle t = py::type::handle_of(obj);
  return py::str(t.attr("__module__")).cast<std::string>() + "." + py::str(t.attr("__qualname__")).cast<std::string>();
}

inline std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// Returns obj as an ndarray of dtype T with `ndim` dimensions, C-contiguous; raises otherwise.
template <typename T>
py::array require_array(const char* fn, const char* arg, py::handle obj, int ndim, bool writable = false) {
  // The messages are built only on failure: this runs on every kernel call, where a few string
  // allocations are a visible share of a small call's ~5 us.
  auto where = [&] { return std::string(fn) + "(): argument '" + arg + "'"; };
  auto want = [] {
    const std::string f = py::format_descriptor<T>::format();
    return f == "f" ? "float32" : f == "d" ? "float64" : f == "i" ? "int32" : f == "l" ? "int64"
         : f == "B" ? "uint8" : f == "H" ? "uint16" : "the expected dtype";
  };
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(where() + " must be a numpy.ndarray of " + want() + ", got " + type_name(obj) +
                         " (for a torch tensor pass tensor.numpy())");
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(py::dtype::of<T>()))
    throw py::type_error(where() + " must have dtype " + want() + ", got " +
                         py::str(a.dtype()).cast<std::string>() + "; convert it explicitly, nothing is cast silently");
  if (a.ndim() != ndim)
    throw py::value_error(where() + " must be " + std::to_string(ndim) + "-D, got shape " + shape_str(a));
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(where() + " must be C-contiguous (row-major); got strides that are not, so call "
                          "numpy.ascontiguousarray() on it first: nothing is copied silently");
  if (writable && !a.writeable()) throw py::value_error(where() + " must be writable");
  return a;
}

}  // namespace sparseforge::bind
