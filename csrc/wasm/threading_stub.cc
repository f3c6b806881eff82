// threading.h for the wasm32 module, in place of runtime/threading.cc + openmp_host.cc: the module is
// single-threaded (wasm32-wasi without the threads proposal, and wasmtime-py runs one instance on the
// calling thread), so there is no pool to start and parallel_for runs its body inline, in one chunk.
// Kernels keep calling parallel_for unchanged; their dispatch code is shared with the native build.
#include "sparseforge/threading.h"

namespace sparseforge {

int num_threads() { return 1; }
void set_num_threads(int) {}

void parallel_for(int64_t n, int64_t, const std::function<void(int64_t, int64_t)>& fn) {
  if (n > 0) fn(0, n);
}

std::string threading_backend() { return "none (wasm32, single-threaded)"; }
std::string openmp_host_name() { return ""; }

}  // namespace sparseforge
