// Standalone correctness driver for the NEON kernel, built without Python for aarch64:
//   aarch64-linux-gnu-g++ -O2 -static -std=c++17 -DSPARSEFORGE_HAVE_NEON -I csrc/include -I csrc/kernels/spmm_conv \
//     csrc/kernels/spmm_conv/{neon_test_main,reference,neon}.cc -o spmm_neon_test && qemu-aarch64-static ./spmm_neon_test
// Packs random sparse weights (unstructured; 2x1 / 4x1 blocks; a channel with no nonzeros; a fully dense
// channel), runs neon and the scalar reference on odd shapes and checks them against a double-precision
// dense product within a tolerance derived from the magnitudes summed. Prints one line per case and
// "ALL OK" on success; exit status 1 on any mismatch.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "spmm_conv.h"

using namespace sparseforge;

namespace {

struct Packed {
  std::vector<int32_t> nnz, offsets, idx;
  std::vector<float> values;
};

Packed pack(const std::vector<float>& w, int64_t co, int64_t ci, int B) {
  Packed p;
  const int64_t nb = (co + B - 1) / B;
  p.offsets.push_back(0);
  for (int64_t b = 0; b < nb; ++b) {
    int32_t cnt = 0;
    int64_t prev = 0;
    for (int64_t k = 0; k < ci; ++k) {
      bool any = false;
      for (int r = 0; r < B; ++r)
        if (b * B + r < co && w[(b * B + r) * ci + k] != 0.0f) any = true;
      if (!any) continue;
      p.idx.push_back(static_cast<int32_t>(cnt == 0 ? k : k - prev));
      prev = k;
      for (int r = 0; r < B; ++r) p.values.push_back(b * B + r < co ? w[(b * B + r) * ci + k] : 0.0f);
      ++cnt;
    }
    p.nnz.push_back(cnt);
    p.offsets.push_back(p.offsets.back() + cnt);
  }
  return p;
}

}  // namespace

int main() {
  std::mt19937 gen(1234);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> ud(0.0f, 1.0f);
  struct Case { int64_t co, ci, hw; int block; float sparsity; float lo, hi; bool bias; };
  const Case cases[] = {
      {7, 5, 13, 1, 0.7f, -INFINITY, INFINITY, false}, {16, 9, 33, 1, 0.8f, 0.0f, INFINITY, true},
      {13, 17, 49, 2, 0.6f, 0.0f, 6.0f, true},        {9, 12, 3, 4, 0.5f, -INFINITY, INFINITY, true},
      {33, 40, 197, 4, 0.9f, 0.0f, INFINITY, false},   {6, 3, 1, 2, 0.3f, -INFINITY, INFINITY, true},
      {64, 96, 196, 1, 0.9f, 0.0f, 6.0f, true},        {10, 20, 35, 4, 0.7f, -INFINITY, INFINITY, true},
  };
  bool ok = true;
  for (const Case& c : cases) {
    std::vector<float> w(c.co * c.ci), x(c.ci * c.hw), bias(c.co);
    const int64_t nb = (c.co + c.block - 1) / c.block;
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t k = 0; k < c.ci; ++k) {
        const bool keep = ud(gen) >= c.sparsity;
        for (int r = 0; r < c.block && b * c.block + r < c.co; ++r) w[(b * c.block + r) * c.ci + k] = keep ? nd(gen) : 0.0f;
      }
    for (int64_t k = 0; k < c.ci; ++k) w[0 * c.ci + k] = 0.0f;                    // a channel with no nonzeros
    for (int64_t k = 0; k < c.ci; ++k) w[(c.co - 1) * c.ci + k] = nd(gen);        // a fully dense channel
    if (c.block > 1)                                                             // keep the last block's pattern valid
      for (int64_t r = (c.co - 1) / c.block * c.block; r < c.co; ++r)
        for (int64_t k = 0; k < c.ci; ++k) w[r * c.ci + k] = nd(gen);
    for (auto& v : x) v = nd(gen);
    for (auto& v : bias) v = nd(gen);
    Packed p = pack(w, c.co, c.ci, c.block);
    SpmmConvWeights sw;
    sw.c_out = c.co; sw.c_in = c.ci; sw.block = c.block;
    sw.nnz = p.nnz.data(); sw.offsets = p.offsets.data(); sw.idx_delta = p.idx.data(); sw.values = p.values.data();
    sw.bias = c.bias ? bias.data() : nullptr; sw.out_min = c.lo; sw.out_max = c.hi;
    std::vector<float> yn(c.co * c.hw, NAN), ys(c.co * c.hw, NAN);
    // Two ranges exercise the tile split the dispatcher makes across threads.
    const int64_t mid = c.hw / 2, bmid = nb / 2;
    spmm_conv_f32_neon(sw, x.data(), yn.data(), c.hw, 0, mid, 0, nb);
    spmm_conv_f32_neon(sw, x.data(), yn.data(), c.hw, mid, c.hw, 0, bmid);
    spmm_conv_f32_neon(sw, x.data(), yn.data(), c.hw, mid, c.hw, bmid, nb);
    spmm_conv_f32_scalar(sw, x.data(), ys.data(), c.hw, 0, c.hw, 0, nb);
    double worst = 0.0;
    bool case_ok = true;
    for (int64_t o = 0; o < c.co; ++o)
      for (int64_t p2 = 0; p2 < c.hw; ++p2) {
        double ref = c.bias ? bias[o] : 0.0, mag = std::fabs(ref);
        for (int64_t k = 0; k < c.ci; ++k) {
          ref += static_cast<double>(w[o * c.ci + k]) * x[k * c.hw + p2];
          mag += std::fabs(static_cast<double>(w[o * c.ci + k]) * x[k * c.hw + p2]);
        }
        ref = std::min(std::max(ref, static_cast<double>(c.lo)), static_cast<double>(c.hi));
        const double tol = 4.0 * (c.ci + 1) * 5.96e-8 * mag + 1e-30;
        const double en = std::fabs(yn[o * c.hw + p2] - ref), es = std::fabs(ys[o * c.hw + p2] - ref);
        if (!(en <= tol) || !(es <= tol)) case_ok = false;
        worst = std::max(worst, en / (mag + 1e-30));
      }
    std::printf("co=%lld ci=%lld hw=%lld block=%d: %s (max rel err %.2e)\n", (long long)c.co, (long long)c.ci,
                (long long)c.hw, c.block, case_ok ? "ok" : "MISMATCH", worst);
    ok = ok && case_ok;
  }
  std::printf(ok ? "ALL OK\n" : "FAILED\n");
  return ok ? 0 : 1;
}
