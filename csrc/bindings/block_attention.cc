#include <pybind11/numpy.h>

#include <string>

#include "kernels/block_attention/block_attention.h"
#include "op_registry.h"
#include "validate.h"

namespace py = pybind11;
using namespace sparseforge;

namespace {

[[noreturn]] void fail(const char* fn, const std::string& msg) { throw py::value_error(std::string(fn) + "(): " + msg); }

struct Qkv {
  py::array q, k, v, out;
  int64_t B, Hq, Hkv, Lq, Lk, D;
};

// q [B, Hq, Lq, D], k/v [B, Hkv, Lk, D], out like q: float32, C-contiguous, consistent.
Qkv check_qkv(const char* fn, py::handle q_obj, py::handle k_obj, py::handle v_obj, py::handle out_obj) {
  Qkv t;
  t.q = bind::require_array<float>(fn, "q", q_obj, 4);
  t.k = bind::require_array<float>(fn, "k", k_obj, 4);
  t.v = bind::require_array<float>(fn, "v", v_obj, 4);
  t.out = bind::require_array<float>(fn, "out", out_obj, 4, /*writable=*/true);
  t.B = t.q.shape(0), t.Hq = t.q.shape(1), t.Lq = t.q.shape(2), t.D = t.q.shape(3);
  t.Hkv = t.k.shape(1), t.Lk = t.k.shape(2);
  if (t.k.shape(0) != t.B || t.k.shape(3) != t.D)
    fail(fn, "argument 'k' has shape " + bind::shape_str(t.k) + ", expected [B=" + std::to_string(t.B) +
                 ", Hkv, Lk, D=" + std::to_string(t.D) + "]");
  for (int i = 0; i < 4; ++i) {
    if (t.v.shape(i) != t.k.shape(i)) fail(fn, "argument 'v' has shape " + bind::shape_str(t.v) + ", expected k's " + bind::shape_str(t.k));
    if (t.out.shape(i) != t.q.shape(i)) fail(fn, "argument 'out' has shape " + bind::shape_str(t.out) + ", expected q's " + bind::shape_str(t.q));
  }
  if (t.Hkv < 1 || t.Hq % t.Hkv) fail(fn, "query heads (" + std::to_string(t.Hq) + ") must be a multiple of key/value heads (" + std::to_string(t.Hkv) + ")");
  if (t.Lk < 1) fail(fn, "argument 'k' must hold at least one key");
  if (t.D < 1) fail(fn, "argument 'q' must have head_dim >= 1");
  return t;
}

void check_range(const char* fn, const char* arg, const int32_t* p, int64_t n, int64_t lo, int64_t hi) {
  for (int64_t i = 0; i < n; ++i)
    if (p[i] < lo || p[i] >= hi)
      fail(fn, std::string("argument '") + arg + "' holds " + std::to_string(p[i]) + " at flat index " + std::to_string(i) +
                   ", expected values in [" + std::to_string(lo) + ", " + std::to_string(hi) + ")");
}

void block_attention(py::handle q, py::handle k, py::handle v, py::handle out, py::handle stats_obj, int mode, bool causal,
                     float scale, float threshold, int block_q, int block_k, py::handle kv_num_obj,
                     py::handle kv_idx_obj, py::handle order_obj) {
  const char* fn = "block_attention";
  Qkv t = check_qkv(fn, q, k, v, out);
  py::array stats = bind::require_array<int64_t>(fn, "stats", stats_obj, 1, /*writable=*/true);
  if (stats.shape(0) != 4) fail(fn, "argument 'stats' must have shape (4,), got " + bind::shape_str(stats));
  if (mode < 0 || mode > 3) fail(fn, "argument 'mode' must be 0 (dense), 1 (threshold), 2 (block_mask) or 3 (early_stop), got " + std::to_string(mode));
  if (block_q < 1 || block_k < 1 || block_q > 4096 || block_k > 4096)
    fail(fn, "arguments 'block_q' and 'block_k' must lie in [1, 4096], got " + std::to_string(block_q) + ", " + std::to_string(block_k));
  if (!(threshold >= 0.0f)) fail(fn, "argument 'threshold' must be >= 0, got " + std::to_string(threshold));
  BlockAttnArgs a{};
  a.q = static_cast<const float*>(t.q.data());
  a.k = static_cast<const float*>(t.k.data());
  a.v = static_cast<const float*>(t.v.data());
  a.out = static_cast<float*>(t.out.mutable_data());
  a.B = t.B, a.Hq = t.Hq, a.Hkv = t.Hkv, a.Lq = t.Lq, a.Lk = t.Lk, a.D = t.D;
  a.scale = scale;
  a.causal = causal;
  a.mode = static_cast<AttnMode>(mode);
  a.threshold = threshold;
  a.block_q = block_q;
  a.block_k = block_k;
  a.mB = a.mH = 1;
  const int64_t nq = (t.Lq + block_q - 1) / block_q, nkv = (t.Lk + block_k - 1) / block_k;
  py::array num, list;
  auto check_heads = [&](const char* arg, const py::array& m) {
    if ((m.shape(0) != 1 && m.shape(0) != t.B) || (m.shape(1) != 1 && m.shape(1) != t.Hkv && m.shape(1) != t.Hq) ||
        m.shape(2) != nq)
      fail(fn, std::string("argument '") + arg + "' has shape " + bind::shape_str(m) + ", expected [1 or B=" +
                   std::to_string(t.B) + ", 1, Hkv=" + std::to_string(t.Hkv) + " or Hq=" + std::to_string(t.Hq) +
                   ", n_q_blocks=" + std::to_string(nq) + ", ...]");
  };
  if (a.mode == AttnMode::kBlockMask) {
    if (kv_num_obj.is_none() || kv_idx_obj.is_none()) fail(fn, "mode block_mask needs 'kv_num_blocks' and 'kv_indices'");
    num = bind::require_array<int32_t>(fn, "kv_num_blocks", kv_num_obj, 3);
    list = bind::require_array<int32_t>(fn, "kv_indices", kv_idx_obj, 4);
    check_heads("kv_num_blocks", num);
    for (int i = 0; i < 3; ++i)
      if (list.shape(i) != num.shape(i)) fail(fn, "argument 'kv_indices' has shape " + bind::shape_str(list) + ", expected kv_num_blocks' " + bind::shape_str(num) + " + (cap,)");
    a.cap = list.shape(3);
    a.kv_num = static_cast<const int32_t*>(num.data());
    a.list = static_cast<const int32_t*>(list.data());
    const int64_t rows = num.size();
    check_range(fn, "kv_num_blocks", a.kv_num, rows, 0, a.cap + 1);
    for (int64_t i = 0; i < rows; ++i) check_range(fn, "kv_indices", a.list + i * a.cap, a.kv_num[i], 0, nkv);
  } else if (a.mode == AttnMode::kEarlyStop) {
    if (order_obj.is_none()) fail(fn, "mode early_stop needs 'order'");
    list = bind::require_array<int32_t>(fn, "order", order_obj, 4);
    check_heads("order", list);
    if (list.shape(3) != nkv) fail(fn, "argument 'order' has shape " + bind::shape_str(list) + ", expected n_kv_blocks=" + std::to_string(nkv) + " in dim 3");
    a.cap = nkv;
    a.list = static_cast<const int32_t*>(list.data());
    check_range(fn, "order", a.list, list.size(), 0, nkv);
  }
  if (a.list) a.mB = list.shape(0), a.mH = list.shape(1);
  BlockAttnStats st;
  if (t.B > 0 && t.Hq > 0 && t.Lq > 0) {
    py::gil_scoped_release release;
    st = block_attention_f32(a);
  }
  int64_t* s = static_cast<int64_t*>(stats.mutable_data());
  s[0] = st.total;
  s[1] = st.computed;
  s[2] = st.total - st.computed;
  s[3] = st.scored_only;
}

GatherAttnArgs gather_args(const Qkv& t, float scale, py::array& out) {
  GatherAttnArgs a{};
  a.q = static_cast<const float*>(t.q.data());
  a.k = static_cast<const float*>(t.k.data());
  a.v = static_cast<const float*>(t.v.data());
  a.out = static_cast<float*>(out.mutable_data());
  a.B = t.B, a.Hq = t.Hq, a.Hkv = t.Hkv, a.Lk = t.Lk, a.D = t.D;
  a.scale = scale;
  return a;
}

void gathered_decode_attention(py::handle q, py::handle k, py::handle v, py::handle idx_obj, py::handle out, float scale) {
  const char* fn = "gathered_decode_attention";
  Qkv t = check_qkv(fn, q, k, v, out);
  if (t.Lq != 1) fail(fn, "argument 'q' must be one decode query [B, Hq, 1, D], got " + bind::shape_str(t.q));
  py::array idx = bind::require_array<int32_t>(fn, "token_indices", idx_obj, 3);
  if (idx.shape(0) != t.B || (idx.shape(1) != t.Hq && idx.shape(1) != t.Hkv) || idx.shape(2) < 1)
    fail(fn, "argument 'token_indices' has shape " + bind::shape_str(idx) + ", expected [B, Hkv or Hq, k_sel >= 1]");
  check_range(fn, "token_indices", static_cast<const int32_t*>(idx.data()), idx.size(), 0, t.Lk);
  GatherAttnArgs a = gather_args(t, scale, t.out);
  a.idx = static_cast<const int32_t*>(idx.data());
  a.Hsel = idx.shape(1), a.n_sel = idx.shape(2);
  py::gil_scoped_release release;
  gather_attention_f32(a);
}

void double_sparsity_decode(py::handle q, py::handle k, py::handle v, py::handle label_obj, py::handle ch_obj, int64_t k_sel,
                            py::handle out, float scale) {
  const char* fn = "double_sparsity_decode";
  Qkv t = check_qkv(fn, q, k, v, out);
  if (t.Lq != 1) fail(fn, "argument 'q' must be one decode query [B, Hq, 1, D], got " + bind::shape_str(t.q));
  py::array label = bind::require_array<float>(fn, "k_label", label_obj, 4);
  py::array ch = bind::require_array<int32_t>(fn, "q_channels", ch_obj, 2);
  if ((ch.shape(0) != t.Hq && ch.shape(0) != t.Hkv) || ch.shape(1) < 1)
    fail(fn, "argument 'q_channels' has shape " + bind::shape_str(ch) + ", expected [Hq or Hkv, r >= 1]");
  const int64_t r = ch.shape(1);
  if (label.shape(0) != t.B || label.shape(1) != t.Hkv || label.shape(2) != t.Lk || label.shape(3) != r)
    fail(fn, "argument 'k_label' has shape " + bind::shape_str(label) + ", expected [B, Hkv, Lk, r=" + std::to_string(r) + "]");
  check_range(fn, "q_channels", static_cast<const int32_t*>(ch.data()), ch.size(), 0, t.D);
  if (k_sel < 1) fail(fn, "argument 'k_sel' must be >= 1, got " + std::to_string(k_sel));
  GatherAttnArgs a = gather_args(t, scale, t.out);
  a.Hsel = ch.shape(0);
  a.n_sel = k_sel < t.Lk ? k_sel : t.Lk;
  a.label = static_cast<const float*>(label.data());
  a.channels = static_cast<const int32_t*>(ch.data());
  a.r = r;
  py::gil_scoped_release release;
  gather_attention_f32(a);
}

}  // namespace

SPARSEFORGE_BIND_OP(
    block_attention,
    [](py::module_& mod) {
      mod.def("block_attention", &block_attention, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("stats"),
              py::arg("mode"), py::arg("causal"), py::arg("scale"), py::arg("threshold"), py::arg("block_q"),
              py::arg("block_k"), py::arg("kv_num_blocks") = py::none(), py::arg("kv_indices") = py::none(),
              py::arg("order") = py::none(),
              "Tiled fp32 attention with key-block skipping (see sparseforge.ops.block_attention for semantics).\n\n"
              "q [B, Hq, Lq, D], k/v [B, Hkv, Lk, D], out like q (written), stats int64 [4] (written: total, computed,\n"
              "skipped, scored_only); mode 0 dense, 1 threshold, 2 block_mask (kv_num_blocks int32 [mB, mH, nq],\n"
              "kv_indices int32 [mB, mH, nq, cap]), 3 early_stop (order int32 [mB, mH, nq, n_kv_blocks]).");
      mod.def("gathered_decode_attention", &gathered_decode_attention, py::arg("q"), py::arg("k"), py::arg("v"),
              py::arg("token_indices"), py::arg("out"), py::arg("scale"),
              "Decode attention over selected tokens: token_indices int32 [B, Hq or Hkv, k_sel] in [0, Lk).");
      mod.def("double_sparsity_decode", &double_sparsity_decode, py::arg("q"), py::arg("k"), py::arg("v"),
              py::arg("k_label"), py::arg("q_channels"), py::arg("k_sel"), py::arg("out"), py::arg("scale"),
              "Label scores (k_label [B, Hkv, Lk, r], q_channels int32 [Hq or Hkv, r]) -> top-k_sel -> attention.");
    },
    [] { return kernel_name("block_attention", "f32", select_block_attention(active_isa())); });
