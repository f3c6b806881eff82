#include "group_nnz.h"

namespace sparseforge {

void group_nnz_f32_scalar(const float* w, int64_t rows, int64_t cols, int64_t ld, int m, int32_t* out) {
  const int64_t groups = cols / m;
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = w + r * ld;
    int32_t* o = out + r * groups;
    for (int64_t g = 0; g < groups; ++g) {
      int32_t c = 0;
      for (int j = 0; j < m; ++j) c += row[g * m + j] != 0.0f;
      o[g] = c;
    }
  }
}

}  // namespace sparseforge
