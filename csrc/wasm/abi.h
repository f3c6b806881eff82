// The C ABI of sparseforge.wasm (wasm32-wasi reactor). Every op export is a plain extern "C" function of
// linear-memory pointers and sizes that returns 0, or a negative code after storing a message that
// sf_last_error() returns. The host (python/sparseforge/backends/wasm.py) checks dtypes and shapes
// before it copies anything in; the checks here cover what it cannot see cheaply from outside
// (packed indices in range, canonical CSR), so a bad input is an error, never an out-of-bounds read.
//
// Adding an op: one file csrc/wasm/<op>.cc with its SF_EXPORT functions; scripts/build_wasm.py picks up
// every .cc here and the op's kernel folder (reference.cc, dispatch.cc, wasm_simd.cc).
#pragma once

#include <cstdint>
#include <string>

#define SF_EXPORT(name) extern "C" __attribute__((export_name(#name))) int32_t name

namespace sparseforge::wasm {

// Stores msg for sf_last_error() and returns -1 (the export's return value).
int32_t fail(const std::string& msg);

}  // namespace sparseforge::wasm
