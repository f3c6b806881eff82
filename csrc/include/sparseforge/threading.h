// Thread count and a static-partition parallel loop shared by all CPU kernels.
#pragma once

#include <cstdint>
#include <functional>

namespace sparseforge {

// Threads kernels use: set_num_threads(), else SPARSEFORGE_NUM_THREADS, else the hardware count.
int num_threads();
void set_num_threads(int n);  // n >= 1; 0 restores the default

// Calls fn(begin, end) over [0, n) split into contiguous chunks of at least `grain` items, on at most
// num_threads() threads at once (a persistent pool; chunks are claimed dynamically, up to 4 per thread,
// so a preempted thread does not stall the call). Runs inline when one chunk suffices, so tiny problems
// pay no hand-off, and inline when called from inside another parallel_for. Safe to call concurrently.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace sparseforge
