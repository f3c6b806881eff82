// Memory write bandwidth of this machine, ordinary and non-temporal stores, one and two threads: the
// ceiling under spgemm's two-thread speed-up on products whose C is larger than the caches (its rows
// go out with non-temporal stores, csrc/kernels/spgemm/spgemm_stream.h).
//
//     g++ -O2 -mavx2 -pthread benchmarks/write_bandwidth.cc -o /tmp/write_bandwidth && /tmp/write_bandwidth [MB]
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace {

// Median seconds of 15 writes of `bytes` (a 64-byte-aligned buffer written before, so no page faults).
double time_writes(char* dst, size_t bytes, bool nt) {
  const __m256i v = _mm256_set1_epi8(7);
  std::vector<double> ts;
  for (int it = 0; it < 15; ++it) {
    const auto t0 = std::chrono::steady_clock::now();
    for (size_t o = 0; o + 64 <= bytes; o += 64) {
      __m256i* d = reinterpret_cast<__m256i*>(dst + o);
      if (nt) {
        _mm256_stream_si256(d, v);
        _mm256_stream_si256(d + 1, v);
      } else {
        _mm256_store_si256(d, v);
        _mm256_store_si256(d + 1, v);
      }
    }
    _mm_sfence();
    ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const size_t bytes = static_cast<size_t>(argc > 1 ? std::atoi(argv[1]) : 120) << 20;
  for (const bool nt : {false, true}) {
    for (const int threads : {1, 2}) {
      std::vector<char*> bufs;
      for (int t = 0; t < threads; ++t) {
        bufs.push_back(static_cast<char*>(std::aligned_alloc(64, bytes)));
        std::memset(bufs.back(), 1, bytes);
      }
      std::vector<double> secs(threads);
      std::vector<std::thread> pool;
      for (int t = 0; t < threads; ++t) pool.emplace_back([&, t] { secs[t] = time_writes(bufs[t], bytes, nt); });
      for (std::thread& th : pool) th.join();
      double total = 0;
      for (int t = 0; t < threads; ++t) total += bytes / secs[t] / 1e9;
      std::printf("%-12s %d thread%s: %5.1f GB/s in all (%zu MB each)\n", nt ? "non-temporal" : "ordinary", threads,
                  threads > 1 ? "s" : " ", total, bytes >> 20);
      for (char* b : bufs) std::free(b);
    }
  }
}
