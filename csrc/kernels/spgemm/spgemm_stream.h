// Non-temporal output for the first pass of a large product (StreamOut). Rows of C written in place with
// ordinary stores cost a read of every line before it is written (C is fresh memory) and push A and B out
// of the caches as C streams through them: on Erdős–Rényi (30 MB of C), writing the rows to a small buffer
// that stays in cache instead of to C took the product from 11.3 to 9.1 ms. So rows are computed into a
// small stage that stays in L1/L2 and written out from there a few thousand entries at a time, whole
// 64-byte lines with non-temporal stores, which neither read the line nor keep it in cache.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "spgemm.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace sparseforge {
namespace {

// Products whose C is estimated past this many bytes stream their rows out (StreamOut): smaller ones
// stay in cache for whoever reads C next.
constexpr int64_t kStreamMinBytes = int64_t{8} << 20;
// SPARSEFORGE_SPGEMM_STREAM: 0 never streams (A/B runs), "all" streams every part written in place from
// its first row whatever its size (tests); otherwise large products do (kStreamMinBytes, StreamGate).
enum class StreamMode { kOff, kAuto, kAll };
inline StreamMode stream_mode() {
  const char* env = std::getenv("SPARSEFORGE_SPGEMM_STREAM");  // read per call: tests switch it
  if (env == nullptr) return StreamMode::kAuto;
  if (env[0] == '0') return StreamMode::kOff;
  return std::strcmp(env, "all") == 0 ? StreamMode::kAll : StreamMode::kAuto;
}

// One 64-byte line from src to dst (both 64-byte aligned), bypassing the caches where the ISA can.
__attribute__((always_inline)) inline void stream_line(void* dst, const void* src) {
#if defined(__AVX512F__)
  _mm512_stream_si512(static_cast<__m512i*>(dst), _mm512_load_si512(src));
#elif defined(__AVX__)
  const __m256i* s = static_cast<const __m256i*>(src);
  __m256i* d = static_cast<__m256i*>(dst);
  _mm256_stream_si256(d, _mm256_load_si256(s));
  _mm256_stream_si256(d + 1, _mm256_load_si256(s + 1));
#elif defined(__SSE2__)
  const __m128i* s = static_cast<const __m128i*>(src);
  __m128i* d = static_cast<__m128i*>(dst);
  for (int q = 0; q < 4; ++q) _mm_stream_si128(d + q, _mm_load_si128(s + q));
#else
  std::memcpy(dst, src, 64);
#endif
}

inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();  // non-temporal stores are weakly ordered: visible before whatever this thread stores next
#endif
}

// Writes src[0, n) to dst[0, n), src and dst at the same offset within a 64-byte line: the whole lines in
// between with non-temporal stores, the partial lines at either end with ordinary ones (another part may
// own the rest of such a line). With all = false the partial line at the end is left; returns how many
// entries were written.
template <typename T>
inline int64_t stream_copy(T* dst, const T* src, int64_t n, bool all) {
  constexpr int64_t kLine = 64 / sizeof(T);
  const int64_t head = std::min<int64_t>(n, ((0 - reinterpret_cast<uintptr_t>(dst)) & 63) / sizeof(T));
  std::memcpy(dst, src, static_cast<size_t>(head) * sizeof(T));
  int64_t k = head;
  for (; k + kLine <= n; k += kLine) stream_line(dst + k, src + k);
  if (!all) return k;
  std::memcpy(dst + k, src + k, static_cast<size_t>(n - k) * sizeof(T));
  return n;
}

// The same for a src at any alignment (a chunk of scratch): lines are loaded unaligned into a line buffer.
template <typename T>
inline void stream_copy_any(T* dst, const T* src, int64_t n) {
  constexpr int64_t kLine = 64 / sizeof(T);
  const int64_t head = std::min<int64_t>(n, ((0 - reinterpret_cast<uintptr_t>(dst)) & 63) / sizeof(T));
  std::memcpy(dst, src, static_cast<size_t>(head) * sizeof(T));
  int64_t k = head;
  alignas(64) T line[kLine];
  for (; k + kLine <= n; k += kLine) {
    std::memcpy(line, src + k, 64);
    stream_line(dst + k, line);
  }
  std::memcpy(dst + k, src + k, static_cast<size_t>(n - k) * sizeof(T));
}

// The stage of one thread: rows of C go here, at the same offset within a line as their place in C, and
// out to C by stream_copy. A row goes in place instead when it does not fit (longer than the stage).
template <typename V, typename I>
class StreamOut {
 public:
  // Entries the stage holds, and how many gather before they are written out (their lines still in L1).
  static constexpr int64_t kCap = 8192, kFlushAt = 2048, kRowMax = 1024;

  StreamOut(I* dj, V* dx) : dj_(dj), dx_(dx) {
    // Kept per thread between calls (2 x ~100 KB): a fresh stage would page-fault on every call.
#if defined(__wasm__)
    static std::vector<char> mem;  // the module is single-threaded, and wasi has no thread-exit hooks
#else
    static thread_local std::vector<char> mem;
#endif
    const size_t bytes_j = (kCap + kPad) * sizeof(I), bytes = bytes_j + (kCap + kPad) * sizeof(V) + 64;
    if (mem.size() < bytes) mem.resize(bytes);
    char* p = mem.data() + ((0 - reinterpret_cast<uintptr_t>(mem.data())) & 63);
    bj_ = reinterpret_cast<I*>(p);
    bx_ = reinterpret_cast<V*>(p + bytes_j);  // bytes_j is a multiple of 64
  }
  StreamOut(const StreamOut&) = delete;
  StreamOut& operator=(const StreamOut&) = delete;
  ~StreamOut() { finish(); }

  // Where a row of at most `bound` entries that belongs at C's entry u goes: true with oj/ox in the
  // stage, or false (everything staged written out) when it is to be written in place.
  bool place(int64_t u, int64_t bound, I** oj, V** ox) {
    if (bound > kRowMax) {
      if (end_ > base_) restart(end_);
      return false;
    }
    if (u != end_) restart(u);  // slots skipped (rows left to the second pass) or a row written in place
    if (u - base_ + bound > kCap) flush(false);
    if (u - base_ + bound > kCap) {
      restart(u);
      if (bound > kCap) return false;
    }
    *oj = sj_ + (u - base_);
    *ox = sx_ + (u - base_);
    return true;
  }
  // Entries a place()d run of rows may fill from u (band runs, which write many rows at once).
  int64_t room(int64_t u) const { return kCap - (u - base_); }
  // The placed row(s) end before C's entry `end`.
  void wrote(int64_t end) {
    end_ = end;
    if (end - base_ >= kFlushAt) flush(false);
  }
  // Writes out everything staged, and orders it before what this thread stores next.
  void finish() {
    restart(end_);
    stream_fence();
  }

 private:
  static constexpr int64_t kPad = 16;  // room for the stage's offset within a line (< 16 entries)

  I* dj_;
  V* dx_;
  I* bj_;
  V* bx_;
  I* sj_ = nullptr;
  V* sx_ = nullptr;
  // The stage holds C's entries [base_, end_); those below hj_ (indices) and hx_ (values) are out already.
  int64_t base_ = -1, end_ = -1, hj_ = -1, hx_ = -1;

  template <typename T>
  static T* at_offset_of(T* buf, const T* dst) {
    return buf + (reinterpret_cast<uintptr_t>(dst) & 63) / sizeof(T);
  }
  // Writes out everything staged and starts an empty stage at C's entry u.
  void restart(int64_t u) {
    if (end_ > base_) {
      stream_copy(dj_ + hj_, sj_ + (hj_ - base_), end_ - hj_, true);
      stream_copy(dx_ + hx_, sx_ + (hx_ - base_), end_ - hx_, true);
    }
    base_ = end_ = hj_ = hx_ = u;
    if (u < 0) return;
    sj_ = at_offset_of(bj_, dj_ + u);
    sx_ = at_offset_of(bx_, dx_ + u);
  }
  // Writes out the whole lines staged (all = true: everything) and moves what is left (less than a line)
  // to the front of the stage.
  void flush(bool all) {
    if (all) return restart(end_);
    hj_ += stream_copy(dj_ + hj_, sj_ + (hj_ - base_), end_ - hj_, false);
    hx_ += stream_copy(dx_ + hx_, sx_ + (hx_ - base_), end_ - hx_, false);
    const int64_t nb = std::min(hj_, hx_);
    I* nj = at_offset_of(bj_, dj_ + nb);
    V* nx = at_offset_of(bx_, dx_ + nb);
    std::memmove(nj, sj_ + (nb - base_), static_cast<size_t>(end_ - nb) * sizeof(I));
    std::memmove(nx, sx_ + (nb - base_), static_cast<size_t>(end_ - nb) * sizeof(V));
    sj_ = nj, sx_ = nx, base_ = nb;
  }
};

// Whether a part's rows go out through a stage: decided once 1/32 of its `rows` rows are done, by
// projecting the entries it wrote for them to all its rows. The estimate that made the part a candidate
// (nnz(A) times B's mean row, the products) is far above nnz(C) where rows of B overlap: 7x on FEM
// elasticity, 8-13x on pyamg's bar and DG, whose small C is better left in cache for its reader.
template <typename V, typename I>
class StreamGate {
 public:
  StreamGate(int64_t start, int64_t rows, bool all) : start(start), rows_(rows), state_(all ? 1 : -1) {}
  const int64_t start;  // the part's first row (the lower half of a two-thread call: its last)
  int64_t probe() const { return state_ == 1 ? 0 : std::max<int64_t>(1, rows_ / 32); }
  // Whether to stream, given `done` rows have written part->used entries (undecided: no).
  bool on(int64_t done, const SpgemmPart<V, I>* part) {
    if (state_ < 0 && done >= probe())
      state_ = static_cast<double>(part->used) * static_cast<double>(rows_) / static_cast<double>(done) *
                       static_cast<double>(sizeof(I) + sizeof(V)) >=
                   static_cast<double>(kStreamMinBytes);
    return state_ == 1;
  }
  // The stage for a forward part's rows in place, or nullptr.
  StreamOut<V, I>* stage(int64_t done, const SpgemmPart<V, I>* part) {
    if (!on(done, part)) return nullptr;
    if (!so_) so_.reset(new StreamOut<V, I>(part->direct_j, part->direct_x));
    return so_.get();
  }

 private:
  int64_t rows_;
  int state_;  // -1 undecided, 0 no, 1 yes
  std::unique_ptr<StreamOut<V, I>> so_;
};

}  // namespace
}  // namespace sparseforge
