// Module-wide exports: memory for the host to copy arrays into, errors, and the run-time facts the
// host reports (which ISA the kernels run with). Kernels are chosen by the shared dispatch code from
// SPARSEFORGE_ISA in the instance's WASI environment, which the host sets per instance (scalar|wasm).
#include <cstdlib>
#include <cstring>
#include <string>

#include "abi.h"
#include "sparseforge/common.h"

namespace sparseforge::wasm {

namespace {
std::string g_error;
}

int32_t fail(const std::string& msg) {
  g_error = msg;
  return -1;
}

}  // namespace sparseforge::wasm

using namespace sparseforge;

// 16-byte aligned (v128 loads), 0 on failure. The host keeps one growing scratch block, so a kernel call
// costs one export call, not one per array.
extern "C" __attribute__((export_name("sf_malloc"))) void* sf_malloc(uint32_t bytes) {
  return std::aligned_alloc(16, bytes == 0 ? 16u : (bytes + 15u) & ~15u);
}
extern "C" __attribute__((export_name("sf_free"))) void sf_free(void* p) { std::free(p); }

// zig's libc++ for wasm32-wasi is built without exception support, but the code shared with the native
// build keeps its throws (a forced ISA that is not compiled in, a std::vector length error). They become
// traps here, which wasmtime turns into an exception on the host: the host checks its arguments first, so
// a throw reaching this point is a bug, reported, never silent.
extern "C" void* __cxa_allocate_exception(size_t size) { return std::malloc(size); }
extern "C" [[noreturn]] void __cxa_throw(void*, void*, void (*)(void*)) { __builtin_trap(); }

// NUL-terminated message of the last failed call.
extern "C" __attribute__((export_name("sf_last_error"))) const char* sf_last_error() { return wasm::g_error.c_str(); }

// The ISA the kernels run with in this instance: 0 scalar, 3 wasm (SIMD128); Isa's values.
SF_EXPORT(sf_isa)() { return static_cast<int32_t>(active_isa()); }
