"""The ``wasm`` backend: sparseforge's CPU kernels compiled to WebAssembly and run through wasmtime.

``sparseforge.wasm`` is a single-threaded wasm32-wasi reactor (``python scripts/build_wasm.py``, or the
optional CMake step when ``ziglang`` is installed) with C ABI exports (``csrc/wasm/``). This module is
torch-free: NumPy arrays are copied into the instance's linear memory, one export runs the kernel, and
the result is copied out. The op functions take the arguments of the ``sparseforge._C`` functions of the
same name and check them the same way (exact dtype, C-contiguous, shapes; nothing is cast silently).

A wasmtime call from Python costs tens of microseconds, so every op is one export call: the inputs go
into one reusable scratch block, the output comes back from it. Weights that stay the same across calls
(a model's layers) are copied in once by :meth:`WasmKernels.nm_gemm_plan` / :meth:`spmm_conv_plan`.

Which kernels run: ``SPARSEFORGE_WASM_ISA=wasm`` (SIMD128, the default) or ``scalar`` (the scalar
references compiled to wasm), the module's counterpart of ``SPARSEFORGE_ISA``; ``kernels(isa=...)``
picks it per instance. ``SPARSEFORGE_WASM_MODULE`` points at another module file.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.util
import math
import os
import threading
from pathlib import Path

import numpy as np

from .wasm_attention import AttentionOps

__all__ = ["module_path", "unavailable_reason", "built_ops", "kernels", "WasmKernels", "WasmError", "ISAS", "OPS"]

ISAS = ("scalar", "wasm")
_ISA_CODES = {0: "scalar", 3: "wasm"}  # sparseforge::Isa values
# Ops with a Python wrapper (block_attention's in wasm_attention.py); a module lists those it exports.
OPS = ("group_nnz", "nm_gemm", "spgemm", "spmm_conv", "block_attention")


class WasmError(ValueError):
    """A kernel export refused its arguments (the module's own check, message from sf_last_error)."""


def module_path() -> Path | None:
    """The module file: ``SPARSEFORGE_WASM_MODULE``, else the one installed in the package, else None."""
    env = os.environ.get("SPARSEFORGE_WASM_MODULE", "").strip()
    if env:
        return Path(env) if Path(env).is_file() else None
    p = Path(__file__).resolve().parents[1] / "_wasm" / "sparseforge.wasm"
    return p if p.is_file() else None


def unavailable_reason() -> str | None:
    """None when the backend can run here, else why not (cheap: nothing is compiled)."""
    if importlib.util.find_spec("wasmtime") is None:
        return "wasmtime is not installed (pip install 'sparseforge[wasm]' or pip install wasmtime)"
    if module_path() is None:
        env = os.environ.get("SPARSEFORGE_WASM_MODULE", "").strip()
        if env:
            return f"SPARSEFORGE_WASM_MODULE={env} is not a file"
        return ("no WebAssembly module is built in this install (python scripts/build_wasm.py, or install with "
                "ziglang present so the CMake step builds it)")
    return None


def _leb128(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _export_names(data: bytes) -> set:
    """Names in a wasm binary's export section (id 7): sections are (id, LEB128 size, payload)."""
    i = 8  # magic + version
    while i < len(data):
        sid = data[i]
        size, i = _leb128(data, i + 1)
        if sid == 7:
            names, (count, i) = set(), _leb128(data, i)
            for _ in range(count):
                n, i = _leb128(data, i)
                names.add(data[i:i + n].decode())
                _, i = _leb128(data, i + n + 1)  # skip the kind byte and the index
            return names
        i += size
    return set()


def built_ops() -> tuple:
    """The ops the module file exports (``sf_<op>``), read from its export section: compiles nothing."""
    path = module_path()
    if path is None:
        return ()
    names = _export_names(path.read_bytes())
    return tuple(op for op in OPS if f"sf_{op}" in names)


# ---- argument checks (the messages of csrc/bindings/validate.h) ----------------------------------------

def _require(fn: str, arg: str, a, dtype, ndim: int, writable: bool = False) -> np.ndarray:
    where = f"{fn}(): argument '{arg}'"
    want = np.dtype(dtype)
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{where} must be a numpy.ndarray of {want}, got {type(a).__module__}.{type(a).__qualname__}"
                        " (for a torch tensor pass tensor.numpy())")
    if a.dtype != want:
        raise TypeError(f"{where} must have dtype {want}, got {a.dtype}; convert it explicitly, nothing is cast silently")
    if a.ndim != ndim:
        raise ValueError(f"{where} must be {ndim}-D, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{where} must be C-contiguous (row-major); call numpy.ascontiguousarray() on it first")
    if writable and not a.flags.writeable:
        raise ValueError(f"{where} must be writable")
    return a


def _align(n: int) -> int:
    return (n + 15) & ~15


class _Resident:
    """Arrays copied once into linear memory (a plan's weights); freed with the plan."""

    def __init__(self, k: "WasmKernels", arrays: list):
        self._k = k
        sizes = [_align(max(a.nbytes, 1)) for a in arrays]
        self.base = k._malloc(sum(sizes))
        self.addrs, off = [], self.base
        for a, s in zip(arrays, sizes):
            k._put(off, a)
            self.addrs.append(off)
            off += s

    def __del__(self):
        try:
            with self._k.lock:
                self._k._call("sf_free", self.base)
        except Exception:  # interpreter shutdown: the instance may be gone already
            pass


class _RawCall:
    """Calls an export through wasmtime's unchecked raw-value entry point.

    ``Func.__call__`` converts and type-checks every argument in Python (a few microseconds each: ~60 µs for
    spmm_conv's 15 arguments, more than a small kernel takes). The exports here take only i32/f32 and
    return at most one i32, so the kinds are read once and each call fills one raw array. It relies on
    wasmtime-py internals; :meth:`WasmKernels.__init__` falls back to the public call when they change.
    """

    def __init__(self, store, func):
        import wasmtime
        from wasmtime import _ffi as ffi
        from wasmtime._func import enter_wasm

        ty = func.type(store)
        self.f32 = [p == wasmtime.ValType.f32() for p in ty.params]
        if not all(f or p == wasmtime.ValType.i32() for f, p in zip(self.f32, ty.params)) or len(ty.results) > 1 \
                or any(r != wasmtime.ValType.i32() for r in ty.results):
            raise TypeError("only i32/f32 parameters and at most one i32 result take the raw path")
        self.n = max(len(self.f32), len(ty.results), 1)
        self.store, self.func, self.ffi, self.enter_wasm = store, func, ffi, enter_wasm
        self.raw_t = ffi.wasmtime_val_raw * self.n
        self.func_ref = ctypes.byref(func._func)

    def __call__(self, *args):
        buf = self.raw_t()
        for i, (is_f32, v) in enumerate(zip(self.f32, args)):
            if is_f32:
                buf[i].f32 = v
            else:
                buf[i].i32 = v  # pointers above 2 GiB wrap to negative i32, as wasm reads them
        with self.enter_wasm(self.store) as trap:
            err = self.ffi.wasmtime_func_call_unchecked(self.store._context(), self.func_ref, buf, self.n, trap)
            if err:
                import wasmtime

                raise wasmtime.WasmtimeError._from_ptr(err)
        return buf[0].i32


class WasmKernels(AttentionOps):
    """One wasmtime instance of the module with its kernels' ISA fixed (``"wasm"`` or ``"scalar"``).

    Not thread-safe on its own; :func:`kernels` hands out one per ISA and serialises calls with a lock.
    """

    _engine = None
    _module = None
    _module_file = None

    def __init__(self, isa: str | None = None, path: str | os.PathLike | None = None):
        import wasmtime

        isa = isa or os.environ.get("SPARSEFORGE_WASM_ISA", "").strip() or "wasm"
        if isa not in ISAS:
            raise ValueError(f"SPARSEFORGE_WASM_ISA / isa must be one of {', '.join(ISAS)}, got {isa!r}")
        path = Path(path) if path else module_path()
        if path is None:
            raise RuntimeError(f"the wasm backend is not available: {unavailable_reason()}")
        cls = type(self)
        if cls._module is None or cls._module_file != path:  # compile once per process (~0.3 s)
            cls._engine = wasmtime.Engine()
            cls._module = wasmtime.Module.from_file(cls._engine, str(path))
            cls._module_file = path
        self.path = path
        self._store = wasmtime.Store(cls._engine)
        wasi = wasmtime.WasiConfig()
        wasi.env = [("SPARSEFORGE_ISA", isa)]  # the module's shared dispatch reads it, as _C does
        self._store.set_wasi(wasi)
        linker = wasmtime.Linker(cls._engine)
        linker.define_wasi()
        inst = linker.instantiate(self._store, cls._module)
        self._ex = inst.exports(self._store)
        self._ex["_initialize"](self._store)
        self._mem = self._ex["memory"]
        self._fns = {}
        for e in cls._module.exports:
            if e.name.startswith("sf_"):
                f = self._ex[e.name]
                try:
                    self._fns[e.name] = _RawCall(self._store, f)
                except Exception:  # another wasmtime-py layout: the public (slower) call
                    self._fns[e.name] = lambda *a, f=f: f(self._store, *a)
        self.isa = _ISA_CODES.get(self._call("sf_isa"), "?")
        self.lock = threading.RLock()
        self._scratch, self._scratch_size = 0, 0
        self._view_key, self._view = None, None

    # ---- plumbing ----------------------------------------------------------------------------------

    @property
    def ops(self) -> tuple:
        """The ops this module exports (sf_<op>) that have a wrapper here."""
        return tuple(op for op in OPS if f"sf_{op}" in self._fns)

    def kernel_for(self, op: str) -> str:
        """Kernel name after DESIGN.md's convention. spgemm (hash/scatter bound) and block_attention (not yet)
        have no SIMD128 variant: they run their scalar references in both of the module's ISAs."""
        isa = "scalar" if op in ("spgemm", "block_attention") else self.isa
        return f"{op}_f32__{isa}"

    def _call(self, name: str, *args):
        return self._fns[name](*args)

    def _memory(self) -> np.ndarray:
        """A uint8 view of linear memory, rebuilt when memory has grown (a malloc may grow it)."""
        ptr = self._mem.data_ptr(self._store)
        n = self._mem.data_len(self._store)
        key = (ctypes.addressof(ptr.contents), n)
        if key != self._view_key:
            self._view = np.ctypeslib.as_array(ptr, shape=(n,))
            self._view_key = key
        return self._view

    def _malloc(self, nbytes: int) -> int:
        p = self._call("sf_malloc", nbytes) & 0xFFFFFFFF  # an address: unsigned
        if p == 0:
            raise MemoryError(f"wasm module: could not allocate {nbytes} bytes (wasm32 memory is at most 4 GiB)")
        return p

    def _scratch_for(self, nbytes: int) -> int:
        if nbytes > self._scratch_size:
            if self._scratch:
                self._call("sf_free", self._scratch)
            size = max(nbytes, 2 * self._scratch_size, 1 << 16)
            self._scratch, self._scratch_size = self._malloc(size), size
        return self._scratch

    def _put(self, addr: int, a: np.ndarray) -> None:
        if a.nbytes:
            self._memory()[addr:addr + a.nbytes] = a.reshape(-1).view(np.uint8)

    def _get(self, addr: int, dtype, shape, out: np.ndarray | None = None) -> np.ndarray:
        count = int(np.prod(shape))
        src = np.frombuffer(self._memory(), dtype=dtype, count=count, offset=addr).reshape(shape)
        if out is None:
            return src.copy()
        out[...] = src
        return out

    def _stage(self, arrays: list, out_bytes: list[int]) -> tuple[list[int], list[int]]:
        """Copies ``arrays`` (None -> address 0) into the scratch block after room for outputs; one block,
        so one possible malloc per call at most."""
        sizes = [_align(max(a.nbytes, 1)) if a is not None else 0 for a in arrays]
        out_sizes = [_align(max(b, 1)) for b in out_bytes]
        off = self._scratch_for(sum(sizes) + sum(out_sizes))
        out_addrs, addrs = [], []
        for s in out_sizes:
            out_addrs.append(off)
            off += s
        for a, s in zip(arrays, sizes):
            addrs.append(off if a is not None else 0)
            if a is not None:
                self._put(off, a)
            off += s
        return addrs, out_addrs

    def _check_rc(self, rc: int) -> None:
        if rc != 0:
            addr = self._call("sf_last_error") & 0xFFFFFFFF
            msg = self._memory()[addr:addr + 4096].tobytes().split(b"\0", 1)[0]
            raise WasmError(msg.decode("utf-8", "replace"))

    # ---- ops (the signatures of sparseforge._C) ------------------------------------------------------

    def group_nnz(self, w: np.ndarray, m: int) -> np.ndarray:
        """Nonzero count per group of ``m`` consecutive values along each row: int32 [rows, cols // m]."""
        w = _require("group_nnz", "w", w, np.float32, 2)
        if not 1 <= m <= 64:
            raise ValueError(f"group_nnz(): argument 'm' must be in [1, 64], got {m}")
        rows, cols = w.shape
        if cols % m:
            raise ValueError(f"group_nnz(): argument 'w' has {cols} columns, which is not a multiple of m={m}")
        with self.lock:
            (pw,), (po,) = self._stage([w], [rows * (cols // m) * 4])
            self._check_rc(self._call("sf_group_nnz", pw, rows, cols, m, po))
            return self._get(po, np.int32, (rows, cols // m))

    def _nm_check(self, x, values, meta, n, m, k, bias, values_format):
        fn = "nm_gemm"
        if not 2 <= m <= 64:
            raise ValueError(f"nm_gemm(): argument 'm' must be in [2, 64], got {m}")
        if not 1 <= n <= m:
            raise ValueError(f"nm_gemm(): argument 'n' must be in [1, m={m}], got {n}")
        if k < 0 or k % m:
            raise ValueError(f"nm_gemm(): argument 'k' ({k}) must be a non-negative multiple of m={m}")
        if values_format not in ("f32", "bf16"):
            raise ValueError(f"nm_gemm(): argument 'values_format' must be 'f32' or 'bf16', got {values_format!r}")
        values = _require(fn, "values", values, np.uint16 if values_format == "bf16" else np.float32, 2)
        meta = _require(fn, "meta", meta, np.uint8, 2)
        rows, nnz = values.shape[0], k // m * n
        mrow = (nnz * max(1, math.ceil(math.log2(m))) + 7) // 8
        if values.shape[1] != nnz:
            raise ValueError(f"nm_gemm(): argument 'values' has shape {values.shape}, expected ({rows}, {nnz}) for "
                             f"k={k} at {n}:{m}")
        if meta.shape != (rows, mrow):
            raise ValueError(f"nm_gemm(): argument 'meta' has shape {meta.shape}, expected ({rows}, {mrow})")
        if bias is not None:
            bias = _require(fn, "bias", bias, np.float32, 1)
            if bias.shape != (rows,):
                raise ValueError(f"nm_gemm(): argument 'bias' has shape {bias.shape}, expected ({rows},)")
        if x is not None:
            x = _require(fn, "x", x, np.float32, 2)
            if x.shape[1] != k:
                raise ValueError(f"nm_gemm(): argument 'x' has shape {x.shape}, expected (batch, k={k})")
        return x, values, meta, bias

    def _nm_out(self, out, batch, rows):
        if out is None:
            return None
        out = _require("nm_gemm", "out", out, np.float32, 2, writable=True)
        if out.shape != (batch, rows):
            raise ValueError(f"nm_gemm(): argument 'out' has shape {out.shape}, expected ({batch}, {rows})")
        return out

    def nm_gemm(self, x, values, meta, n: int, m: int, k: int, bias=None, out=None, values_format: str = "f32"):
        """Y = X @ W.T (+ bias), W N:M sparse (NMSparse layout); the arguments of ``_C.nm_gemm``."""
        x, values, meta, bias = self._nm_check(x, values, meta, n, m, k, bias, values_format)
        batch, rows = x.shape[0], values.shape[0]
        out = self._nm_out(out, batch, rows)
        with self.lock:
            (px, pv, pm, pb), (py,) = self._stage([x, values, meta, bias], [batch * rows * 4])
            self._check_rc(self._call("sf_nm_gemm", px, pv, int(values_format == "bf16"), pm, pb, py, batch, rows, k, n, m))
            return self._get(py, np.float32, (batch, rows), out)

    def nm_gemm_plan(self, values, meta, n: int, m: int, k: int, bias=None, values_format: str = "f32") -> "NmGemmPlan":
        """The weight (and bias) copied into the module once; ``plan.run(x)`` copies only x and y."""
        _, values, meta, bias = self._nm_check(None, values, meta, n, m, k, bias, values_format)
        return NmGemmPlan(self, values, meta, n, m, k, bias, values_format)

    def _spmm_check(self, nnz, offsets, idx_delta, values, c_out, c_in, block):
        fn = "spmm_conv"
        arrays = [_require(fn, "nnz", nnz, np.int32, 1), _require(fn, "offsets", offsets, np.int32, 1),
                  _require(fn, "idx_delta", idx_delta, np.int32, 1), _require(fn, "values", values, np.float32, 1)]
        if block not in (1, 2, 4):
            raise ValueError(f"spmm_conv(): argument 'block' must be 1, 2 or 4, got {block}")
        if c_out < 1 or c_in < 1:
            raise ValueError(f"spmm_conv(): arguments 'c_out' and 'c_in' must be >= 1, got {c_out}, {c_in}")
        nb = -(-c_out // block)
        if arrays[0].shape[0] != nb:
            raise ValueError(f"spmm_conv(): argument 'nnz' must have ceil(c_out / block) = {nb} entries, got {arrays[0].shape[0]}")
        if arrays[1].shape[0] != nb + 1:
            raise ValueError(f"spmm_conv(): argument 'offsets' must have {nb + 1} entries, got {arrays[1].shape[0]}")
        total = int(arrays[1][-1])
        if arrays[2].shape[0] != total or arrays[3].shape[0] != total * block:
            raise ValueError(f"spmm_conv(): arguments 'idx_delta' / 'values' must have offsets[-1] = {total} / "
                             f"{total * block} entries, got {arrays[2].shape[0]} / {arrays[3].shape[0]}")
        return arrays

    def _spmm_io(self, x, bias, out, c_out, c_in, out_min, out_max):
        fn = "spmm_conv"
        x = _require(fn, "x", x, np.float32, 3)
        if x.shape[1] != c_in:
            raise ValueError(f"spmm_conv(): argument 'x' has {x.shape[1]} input channels (shape {x.shape}), the packed "
                             f"weight has c_in={c_in}")
        if bias is not None:
            bias = _require(fn, "bias", bias, np.float32, 1)
            if bias.shape != (c_out,):
                raise ValueError(f"spmm_conv(): argument 'bias' must have c_out = {c_out} entries, got shape {bias.shape}")
        if math.isnan(out_min) or math.isnan(out_max) or out_min > out_max:
            raise ValueError("spmm_conv(): argument 'out_min' must be <= out_max (and neither NaN)")
        n, _, hw = x.shape
        if out is not None:
            out = _require(fn, "out", out, np.float32, 3, writable=True)
            if out.shape != (n, c_out, hw):
                raise ValueError(f"spmm_conv(): argument 'out' must have shape ({n}, {c_out}, {hw}), got {out.shape}")
        return x, bias, out

    def spmm_conv(self, x, nnz, offsets, idx_delta, values, c_out: int, c_in: int, block: int, bias=None,
                  out_min: float = -math.inf, out_max: float = math.inf, out=None):
        """Sparse 1x1 convolution over CHW activations; the arguments of ``_C.spmm_conv``."""
        packed = self._spmm_check(nnz, offsets, idx_delta, values, c_out, c_in, block)
        x, bias, out = self._spmm_io(x, bias, out, c_out, c_in, out_min, out_max)
        n, _, hw = x.shape
        with self.lock:
            (px, pn, po, pi, pv, pb), (py,) = self._stage([x, *packed, bias], [n * c_out * hw * 4])
            self._check_rc(self._call("sf_spmm_conv", px, pn, po, pi, packed[2].shape[0], pv, pb, py, c_out, c_in,
                                      block, n, hw, out_min, out_max))
            return self._get(py, np.float32, (n, c_out, hw), out)

    def spmm_conv_plan(self, nnz, offsets, idx_delta, values, c_out: int, c_in: int, block: int) -> "SpmmConvPlan":
        """The packed weight copied into the module and checked once (as ``_C.SpmmConvPlan``)."""
        return SpmmConvPlan(self, self._spmm_check(nnz, offsets, idx_delta, values, c_out, c_in, block), c_out, c_in, block)

    def spgemm(self, a_indptr, a_indices, a_data, a_shape, b_indptr, b_indices, b_data, b_shape):
        """C = A @ B for canonical CSR inputs; returns (indptr, indices, data) as ``_C.spgemm`` does."""
        fn = "spgemm"
        for name, shape in (("a_shape", a_shape), ("b_shape", b_shape)):
            if not (isinstance(shape, tuple) and len(shape) == 2):
                raise TypeError(f"spgemm(): argument '{name}' must be a tuple (rows, cols)")
            if shape[0] < 0 or shape[1] < 0:
                raise ValueError(f"spgemm(): argument '{name}' must be non-negative, got {shape}")
        if not isinstance(a_data, np.ndarray) or a_data.dtype not in (np.float32, np.float64):
            raise TypeError("spgemm(): argument 'a_data' must be a numpy.ndarray of float32 or float64")
        if not isinstance(a_indptr, np.ndarray) or a_indptr.dtype not in (np.int32, np.int64):
            raise TypeError("spgemm(): argument 'a_indptr' must be a numpy.ndarray of int32 or int64")
        vt, it = a_data.dtype, a_indptr.dtype
        ap, aj, ax = (_require(fn, f"a_{s}", a, t, 1) for s, a, t in
                      (("indptr", a_indptr, it), ("indices", a_indices, it), ("data", a_data, vt)))
        bp, bj, bx = (_require(fn, f"b_{s}", a, t, 1) for s, a, t in
                      (("indptr", b_indptr, it), ("indices", b_indices, it), ("data", b_data, vt)))
        for s, p, j, x, shape in (("a", ap, aj, ax, a_shape), ("b", bp, bj, bx, b_shape)):
            if p.shape[0] != shape[0] + 1:
                raise ValueError(f"spgemm(): argument '{s}_indptr' must have rows + 1 = {shape[0] + 1} entries for "
                                 f"{s}_shape={shape}, got {p.shape[0]}")
            if j.shape[0] != x.shape[0]:
                raise ValueError(f"spgemm(): argument '{s}_indices' has {j.shape[0]} entries but '{s}_data' has {x.shape[0]}")
        if a_shape[1] != b_shape[0]:
            raise ValueError(f"spgemm(): shapes do not match: a_shape={a_shape} and b_shape={b_shape}; a's columns must "
                             "equal b's rows")
        with self.lock:
            (pap, paj, pax, pbp, pbj, pbx), (pout,) = self._stage([ap, aj, ax, bp, bj, bx], [16])
            self._check_rc(self._call("sf_spgemm", int(vt == np.float64), int(it == np.int64), pap, paj, pax,
                                      a_shape[0], a_shape[1], aj.shape[0], pbp, pbj, pbx, b_shape[1], bj.shape[0], pout))
            cp, cj, cx, nnz = (int(v) for v in self._get(pout, np.uint32, (4,)))
            return (self._get(cp, it, (a_shape[0] + 1,)), self._get(cj, it, (nnz,)), self._get(cx, vt, (nnz,)))


class NmGemmPlan:
    """An N:M weight resident in the module: ``run(x)`` = ``nm_gemm(x, values, meta, ...)``."""

    def __init__(self, k: WasmKernels, values, meta, n, m, kdim, bias, values_format):
        self._k = k
        self.rows, self.n, self.m, self.k = values.shape[0], n, m, kdim
        self._bf16 = int(values_format == "bf16")
        self._res = _Resident(k, [values, meta] + ([bias] if bias is not None else []))
        self._pv, self._pm = self._res.addrs[:2]
        self._pb = self._res.addrs[2] if bias is not None else 0

    def run(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        k = self._k
        x = _require("nm_gemm", "x", x, np.float32, 2)
        if x.shape[1] != self.k:
            raise ValueError(f"nm_gemm(): argument 'x' has shape {x.shape}, expected (batch, k={self.k})")
        batch = x.shape[0]
        out = k._nm_out(out, batch, self.rows)
        with k.lock:
            (px,), (py,) = k._stage([x], [batch * self.rows * 4])
            k._check_rc(k._call("sf_nm_gemm", px, self._pv, self._bf16, self._pm, self._pb, py, batch, self.rows,
                                self.k, self.n, self.m))
            return k._get(py, np.float32, (batch, self.rows), out)


class SpmmConvPlan:
    """A packed sparse 1x1-conv weight resident in the module and checked once; ``run`` as _C.SpmmConvPlan."""

    def __init__(self, k: WasmKernels, packed: list, c_out: int, c_in: int, block: int):
        self._k = k
        self.c_out, self.c_in, self.block = c_out, c_in, block
        self._entries = packed[2].shape[0]
        self._res = _Resident(k, packed)
        with k.lock:  # the module's O(nnz) index check, once: a run with no images
            k._check_rc(k._call("sf_spmm_conv", 0, *self._res.addrs[:3], self._entries, self._res.addrs[3], 0, 0,
                                c_out, c_in, block, 0, 0, -math.inf, math.inf))

    def run(self, x, bias=None, out_min: float = -math.inf, out_max: float = math.inf, out=None) -> np.ndarray:
        k = self._k
        x, bias, out = k._spmm_io(x, bias, out, self.c_out, self.c_in, out_min, out_max)
        n, _, hw = x.shape
        with k.lock:
            (px, pb), (py,) = k._stage([x, bias], [n * self.c_out * hw * 4])
            pn, po, pi, pv = self._res.addrs
            k._check_rc(k._call("sf_spmm_conv", px, pn, po, pi, -1, pv, pb, py, self.c_out, self.c_in, self.block, n,
                                hw, out_min, out_max))
            return k._get(py, np.float32, (n, self.c_out, hw), out)


_INSTANCES: dict[str, WasmKernels] = {}
_INSTANCES_LOCK = threading.Lock()


@atexit.register
def _close_stores() -> None:
    """Frees the instances while wasmtime's bindings still exist: at interpreter teardown its finalizers
    would otherwise call into a half-unloaded module and print 'Exception ignored' noise."""
    for inst in list(_INSTANCES.values()):
        try:
            inst._store.close()
        except Exception:
            pass
    _INSTANCES.clear()


def kernels(isa: str | None = None) -> WasmKernels:
    """The process's instance for ``isa`` (default ``SPARSEFORGE_WASM_ISA``, else ``"wasm"``)."""
    isa = isa or os.environ.get("SPARSEFORGE_WASM_ISA", "").strip() or "wasm"
    with _INSTANCES_LOCK:
        inst = _INSTANCES.get(isa)
        if inst is None:
            inst = _INSTANCES[isa] = WasmKernels(isa)
        return inst
