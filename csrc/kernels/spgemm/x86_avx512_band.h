// AVX-512 band rows (spgemm_band.h), included by x86_avx512.cc inside Avx512Policy: a row of B fits one
// register (8 doubles / 16 floats) and a row of C up to 4 (32 slots). Per term of A: B's row is loaded
// masked, multiplied by the term's value, and each output register takes the products that land in it
// through a fixed lane permutation and mask, added in A's order (multiply and add kept apart, as scipy
// rounds them).
static constexpr bool kBand = true;
template <typename V>
struct BandPlan {
  static constexpr int L = 64 / static_cast<int>(sizeof(V));
  using Idx = std::conditional_t<sizeof(V) == 8, int64_t, int32_t>;
  int na = 0, nc = 0, regs = 0;
  int nb[kBandMaxA];
  __mmask16 bmask[kBandMaxA];
  __mmask16 store[4];
  __mmask16 m[kBandMaxA][4];
  alignas(64) Idx idx[kBandMaxA][4][L];
  alignas(64) int32_t c32[kBandMaxC];  // the row's column offsets, for band_cols
  alignas(64) int64_t c64[kBandMaxC];
  alignas(64) int32_t a32[kBandMaxA];  // A's, for band_a_matches
  alignas(64) int64_t a64[kBandMaxA];
  __mmask16 amask = 0;
};
template <typename V>
static bool band_plan(const BandPattern& pat, BandPlan<V>* p) {
  constexpr int L = BandPlan<V>::L;
  if (pat.nc > 4 * L) return false;
  for (int t = 0; t < pat.na; ++t)
    if (pat.nb[t] > L) return false;
  for (int q = 0; q < pat.nc; ++q)
    if (pat.c[q] < INT32_MIN || pat.c[q] > INT32_MAX) return false;
  for (int t = 0; t < pat.na; ++t)
    if (pat.a[t] < INT32_MIN || pat.a[t] > INT32_MAX) return false;
  for (int t = 0; t < kBandMaxA; ++t) {
    p->a64[t] = t < pat.na ? pat.a[t] : 0;
    p->a32[t] = static_cast<int32_t>(p->a64[t]);
  }
  p->amask = lanes_left(pat.na);
  p->na = pat.na;
  p->nc = pat.nc;
  p->regs = (pat.nc + L - 1) / L;
  for (int t = 0; t < pat.na; ++t) {
    p->nb[t] = pat.nb[t];
    p->bmask[t] = lanes_left(pat.nb[t]);
  }
  for (int r = 0; r < 4; ++r) p->store[r] = lanes_left(pat.nc - L * r);
  for (int t = 0; t < pat.na; ++t)
    for (int r = 0; r < 4; ++r) {
      p->m[t][r] = 0;
      for (int l = 0; l < L; ++l) p->idx[t][r][l] = 0;
    }
  for (int t = 0; t < pat.na; ++t)
    for (int q = 0; q < pat.nb[t]; ++q) {
      const int sl = pat.slot[t][q], r = sl / L, l = sl % L;
      p->idx[t][r][l] = q;
      p->m[t][r] = static_cast<__mmask16>(p->m[t][r] | (1u << l));
    }
  for (int q = 0; q < kBandMaxC; ++q) {
    p->c64[q] = q < pat.nc ? pat.c[q] : 0;
    p->c32[q] = static_cast<int32_t>(p->c64[q]);
  }
  return true;
}
// `rows` consecutive band rows: their values in A from av (na apart), their terms' rows of B from
// brow[t] (nb[t] apart), their values in C to ox (nc apart).
template <int R, typename V>
static void band_rows_regs(const BandPlan<V>& p, const V* av, const V* const* brow, int64_t rows, V* ox) {
  const int na = p.na;
  const int64_t nc = p.nc;
  for (int64_t row = 0; row < rows; ++row, av += na, ox += nc) {
    if constexpr (sizeof(V) == 8) {
      __m512d acc[R];
      for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_pd();
      for (int t = 0; t < na; ++t) {
        // brow[t] + row * nb[t]: a pointer bumped through memory each row chained the rows' loads
        __m512d prod = _mm512_mul_pd(_mm512_set1_pd(av[t]),
                                     _mm512_maskz_loadu_pd(static_cast<__mmask8>(p.bmask[t]), brow[t] + row * p.nb[t]));
        asm("" : "+v"(prod));  // no FMA contraction
        for (int r = 0; r < R; ++r)
          if (p.m[t][r])
            acc[r] = _mm512_mask_add_pd(acc[r], static_cast<__mmask8>(p.m[t][r]), acc[r],
                                        _mm512_permutexvar_pd(_mm512_load_si512(p.idx[t][r]), prod));
      }
      for (int r = 0; r < R; ++r) _mm512_mask_storeu_pd(ox + 8 * r, static_cast<__mmask8>(p.store[r]), acc[r]);
    } else {
      __m512 acc[R];
      for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
      for (int t = 0; t < na; ++t) {
        __m512 prod = _mm512_mul_ps(_mm512_set1_ps(av[t]), _mm512_maskz_loadu_ps(p.bmask[t], brow[t] + row * p.nb[t]));
        asm("" : "+v"(prod));
        for (int r = 0; r < R; ++r)
          if (p.m[t][r])
            acc[r] = _mm512_mask_add_ps(acc[r], p.m[t][r], acc[r], _mm512_permutexvar_ps(_mm512_load_si512(p.idx[t][r]), prod));
      }
      for (int r = 0; r < R; ++r) _mm512_mask_storeu_ps(ox + 16 * r, p.store[r], acc[r]);
    }
  }
}
template <typename V>
static void band_rows(const BandPlan<V>& p, const V* av, const V* const* brow, int64_t rows, V* ox) {
  switch (p.regs) {
    case 1: return band_rows_regs<1>(p, av, brow, rows, ox);
    case 2: return band_rows_regs<2>(p, av, brow, rows, ox);
    case 3: return band_rows_regs<3>(p, av, brow, rows, ox);
    default: return band_rows_regs<4>(p, av, brow, rows, ox);
  }
}
// Whether row i of A (its na columns at aj) has the columns i + a[t].
template <typename V, typename I>
static bool band_a_matches(const BandPlan<V>& p, const I* aj, int64_t i) {
  if constexpr (sizeof(I) == 4) {
    const __m512i want = _mm512_add_epi32(_mm512_load_si512(p.a32), _mm512_set1_epi32(static_cast<int32_t>(i)));
    return _mm512_mask_cmpneq_epi32_mask(p.amask, _mm512_maskz_loadu_epi32(p.amask, aj), want) == 0;
  } else {
    const __m512i base = _mm512_set1_epi64(i);
    const __mmask8 m0 = static_cast<__mmask8>(p.amask), m1 = static_cast<__mmask8>(p.amask >> 8);
    const __mmask8 bad0 = _mm512_mask_cmpneq_epi64_mask(m0, _mm512_maskz_loadu_epi64(m0, aj),
                                                        _mm512_add_epi64(_mm512_load_si512(p.a64), base));
    const __mmask8 bad1 = _mm512_mask_cmpneq_epi64_mask(m1, _mm512_maskz_loadu_epi64(m1, aj + 8),
                                                        _mm512_add_epi64(_mm512_load_si512(p.a64 + 8), base));
    return (bad0 | bad1) == 0;
  }
}
// The column indices of rows i0 .. i0 + rows - 1: i + c[s] each.
template <typename V, typename I>
static void band_cols(const BandPlan<V>& p, int64_t i0, int64_t rows, I* oj) {
  const int64_t nc = p.nc;
  if constexpr (sizeof(I) == 4) {
    const __m512i c0 = _mm512_load_si512(p.c32), c1 = _mm512_load_si512(p.c32 + 16);
    const __mmask16 m0 = lanes_left(nc), m1 = lanes_left(nc - 16);
    for (int64_t row = 0; row < rows; ++row, oj += nc) {
      const __m512i base = _mm512_set1_epi32(static_cast<int32_t>(i0 + row));
      _mm512_mask_storeu_epi32(oj, m0, _mm512_add_epi32(c0, base));
      if (m1) _mm512_mask_storeu_epi32(oj + 16, m1, _mm512_add_epi32(c1, base));
    }
  } else {
    for (int64_t row = 0; row < rows; ++row, oj += nc) {
      const __m512i base = _mm512_set1_epi64(i0 + row);
      for (int r = 0; r < 4 && 8 * r < nc; ++r)
        _mm512_mask_storeu_epi64(oj + 8 * r, static_cast<__mmask8>(lanes_left(nc - 8 * r)),
                                 _mm512_add_epi64(_mm512_load_si512(p.c64 + 8 * r), base));
    }
  }
}
