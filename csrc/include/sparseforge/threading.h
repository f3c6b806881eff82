// Thread count and a static-partition parallel loop shared by all CPU kernels.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace sparseforge {

// Threads kernels use: set_num_threads(), else SPARSEFORGE_NUM_THREADS, else the hardware count.
int num_threads();
void set_num_threads(int n);  // n >= 1; 0 restores the default

// Calls fn(begin, end) over [0, n) split into contiguous chunks of at least `grain` items, on at most
// num_threads() threads at once (a persistent pool; chunks are claimed dynamically, up to 4 per thread,
// so a preempted thread does not stall the call). Runs inline when one chunk suffices, so tiny problems
// pay no hand-off, and inline when called from inside another parallel_for. Safe to call concurrently.
//
// The threads are the OpenMP team of a runtime already loaded in the process (torch's libgomp) when
// there is one, else sparseforge's own pool; SPARSEFORGE_THREADING=pool|openmp|auto forces the choice.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

std::string threading_backend();  // what the next parallel_for uses: "openmp" or "pool"
std::string openmp_host_name();   // path of the OpenMP runtime parallel_for would use, "" if none

}  // namespace sparseforge
