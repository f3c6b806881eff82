// spgemm: C = A · B for canonical CSR A [a_rows, a_cols], B [a_cols, b_cols]; int32 or int64 indices,
// float32 or float64 values. nnz(C) is known only after the symbolic pass, so the module allocates C
// itself and keeps it until the next sf_spgemm call; out[0..3] get C's indptr, indices and data
// addresses and nnz, so the host reads the result without a second export call.
#include <string>
#include <vector>

#include "abi.h"
#include "kernels/spgemm/spgemm.h"

using namespace sparseforge;

namespace {
std::vector<unsigned char> g_indptr, g_indices, g_data;  // the last product, owned by the module

template <typename T>
T* take(std::vector<unsigned char>& buf, int64_t count) {
  buf.resize(static_cast<size_t>(count > 0 ? count : 1) * sizeof(T));
  return reinterpret_cast<T*>(buf.data());
}

template <typename V, typename I>
int32_t run(const void* ap, const void* aj, const void* ax, int32_t a_rows, int32_t a_cols, int32_t a_nnz,
            const void* bp, const void* bj, const void* bx, int32_t b_cols, int32_t b_nnz, uint32_t* out) {
  CsrRef<V, I> a, b;
  a.rows = a_rows, a.cols = a_cols;
  a.indptr = static_cast<const I*>(ap), a.indices = static_cast<const I*>(aj), a.data = static_cast<const V*>(ax);
  b.rows = a_cols, b.cols = b_cols;
  b.indptr = static_cast<const I*>(bp), b.indices = static_cast<const I*>(bj), b.data = static_cast<const V*>(bx);
  std::string err = spgemm_check_csr<I>(a.indptr, a.indices, a.rows, a.cols, a_nnz);
  if (!err.empty()) return wasm::fail("spgemm(): argument 'a' is not canonical CSR: " + err);
  err = spgemm_check_csr<I>(b.indptr, b.indices, b.rows, b.cols, b_nnz);
  if (!err.empty()) return wasm::fail("spgemm(): argument 'b' is not canonical CSR: " + err);
  I* cp = take<I>(g_indptr, a.rows + 1);
  SpgemmPlan<V, I> plan;
  const int64_t nnz = spgemm_symbolic<V, I>(a, b, cp, &plan);
  if (nnz > INT32_MAX / 8) return wasm::fail("spgemm(): the product has " + std::to_string(nnz) +
                                              " nonzeros, too many for the module's 32-bit memory");
  I* cj = take<I>(g_indices, nnz);
  V* cx = take<V>(g_data, nnz);
  spgemm_numeric<V, I>(a, b, &plan, cp, cj, cx);
  out[0] = reinterpret_cast<uintptr_t>(cp);
  out[1] = reinterpret_cast<uintptr_t>(cj);
  out[2] = reinterpret_cast<uintptr_t>(cx);
  out[3] = static_cast<uint32_t>(nnz);
  return 0;
}
}  // namespace

// f64: values are float64 (else float32); i64: indices are int64 (else int32), the same for A, B and C.
SF_EXPORT(sf_spgemm)(int32_t f64, int32_t i64, const void* ap, const void* aj, const void* ax, int32_t a_rows,
                     int32_t a_cols, int32_t a_nnz, const void* bp, const void* bj, const void* bx, int32_t b_cols,
                     int32_t b_nnz, uint32_t* out) {
  if (a_rows < 0 || a_cols < 0 || b_cols < 0) return wasm::fail("spgemm(): shapes must be non-negative");
  if (f64 && i64) return run<double, int64_t>(ap, aj, ax, a_rows, a_cols, a_nnz, bp, bj, bx, b_cols, b_nnz, out);
  if (f64) return run<double, int32_t>(ap, aj, ax, a_rows, a_cols, a_nnz, bp, bj, bx, b_cols, b_nnz, out);
  if (i64) return run<float, int64_t>(ap, aj, ax, a_rows, a_cols, a_nnz, bp, bj, bx, b_cols, b_nnz, out);
  return run<float, int32_t>(ap, aj, ax, a_rows, a_cols, a_nnz, bp, bj, bx, b_cols, b_nnz, out);
}
