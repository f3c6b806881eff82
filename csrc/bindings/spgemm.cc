#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cstdlib>
#include <limits>
#include <utility>

#include "kernels/spgemm/spgemm.h"
#include "op_registry.h"
#include "pooled_array.h"
#include "validate.h"

namespace py = pybind11;
using namespace sparseforge;

namespace {

constexpr const char* kFn = "spgemm";
// What the last spgemm call did (tests check that every path is reached): rows computed in the first
// pass, rows in all, parts.
std::atomic<int64_t> g_last_fused{0}, g_last_rows{0}, g_last_parts{0}, g_last_direct{0}, g_last_taken{0}, g_last_band{0},
    g_last_streamed{0}, g_last_reserved{0};

std::pair<int64_t, int64_t> require_shape(const char* arg, py::handle obj) {
  py::tuple t;
  if (!py::isinstance<py::tuple>(obj) || (t = py::reinterpret_borrow<py::tuple>(obj)).size() != 2)
    throw py::type_error(std::string(kFn) + "(): argument '" + arg + "' must be a tuple (rows, cols)");
  int64_t r = t[0].cast<int64_t>(), c = t[1].cast<int64_t>();
  if (r < 0 || c < 0)
    throw py::value_error(std::string(kFn) + "(): argument '" + arg + "' must be non-negative, got (" +
                          std::to_string(r) + ", " + std::to_string(c) + ")");
  return {r, c};
}

template <typename V, typename I>
CsrRef<V, I> require_csr(const char* name, py::handle indptr, py::handle indices, py::handle data, py::handle shape,
                         int64_t* longest) {
  const std::string s(name);
  const std::string p_arg = s + "_indptr", i_arg = s + "_indices", d_arg = s + "_data", sh_arg = s + "_shape";
  auto [rows, cols] = require_shape(sh_arg.c_str(), shape);
  py::array p = bind::require_array<I>(kFn, p_arg.c_str(), indptr, 1);
  py::array j = bind::require_array<I>(kFn, i_arg.c_str(), indices, 1);
  py::array x = bind::require_array<V>(kFn, d_arg.c_str(), data, 1);
  const std::string where = std::string(kFn) + "(): argument '";
  if (p.shape(0) != rows + 1)
    throw py::value_error(where + p_arg + "' must have rows + 1 = " + std::to_string(rows + 1) + " entries for " +
                          sh_arg + "=(" + std::to_string(rows) + ", " + std::to_string(cols) + "), got " +
                          std::to_string(p.shape(0)));
  if (j.shape(0) != x.shape(0))
    throw py::value_error(where + i_arg + "' has " + std::to_string(j.shape(0)) + " entries but '" + d_arg +
                          "' has " + std::to_string(x.shape(0)));
  if (static_cast<uint64_t>(cols) > static_cast<uint64_t>(std::numeric_limits<I>::max()))
    throw py::value_error(where + sh_arg + "' has more columns than its index dtype can address");
  CsrRef<V, I> m;
  m.rows = rows, m.cols = cols;
  m.indptr = static_cast<const I*>(p.data());
  m.indices = static_cast<const I*>(j.data());
  m.data = static_cast<const V*>(x.data());
  // Only indptr here: the rows are checked inside the product's first pass (SpgemmCheck), and
  // not_canonical() names the bad row if that check fails.
  std::string err;
  {
    py::gil_scoped_release release;
    err = spgemm_check_indptr<I>(m.indptr, rows, j.shape(0), longest);
  }
  if (!err.empty()) throw py::value_error(where + s + "' is not canonical CSR: " + err);
  return m;
}

// The error for an input whose rows the first pass found not canonical (indptr is known to be fine).
template <typename V, typename I>
py::value_error not_canonical(const char* name, const CsrRef<V, I>& m) {
  std::string err;
  {
    py::gil_scoped_release release;
    err = spgemm_check_csr<I>(m.indptr, m.indices, m.rows, m.cols, m.indptr[m.rows]);
  }
  return py::value_error(std::string(kFn) + "(): argument '" + name + "' is not canonical CSR: " + err);
}

// At most this many entries are reserved for C up front (2^36: 512 GiB of float64 address space); a
// larger bound (R-MAT-like B with a very long row) takes the fused-pass buffer instead.
constexpr int64_t kMaxDirectEntries = int64_t{1} << 36;

// SPARSEFORGE_SPGEMM_DIRECT=0 turns the in-place first part off (tests compare both paths).
bool direct_enabled() {
  const char* env = std::getenv("SPARSEFORGE_SPGEMM_DIRECT");
  return env == nullptr || std::atoi(env) != 0;
}

// The two reservations of a call; whichever is not handed to an array goes back to the pool.
struct DirectBlocks {
  bind::PooledBlock j, x;
  bind::PooledBlock take_j() { return std::exchange(j, bind::PooledBlock{}); }
  bind::PooledBlock take_x() { return std::exchange(x, bind::PooledBlock{}); }
  ~DirectBlocks() {
    if (j.ptr != nullptr) bind::pool_release(j);
    if (x.ptr != nullptr) bind::pool_release(x);
  }
};

template <typename V, typename I>
py::tuple run(py::handle ap, py::handle aj, py::handle ax, py::handle ash, py::handle bp, py::handle bj,
              py::handle bx, py::handle bsh) {
  int64_t a_longest = 0, b_longest = 0;
  CsrRef<V, I> a = require_csr<V, I>("a", ap, aj, ax, ash, &a_longest);
  // A @ A (the same arrays and shape twice) is validated once.
  const bool same = ap.ptr() == bp.ptr() && aj.ptr() == bj.ptr() && ax.ptr() == bx.ptr() &&
                    require_shape("b_shape", bsh) == std::make_pair(a.rows, a.cols);
  CsrRef<V, I> b = same ? a : require_csr<V, I>("b", bp, bj, bx, bsh, &b_longest);
  if (same) b_longest = a_longest;
  if (a.cols != b.rows)
    throw py::value_error(std::string(kFn) + "(): shapes do not match: a_shape=(" + std::to_string(a.rows) + ", " +
                          std::to_string(a.cols) + ") and b_shape=(" + std::to_string(b.rows) + ", " +
                          std::to_string(b.cols) + "); a's columns must equal b's rows");
  py::array_t<I> c_indptr(a.rows + 1);
  SpgemmPlan<V, I> plan;
  SpgemmCheck<I> check;
  check.add(a.indptr, a.indices, a.rows, a.cols, 0);
  if (!same) check.add(b.indptr, b.indices, b.rows, b.cols, 1);
  plan.check = &check;
  // C's storage up front when its output will be pooled anyway: a reservation within an upper bound on
  // nnz(C) (address space; only what is written costs memory), into which rows are written in place
  // (one thread: all of them; two: two halves) instead of through the fused-pass buffer and a copy
  // (Poisson 2-D, one thread: the copy was 1.3 of 8.7 ms).
  DirectBlocks direct;
  int64_t reserved = 0;
  if (direct_enabled()) {
    const double est = static_cast<double>(a.indptr[a.rows]) * static_cast<double>(b.indptr[b.rows]) /
                       static_cast<double>(std::max<int64_t>(b.rows, 1));
    if (est * sizeof(I) >= static_cast<double>(bind::kPooledMinBytes)) {
      const int64_t longest = b_longest;
      const int64_t bound = spgemm_direct_bound<I>(a.indptr, 0, a.rows, longest, b.cols);
      if (bound > 0 && bound <= kMaxDirectEntries) {
        direct.j = bind::pool_reserve(static_cast<size_t>(bound) * sizeof(I));
        direct.x = bind::pool_reserve(static_cast<size_t>(bound) * sizeof(V));
        if (direct.j.ptr != nullptr && direct.x.ptr != nullptr) {
          plan.direct_j = static_cast<I*>(direct.j.ptr);
          plan.direct_x = static_cast<V*>(direct.x.ptr);
          plan.direct_longest = longest;
          reserved = bound;
        }
      }
    }
  }
  int64_t nnz;
  {
    py::gil_scoped_release release;
    nnz = spgemm_symbolic<V, I>(a, b, c_indptr.mutable_data(), &plan);
  }
  if (nnz < 0) throw check.bad.load() == 0 ? not_canonical("a", a) : not_canonical("b", b);
  if (static_cast<uint64_t>(nnz) > static_cast<uint64_t>(std::numeric_limits<I>::max()))
    throw py::value_error(std::string(kFn) + "(): the product has " + std::to_string(nnz) +
                          " nonzeros, more than int32 indices can address; pass int64 indptr/indices");
  py::array_t<I> c_indices;
  py::array_t<V> c_data;
  if (plan.direct_parts > 0) {
    c_indices = bind::array_in_block<I>(direct.take_j(), nnz, plan.direct_start);
    c_data = bind::array_in_block<V>(direct.take_x(), nnz, plan.direct_start);
  } else {
    // C's large arrays reuse the blocks of earlier, dead results (pooled_array.h): no page faults.
    c_indices = bind::pooled_array<I>(nnz);
    c_data = bind::pooled_array<V>(nnz);
  }
  {
    py::gil_scoped_release release;
    spgemm_numeric<V, I>(a, b, &plan, c_indptr.data(), c_indices.mutable_data(), c_data.mutable_data());
  }
  g_last_fused = plan.fused_rows, g_last_rows = a.rows, g_last_parts = static_cast<int64_t>(plan.bounds.size()) - 1;
  g_last_direct = plan.direct_parts;
  g_last_taken = plan.taken_rows;
  g_last_band = plan.band_rows;
  g_last_streamed = plan.streamed_rows;
  g_last_reserved = reserved;
  return py::make_tuple(c_indptr, c_indices, c_data);
}

py::tuple spgemm(py::handle ap, py::handle aj, py::handle ax, py::handle ash, py::handle bp, py::handle bj,
                 py::handle bx, py::handle bsh) {
  if (!py::isinstance<py::array>(ax))
    throw py::type_error(std::string(kFn) + "(): argument 'a_data' must be a numpy.ndarray of float32 or float64, got " +
                         bind::type_name(ax));
  if (!py::isinstance<py::array>(ap))
    throw py::type_error(std::string(kFn) + "(): argument 'a_indptr' must be a numpy.ndarray of int32 or int64, got " +
                         bind::type_name(ap));
  py::dtype vt = py::reinterpret_borrow<py::array>(ax).dtype();
  py::dtype it = py::reinterpret_borrow<py::array>(ap).dtype();
  const bool f32 = vt.is(py::dtype::of<float>()), f64 = vt.is(py::dtype::of<double>());
  const bool i32 = it.is(py::dtype::of<int32_t>()), i64 = it.is(py::dtype::of<int64_t>());
  if (!f32 && !f64)
    throw py::type_error(std::string(kFn) + "(): argument 'a_data' must have dtype float32 or float64, got " +
                         py::str(vt).cast<std::string>());
  if (!i32 && !i64)
    throw py::type_error(std::string(kFn) + "(): argument 'a_indptr' must have dtype int32 or int64, got " +
                         py::str(it).cast<std::string>());
  if (f32 && i32) return run<float, int32_t>(ap, aj, ax, ash, bp, bj, bx, bsh);
  if (f32) return run<float, int64_t>(ap, aj, ax, ash, bp, bj, bx, bsh);
  if (i32) return run<double, int32_t>(ap, aj, ax, ash, bp, bj, bx, bsh);
  return run<double, int64_t>(ap, aj, ax, ash, bp, bj, bx, bsh);
}

}  // namespace

SPARSEFORGE_BIND_OP(
    spgemm,
    [](py::module_& mod) {
      mod.def("spgemm", &spgemm, py::arg("a_indptr"), py::arg("a_indices"), py::arg("a_data"), py::arg("a_shape"),
              py::arg("b_indptr"), py::arg("b_indices"), py::arg("b_data"), py::arg("b_shape"),
              "C = A @ B for canonical CSR inputs (sorted, unique column indices).\n\n"
              "indptr/indices: int32 or int64 (the same dtype everywhere); data: float32 or float64 (the same\n"
              "for A and B); 1-D, C-contiguous. Returns (indptr, indices, data) of C [a_rows, b_cols] with\n"
              "sorted column indices, the input dtypes, and exactly nnz(C) entries.");
      mod.def("spgemm_last_stats", [] {
        py::dict d;
        d["fused_rows"] = g_last_fused.load(), d["rows"] = g_last_rows.load(), d["parts"] = g_last_parts.load();
        d["direct"] = g_last_direct.load() != 0;
        d["direct_parts"] = g_last_direct.load();
        d["taken_rows"] = g_last_taken.load();
        d["band_rows"] = g_last_band.load();
        d["streamed_rows"] = g_last_streamed.load();
        d["reserved"] = g_last_reserved.load();
        return d;
      }, "What the last spgemm call did: rows computed in its first (fused) pass, rows, row parts, and how many\n"
         "parts wrote their rows straight into C (direct_parts; direct: any); with two halves, the rows a\n"
         "thread took from the far end of the other's half (taken_rows); rows computed as band rows of a\n"
         "stencil pattern (band_rows); rows written out to C with non-temporal stores (streamed_rows: large\n"
         "products, SPARSEFORGE_SPGEMM_STREAM=0 turns it off); the entries of C's reservation (reserved: nnz(A)\n"
         "times B's longest row, at most rows x cols; address space, 0 when C was not written in place).");
      mod.def("spgemm_release_buffers", [] {
        spgemm_release_pool();
        bind::pool_release_all();
      }, "Frees the memory spgemm keeps between calls: its fused-pass buffer chunks (up to the fuse budget) and\n"
         "the blocks of dead output arrays (up to SPARSEFORGE_OUTPUT_POOL_MB). Live results stay valid.");
      mod.def("output_pool_stats", [] {
        const bind::PoolStats s = bind::pool_stats();
        py::dict d;
        d["kept_bytes"] = s.kept_bytes, d["kept_blocks"] = s.kept_blocks, d["reused"] = s.reused, d["mapped"] = s.mapped;
        d["lazy_blocks"] = s.lazy_blocks, d["lazy_bytes"] = s.lazy_bytes;
        return d;
      }, "The output-array pool: bytes and blocks kept for reuse, blocks reused and newly allocated so far, and\n"
         "blocks over the budget left to the kernel with MADV_FREE (lazy_blocks; lazy_bytes: what they held).");
      mod.def("spgemm_row_flops", [](py::handle ap, py::handle aj, py::handle ash, py::handle bp, py::handle bsh) {
        // Partial products per row (sum over k in A_i of nnz(B_k)); int64 [rows].
        auto [ar, ac] = require_shape("a_shape", ash);
        auto [br, bc] = require_shape("b_shape", bsh);
        if (ac != br) throw py::value_error("spgemm_row_flops(): a's columns must equal b's rows");
        py::array_t<int64_t> out(ar);
        auto go = [&](auto tag) {
          using I = decltype(tag);
          py::array p = bind::require_array<I>("spgemm_row_flops", "a_indptr", ap, 1);
          py::array j = bind::require_array<I>("spgemm_row_flops", "a_indices", aj, 1);
          py::array q = bind::require_array<I>("spgemm_row_flops", "b_indptr", bp, 1);
          if (p.shape(0) != ar + 1 || q.shape(0) != br + 1) throw py::value_error("spgemm_row_flops(): indptr length does not match the shape");
          std::string err = spgemm_check_csr<I>(static_cast<const I*>(p.data()), static_cast<const I*>(j.data()), ar, ac, j.shape(0));
          if (!err.empty()) throw py::value_error("spgemm_row_flops(): argument 'a' is not canonical CSR: " + err);
          CsrRef<void, I> a, b;
          a.rows = ar, a.cols = ac, a.indptr = static_cast<const I*>(p.data()), a.indices = static_cast<const I*>(j.data());
          b.rows = br, b.cols = bc, b.indptr = static_cast<const I*>(q.data());
          spgemm_row_flops<I>(a, b, out.mutable_data());
        };
        py::array pa = py::reinterpret_borrow<py::array>(ap);
        if (py::isinstance<py::array>(ap) && pa.dtype().is(py::dtype::of<int64_t>())) go(int64_t{});
        else go(int32_t{});
        return out;
      }, py::arg("a_indptr"), py::arg("a_indices"), py::arg("a_shape"), py::arg("b_indptr"), py::arg("b_shape"),
      "Partial-product (flop) count of every row of A @ B, int64 [a_rows].");
    },
    [] { return kernel_name("spgemm", "f32_i32", select_spgemm<float, int32_t>(active_isa()).isa); });
