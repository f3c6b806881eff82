// Compiled with -mavx2 -mfma; reached only when the CPU has them (see dispatch.cc).
#include <immintrin.h>

#include <cstring>
#include <vector>

#include "group_nnz.h"

namespace sparseforge {

namespace {
// Counts set bits of `bits` in [begin, begin + len) (len <= 64 bits may span two words).
inline int32_t count_range(const uint64_t* bits, int64_t begin, int len) {
  int64_t word = begin >> 6;
  int shift = static_cast<int>(begin & 63);
  uint64_t lo = bits[word] >> shift;
  if (shift + len > 64) lo |= bits[word + 1] << (64 - shift);
  uint64_t mask = len == 64 ? ~0ull : ((1ull << len) - 1);
  return static_cast<int32_t>(__builtin_popcountll(lo & mask));
}
}  // namespace

void group_nnz_f32_avx2(const float* w, int64_t rows, int64_t cols, int64_t ld, int m, int32_t* out) {
  const int64_t groups = cols / m;
  // One nonzero bit per element, built 8 at a time with a compare + movemask, then counted per group.
  // This handles any m with the same code and reads the weights exactly once.
  const int64_t words = (cols + 63) / 64 + 1;
  std::vector<uint64_t> bits(static_cast<size_t>(words));
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = w + r * ld;
    std::memset(bits.data(), 0, bits.size() * sizeof(uint64_t));
    int64_t j = 0;
    for (; j + 8 <= cols; j += 8) {
      __m256 v = _mm256_loadu_ps(row + j);
      uint64_t b = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_NEQ_UQ)));
      bits[j >> 6] |= b << (j & 63);
    }
    for (; j < cols; ++j)
      if (row[j] != 0.0f) bits[j >> 6] |= 1ull << (j & 63);
    int32_t* o = out + r * groups;
    if (m == 4) {
      // The common 2:4 / 1:4 case: 16 groups per word with no range arithmetic.
      for (int64_t g = 0; g < groups; ++g) {
        int64_t bit = g * 4;
        o[g] = __builtin_popcountll((bits[bit >> 6] >> (bit & 63)) & 0xFull);
      }
    } else {
      for (int64_t g = 0; g < groups; ++g) o[g] = count_range(bits.data(), g * m, m);
    }
  }
}

}  // namespace sparseforge
