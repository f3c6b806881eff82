// Memory bandwidth of this machine, one and two threads: reads, ordinary and non-temporal stores. The
// ceiling under spgemm's two-thread speed-up on products whose inputs and C are larger than the caches
// (C's rows go out with non-temporal stores, csrc/kernels/spgemm/spgemm_stream.h).
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

enum class Op { kRead, kWrite, kStream };

// Median seconds of 15 passes over `bytes` (a 64-byte-aligned buffer written before, so no page faults):
// reads (summed, so the loads are not dropped), ordinary or non-temporal stores.
double time_pass(char* dst, size_t bytes, Op op) {
  if (op == Op::kRead) {
    std::vector<double> ts;
    for (int it = 0; it < 15; ++it) {
      const auto t0 = std::chrono::steady_clock::now();
      __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
      for (size_t o = 0; o + 64 <= bytes; o += 64) {
        const __m256i* s = reinterpret_cast<const __m256i*>(dst + o);
        acc0 = _mm256_add_epi64(acc0, _mm256_load_si256(s));
        acc1 = _mm256_add_epi64(acc1, _mm256_load_si256(s + 1));
      }
      volatile long long sink = _mm256_extract_epi64(_mm256_add_epi64(acc0, acc1), 0);
      (void)sink;
      ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ts.begin(), ts.end());
    return ts[ts.size() / 2];
  }
  const bool nt = op == Op::kStream;
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
  for (const Op op : {Op::kRead, Op::kWrite, Op::kStream}) {
    for (const int threads : {1, 2}) {
      std::vector<char*> bufs;
      for (int t = 0; t < threads; ++t) {
        bufs.push_back(static_cast<char*>(std::aligned_alloc(64, bytes)));
        std::memset(bufs.back(), 1, bytes);
      }
      std::vector<double> secs(threads);
      std::vector<std::thread> pool;
      for (int t = 0; t < threads; ++t) pool.emplace_back([&, t] { secs[t] = time_pass(bufs[t], bytes, op); });
      for (std::thread& th : pool) th.join();
      double total = 0;
      for (int t = 0; t < threads; ++t) total += bytes / secs[t] / 1e9;
      const char* name = op == Op::kRead ? "read" : op == Op::kWrite ? "ordinary" : "non-temporal";
      std::printf("%-12s %d thread%s: %5.1f GB/s in all (%zu MB each)\n", name, threads,
                  threads > 1 ? "s" : " ", total, bytes >> 20);
      for (char* b : bufs) std::free(b);
    }
  }
}
