// Scalar reference of spgemm: the oracle every ISA variant is tested against, and the portable fallback.
#include "spgemm_rows.h"

namespace sparseforge {

template <typename I>
void spgemm_symbolic_scalar(const CsrRef<void, I>& a, const CsrRef<void, I>& b, const int64_t* flop, int64_t r0,
                            int64_t r1, I* counts) {
  symbolic_rows<ScalarPolicy, I>(a, b, flop, r0, r1, counts);
}

template <typename V, typename I>
void spgemm_numeric_scalar(const CsrRef<V, I>& a, const CsrRef<V, I>& b, const int64_t* flop, int64_t r0,
                           int64_t r1, const I* cp, I* cj, V* cx) {
  numeric_rows<ScalarPolicy, V, I>(a, b, flop, r0, r1, cp, cj, cx);
}

template void spgemm_symbolic_scalar<int32_t>(const CsrRef<void, int32_t>&, const CsrRef<void, int32_t>&,
                                              const int64_t*, int64_t, int64_t, int32_t*);
template void spgemm_symbolic_scalar<int64_t>(const CsrRef<void, int64_t>&, const CsrRef<void, int64_t>&,
                                              const int64_t*, int64_t, int64_t, int64_t*);
#define SPGEMM_NUMERIC_INST(V, I)                                                                           \
  template void spgemm_numeric_scalar<V, I>(const CsrRef<V, I>&, const CsrRef<V, I>&, const int64_t*, int64_t, \
                                            int64_t, const I*, I*, V*);
SPGEMM_NUMERIC_INST(float, int32_t)
SPGEMM_NUMERIC_INST(float, int64_t)
SPGEMM_NUMERIC_INST(double, int32_t)
SPGEMM_NUMERIC_INST(double, int64_t)

}  // namespace sparseforge
