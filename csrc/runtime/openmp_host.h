// parallel_for's second host: the OpenMP team of a runtime already loaded in the process (see the .cc).
#pragma once

namespace sparseforge {

// Runs fn(data) on `threads` threads of the loaded OpenMP runtime (the caller is one of them) and
// returns true; returns false, running nothing, when parallel_for should use its own pool instead:
// SPARSEFORGE_THREADING=pool, no OpenMP runtime loaded, or already inside an OpenMP parallel region.
bool openmp_host_run(void (*fn)(void*), void* data, int threads);

}  // namespace sparseforge
