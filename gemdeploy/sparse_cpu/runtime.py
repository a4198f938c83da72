"""Load a sparse CPU artifact (model.sparse-cpu.safetensors) and run it on the CPU with numpy + scipy.

The file is safetensors: the weights as plain arrays (per conv/linear layer its BatchNorm-folded weight in CSR:
``indptr``/``indices`` int32, ``data`` float32, and a float32 ``bias``) and, in the header's metadata under
``gemdeploy.sparse_cpu``, a JSON op graph. Loading it parses JSON and arrays: no code is executed.

Layout inside the runtime: a 4-D activation is (C, H, W, B) and a 2-D one (F, B), the batch innermost. Then a
flatten is a free reshape, and the input window of a kernel offset (c, r, s) is one strided block whose inner
runs are Wo*B floats long, so gathering the rows a sparse conv needs is a fast copy even at 7x7.

Kernels per conv/linear layer, chosen at export time by timing both on real inputs (recorded per batch size):
  * ``csr``:   Y = bias (+ residual); Y += W_csr @ cols, with scipy's CSR x dense kernel (csr_matvecs). Only the
               columns the layer uses (input channels x kernel offsets with any nonzero weight) are gathered.
  * ``dense``: Y = W[:, used] @ cols with BLAS (numpy), on the same gathered columns.
Residual adds and ReLUs are fused into the layer that feeds them. Threads split the batch: each worker runs the
whole network on its slice (scipy's sparse kernel and numpy's copies release the GIL).

This module imports numpy, scipy and safetensors only; never torch or ONNX Runtime.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from gemdeploy.errors import GemdeployError

FILE_FORMAT = "gemdeploy-sparse-cpu"
FORMAT_VERSION = 1
META_KEY = "gemdeploy.sparse_cpu"
ENGINES = ("numpy", "torch")
KERNELS = ("csr", "unrolled", "dense")
MIN_CHUNK_MS = 0.5  # split a batch across threads only into chunks of at least this much (estimated) work
UNROLL_MAX_NNZ = 8_000_000  # entries (8 bytes each): an unrolled conv above this (64 MB) is not offered
F32 = np.float32


def _public_csr_matvecs(rows, cols, n, indptr, indices, data, x, y) -> None:
    from scipy.sparse import csr_array

    y.reshape(rows, n)[...] += csr_array((data, indices, indptr), shape=(rows, cols)) @ x.reshape(cols, n)


def _public_csr_matvec(rows, cols, indptr, indices, data, x, y) -> None:
    _public_csr_matvecs(rows, cols, 1, indptr, indices, data, x, y)


try:  # scipy's compiled CSR kernels, y += A @ x (what A @ x runs inside, without its Python-level checks)
    from scipy.sparse._sparsetools import csr_matvec, csr_matvecs
except Exception:  # noqa: BLE001 - a scipy without the private module: the public API, same arithmetic
    csr_matvec, csr_matvecs = _public_csr_matvec, _public_csr_matvecs


def csr_product(rows, cols, n, indptr, indices, data, x, y) -> None:
    """y += CSR @ x for flat C-ordered float32 x (cols x n) and y (rows x n); one vector takes the tighter loop."""
    if n == 1:
        csr_matvec(rows, cols, indptr, indices, data, x, y)
    else:
        csr_matvecs(rows, cols, n, indptr, indices, data, x, y)


class NumpyEngine:
    """The default engine: scipy's CSR kernels and numpy's BLAS."""

    name = "numpy"

    def sparse(self, csr: tuple, rows: int, cols: int, n: int, x: np.ndarray, y: np.ndarray) -> None:
        """y (rows, n) += CSR (rows, cols) @ x (cols, n); ``csr`` = (indptr, indices, data)."""
        csr_product(rows, cols, n, csr[0], csr[1], csr[2], x.reshape(-1), y.reshape(-1))

    def dense(self, w: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
        y += w @ x


NUMPY_ENGINE = NumpyEngine()


_BLAS: list | None = None


def _blas_libs() -> list:
    """numpy's BLAS libraries as threadpoolctl controllers (empty without threadpoolctl: BLAS keeps its default)."""
    global _BLAS
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS = list(ThreadpoolController().select(user_api="blas").lib_controllers)
        except Exception:  # noqa: BLE001 - optional: missing, or a BLAS it cannot drive
            _BLAS = []
    return _BLAS


class blas_threads:
    """Context: numpy's BLAS uses ``n`` threads inside (process-wide while it lasts; restored after)."""

    def __init__(self, n: int | None):
        self.n, self.saved = n, []

    def __enter__(self):
        if self.n is not None:
            for lib in _blas_libs():
                self.saved.append((lib, lib.get_num_threads()))
                lib.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        for lib, n in self.saved:
            lib.set_num_threads(n)
        self.saved = []


# ------------------------------------------------------------------------------------------------ the artifact


def save(path: str | Path, graph: dict, tensors: dict[str, np.ndarray]) -> None:
    """Write the op graph and its arrays as one safetensors file (no pickles)."""
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path),
              metadata={META_KEY: json.dumps(graph, separators=(",", ":"))})


def read(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(op graph, arrays) of an artifact, or a GemdeployError naming what is wrong with the file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise GemdeployError(f"{path} does not exist (write it with `gemdeploy export RUN --precision sparse-cpu`)")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types on a corrupt header
        raise GemdeployError(f"{path} is not a readable safetensors file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if META_KEY not in meta:
        raise GemdeployError(f"{path} holds no sparse CPU graph (no '{META_KEY}' metadata): not written by "
                             "`gemdeploy export --precision sparse-cpu`")
    try:
        graph = json.loads(meta[META_KEY])
    except ValueError as exc:
        raise GemdeployError(f"{path}: its sparse CPU graph is not valid JSON ({exc})") from None
    return graph, tensors


def load(path: str | Path, *, threads: int = 1, engine: str = "numpy") -> "SparseModel":
    """Load an artifact for inference: ``load(path, threads=2)(images)`` -> logits."""
    graph, tensors = read(path)
    return SparseModel(graph, tensors, threads=threads, engine=engine, source=str(path))


# ------------------------------------------------------------------------------------------------ validation


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise GemdeployError(f"malformed sparse CPU graph: {what}")


def _ints(v, n: int, what: str) -> tuple[int, ...]:
    _need(isinstance(v, list) and len(v) == n and all(isinstance(i, int) and i >= 0 for i in v),
          f"{what} must be {n} non-negative integers, got {v!r}")
    return tuple(v)


def _tensor(tensors: dict, name, dtype, shape: tuple | None = None) -> np.ndarray:
    _need(isinstance(name, str) and name in tensors, f"missing tensor {name!r}")
    arr = tensors[name]
    _need(arr.dtype == dtype, f"tensor {name} is {arr.dtype}, expected {np.dtype(dtype)}")
    if shape is not None:
        _need(tuple(arr.shape) == tuple(shape), f"tensor {name} has shape {tuple(arr.shape)}, expected {tuple(shape)}")
    return np.ascontiguousarray(arr)


def _csr(tensors: dict, spec: dict, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    w = spec.get("weight")
    _need(isinstance(w, dict), f"{spec.get('name')}: no weight")
    indptr = _tensor(tensors, w.get("indptr"), np.int32, (rows + 1,))
    indices = _tensor(tensors, w.get("indices"), np.int32)
    data = _tensor(tensors, w.get("data"), F32)
    nnz = len(data)
    _need(indices.shape == (nnz,) and indptr[0] == 0 and indptr[-1] == nnz and bool(np.all(np.diff(indptr) >= 0)),
          f"{spec.get('name')}: inconsistent CSR arrays")
    _need(nnz == 0 or (int(indices.min()) >= 0 and int(indices.max()) < cols),
          f"{spec.get('name')}: column index out of range")
    return indptr, indices, data


# ------------------------------------------------------------------------------------------------ ops (numpy)


def _pick(kernel: dict, batch: int) -> str:
    """The kernel measured at the batch size closest (in log scale) to ``batch``."""
    best = min(kernel, key=lambda b: abs(math.log(int(b)) - math.log(max(1, batch))))
    return kernel[best]


def _activate(y: np.ndarray, act) -> np.ndarray:
    if act == "relu":
        np.maximum(y, 0, out=y)
    elif act is not None:  # ["clip", lo, hi]
        np.clip(y, act[1], act[2], out=y)
    return y


class Op:
    """One step of the graph: reads slots ``ins`` (and maybe ``res``), writes slot ``out``."""

    ins: tuple[int, ...] = ()
    res: int | None = None
    out = 0
    owns: frozenset = frozenset()  # input slots whose last use is this op: their buffers may be reused in place

    def run(self, vals: list) -> np.ndarray:
        raise NotImplementedError


class MatOp(Op):
    """Conv2d or Linear with folded BatchNorm, optional fused residual add and activation."""

    kernels: tuple[str, ...] = ("csr", "dense")

    def __init__(self, spec: dict, tensors: dict):
        self.name, self.spec = spec["name"], spec
        self.kernel = spec.get("kernel") or {"1": "csr"}
        _need(isinstance(self.kernel, dict) and self.kernel and all(
            k.isdigit() and int(k) >= 1 and v in KERNELS for k, v in self.kernel.items()),
            f"{self.name}: kernel must map batch sizes to one of {KERNELS}")
        self.act = spec.get("activation")
        _need(self.act in (None, "relu") or (isinstance(self.act, list) and len(self.act) == 3 and self.act[0] == "clip"),
              f"{self.name}: unknown activation {self.act!r}")
        self.forced: str | None = None  # tune(): run one kernel regardless of the recorded choice
        self._choice: dict[int, str] = {}
        self.engine = NUMPY_ENGINE

    def _setup(self, rows: int, cols: int, tensors: dict) -> None:
        indptr, indices, data = _csr(tensors, self.spec, rows, cols)
        self.rows, self.cols, self.nnz = rows, cols, len(data)
        self.bias = _tensor(tensors, self.spec.get("bias"), F32, (rows,))
        self.bias_col = self.bias[:, None]
        self.used = np.unique(indices).astype(np.intp)  # input columns with any nonzero weight
        self.all_used = len(self.used) == cols
        self.indptr, self.data, self.full_indices = indptr, data, indices
        # the same CSR over the gathered columns only (local column = position in ``used``)
        self.indices = np.searchsorted(self.used, indices).astype(np.int32)
        self.local_csr, self.full_csr = (indptr, self.indices, data), (indptr, indices, data)
        self._dense = None
        _need(all(v in self.kernels for v in self.kernel.values()), f"{self.name}: kernel not available for this op")

    @property
    def dense(self) -> np.ndarray:
        """W[:, used] as a dense matrix (built on first use: the file stores CSR only)."""
        if self._dense is None:
            w = np.zeros((self.rows, len(self.used)), F32)
            w[np.repeat(np.arange(self.rows), np.diff(self.indptr)), self.indices] = self.data
            self._dense = w
        return self._dense

    def kernel_for(self, batch: int) -> str:
        if self.forced:
            return self.forced
        k = self._choice.get(batch)
        if k is None:
            k = self._choice[batch] = _pick(self.kernel, batch)
        return k

    def _start(self, vals: list, n: int) -> np.ndarray:
        """A (rows, n) float32 buffer holding bias (+ residual): the residual's own buffer when it is free."""
        if self.res is None:
            y = np.empty((self.rows, n), F32)
            y[...] = self.bias_col
            return y
        r = vals[self.res].reshape(self.rows, n)
        if self.res in self.owns:
            r += self.bias_col
            return r
        return r + self.bias_col


class LinearOp(MatOp):
    def __init__(self, spec, tensors):
        super().__init__(spec, tensors)
        self._setup(spec["out_features"], spec["in_features"], tensors)

    def run(self, vals):
        x = vals[self.ins[0]]  # (F, B)
        n = x.shape[1]
        y = self._start(vals, n)
        if self.nnz:
            if self.kernel_for(n) == "csr":  # reads the input rows it needs in place: no gather
                self.engine.sparse(self.full_csr, self.rows, self.cols, n, x, y)
            else:
                self.engine.dense(self.dense, x if self.all_used else x[self.used], y)
        return _activate(y, self.act)


class Conv2dOp(MatOp):
    kernels = ("csr", "unrolled", "dense")

    def __init__(self, spec, tensors):
        super().__init__(spec, tensors)
        self.cin, self.cout = spec["in_channels"], spec["out_channels"]
        self.r, self.s = _ints(spec["kernel_size"], 2, "kernel_size")
        self.stride = _ints(spec["stride"], 2, "stride")
        self.pad = _ints(spec["padding"], 2, "padding")
        _need(min(self.stride) >= 1 and min(self.r, self.s) >= 1, f"{self.name}: bad kernel or stride")
        self._setup(self.cout, self.cin * self.r * self.s, tensors)
        self.pointwise = self.r == self.s == 1 and self.stride == (1, 1) and self.pad == (0, 0)
        self._parts = (self.used // (self.r * self.s), (self.used // self.s) % self.r, self.used % self.s)
        self._offsets: dict[tuple, tuple[np.ndarray, int]] = {}
        self._unrolled: dict[tuple, tuple] = {}
        shape = spec.get("in_shape")
        if "unrolled" in self.kernel.values() and isinstance(shape, list) and len(shape) == 3:
            self.unrolled(shape[1], shape[2])  # built at load, not on the first call

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        return (h + 2 * self.pad[0] - self.r) // self.stride[0] + 1, (w + 2 * self.pad[1] - self.s) // self.stride[1] + 1

    def unrolled(self, h: int, w: int) -> tuple:
        """The conv on an (h, w) input as one CSR matrix from (c, y, x) to (k, ho, wo) (zero padding dropped):
        applied to the (C*H*W, B) input it is the whole layer, with no gather and no padded copy."""
        got = self._unrolled.get((h, w))
        if got is not None:
            return got
        ho, wo = self.out_hw(h, w)
        rows_w = np.repeat(np.arange(self.rows), np.diff(self.indptr))
        c, r, s = self.full_indices // (self.r * self.s), (self.full_indices // self.s) % self.r, self.full_indices % self.s
        oy, ox = np.arange(ho), np.arange(wo)
        iy = oy[None, :, None] * self.stride[0] + r[:, None, None] - self.pad[0]  # (nnz, ho, 1)
        ix = ox[None, None, :] * self.stride[1] + s[:, None, None] - self.pad[1]  # (nnz, 1, wo)
        valid = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
        if int(valid.sum()) > UNROLL_MAX_NNZ:
            raise GemdeployError(f"{self.name}: the unrolled conv would hold {int(valid.sum()):,} entries "
                                 f"(limit {UNROLL_MAX_NNZ:,})")
        row = np.broadcast_to((rows_w[:, None, None] * ho + oy[None, :, None]) * wo + ox[None, None, :], valid.shape)[valid]
        col = np.broadcast_to((c[:, None, None] * h + iy) * w + ix, valid.shape)[valid]
        val = np.broadcast_to(self.data[:, None, None], valid.shape)[valid]
        order = np.lexsort((col, row))  # CSR: by output row, then input column (reads nearby input rows together)
        indptr = np.zeros(self.rows * ho * wo + 1, np.int32)
        np.cumsum(np.bincount(row, minlength=self.rows * ho * wo), out=indptr[1:])
        got = (indptr, col[order].astype(np.int32), np.ascontiguousarray(val[order], dtype=F32))
        self._unrolled[(h, w)] = got
        return got

    def _gather(self, x: np.ndarray, ho: int, wo: int) -> np.ndarray:
        """The used rows of im2col(x) as a (len(used), Ho*Wo*B) array."""
        c, h, w, b = x.shape
        if self.pointwise:
            cols = x.reshape(c, h * w * b)
            return cols if self.all_used else cols[self.used]
        (ph, pw), (sh, sw) = self.pad, self.stride
        if ph or pw:
            xp = np.zeros((c, h + 2 * ph, w + 2 * pw, b), F32)
            xp[:, ph:ph + h, pw:pw + w] = x
        else:
            xp = x
        hp, wp = xp.shape[1], xp.shape[2]
        key = (hp, wp, b)
        got = self._offsets.get(key)
        if got is None:
            uc, ur, us = self._parts
            off = (uc * (hp * wp * b) + ur * (wp * b) + us * b).astype(np.intp)
            got = self._offsets[key] = (off, int(off.max()) + 1)
        off, span = got
        # (offset, Ho, Wo, B) windows over the padded input: window row i starts at element i
        view = np.ndarray((span, ho, wo, b), F32, buffer=xp, strides=(4, sh * wp * b * 4, sw * b * 4, 4))
        return view[off].reshape(len(off), ho * wo * b)

    def run(self, vals):
        x = vals[self.ins[0]]
        c, h, w, b = x.shape
        ho, wo = self.out_hw(h, w)
        n = ho * wo * b
        y = self._start(vals, n)
        if self.nnz:
            kernel = self.kernel_for(b)
            if kernel == "unrolled":
                self.engine.sparse(self.unrolled(h, w), self.rows * ho * wo, c * h * w, b, x, y)
            elif kernel == "csr":
                self.engine.sparse(self.local_csr, self.rows, len(self.used), n, self._gather(x, ho, wo), y)
            else:
                self.engine.dense(self.dense, self._gather(x, ho, wo), y)
        return _activate(y, self.act).reshape(self.rows, ho, wo, b)


class AffineOp(Op):
    """A BatchNorm that could not be folded into its producer: per-channel scale and shift."""

    def __init__(self, spec, tensors):
        c = spec["channels"]
        self.scale = _tensor(tensors, spec.get("scale"), F32, (c,))
        self.shift = _tensor(tensors, spec.get("shift"), F32, (c,))
        self.act = spec.get("activation")

    def run(self, vals):
        x = vals[self.ins[0]]
        shape = (-1,) + (1,) * (x.ndim - 1)
        y = x * self.scale.reshape(shape)
        y += self.shift.reshape(shape)
        return _activate(y, self.act)


class AddOp(Op):
    def __init__(self, spec, tensors):
        self.act = spec.get("activation")

    def run(self, vals):
        a, b = self.ins
        if a in self.owns and a != b:
            y = vals[a]
            y += vals[b]
        elif b in self.owns and a != b:
            y = vals[b]
            y += vals[a]
        else:
            y = vals[a] + vals[b]
        return _activate(y, self.act)


class ActOp(Op):
    def __init__(self, spec, tensors):
        self.act = "relu" if spec["op"] == "relu" else ["clip", float(spec["min"]), float(spec["max"])]

    def run(self, vals):
        x = vals[self.ins[0]]
        return _activate(x if self.ins[0] in self.owns else x.copy(), self.act)


def _pool_out(size: int, k: int, s: int, p: int, ceil: bool) -> int:
    """PyTorch's pooling output size (a last window must start inside the input or its left padding)."""
    span = size + 2 * p - k
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out


class MaxPoolOp(Op):
    def __init__(self, spec, tensors):
        self.k = _ints(spec["kernel_size"], 2, "kernel_size")
        self.st = _ints(spec["stride"], 2, "stride")
        self.p = _ints(spec["padding"], 2, "padding")
        self.ceil = bool(spec.get("ceil_mode", False))
        _need(min(self.k) >= 1 and min(self.st) >= 1, "bad max pool")

    def run(self, vals):
        x = vals[self.ins[0]]
        c, h, w, b = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.k, self.st, self.p
        ho, wo = _pool_out(h, kh, sh, ph, self.ceil), _pool_out(w, kw, sw, pw, self.ceil)
        need_h, need_w = (ho - 1) * sh + kh, (wo - 1) * sw + kw
        if ph or pw or need_h > h or need_w > w:  # -inf where a window leaves the input
            xp = np.full((c, max(need_h, h + ph), max(need_w, w + pw), b), -np.inf, F32)
            xp[:, ph:ph + h, pw:pw + w] = x
        else:
            xp = x
        y = None
        for i in range(kh):
            for j in range(kw):
                win = xp[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw]
                if y is None:
                    y = win.copy()
                else:
                    np.maximum(y, win, out=y)
        return y


class AvgPoolOp(Op):
    """AvgPool2d without padding or ceil mode (a plain mean over each window)."""

    def __init__(self, spec, tensors):
        self.k = _ints(spec["kernel_size"], 2, "kernel_size")
        self.st = _ints(spec["stride"], 2, "stride")

    def run(self, vals):
        x = vals[self.ins[0]]
        (kh, kw), (sh, sw) = self.k, self.st
        ho, wo = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
        y = np.zeros((x.shape[0], ho, wo, x.shape[3]), F32)
        for i in range(kh):
            for j in range(kw):
                y += x[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw]
        y *= F32(1.0 / (kh * kw))
        return y


class AdaptiveAvgOp(Op):
    def __init__(self, spec, tensors):
        self.size = _ints(spec["output_size"], 2, "output_size")
        _need(min(self.size) >= 1, "bad adaptive pool size")

    def run(self, vals):
        x = vals[self.ins[0]]
        c, h, w, b = x.shape
        oh, ow = self.size
        if (oh, ow) == (1, 1):
            return x.reshape(c, h * w, b).mean(axis=1, dtype=F32).reshape(c, 1, 1, b)
        y = np.empty((c, oh, ow, b), F32)
        for i in range(oh):
            h0, h1 = (i * h) // oh, -(-((i + 1) * h) // oh)
            for j in range(ow):
                w0, w1 = (j * w) // ow, -(-((j + 1) * w) // ow)
                y[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2), dtype=F32)
        return y


class FlattenOp(Op):
    def __init__(self, spec, tensors):
        pass

    def run(self, vals):
        x = vals[self.ins[0]]
        if x.ndim == 2:
            return x
        y = x.reshape(-1, x.shape[-1])  # (C, H, W, B) -> (C*H*W, B): torch's (c, h, w) order, free
        return y if self.ins[0] in self.owns else y.copy()  # never alias a buffer someone still reads


OPS = {"conv2d": Conv2dOp, "linear": LinearOp, "affine": AffineOp, "add": AddOp, "relu": ActOp, "clip": ActOp,
       "maxpool2d": MaxPoolOp, "avgpool2d": AvgPoolOp, "adaptive_avgpool2d": AdaptiveAvgOp, "flatten": FlattenOp}


# ------------------------------------------------------------------------------------------------ the model


class SparseModel:
    """A loaded artifact: call it on a float32 numpy batch (B, C, H, W) to get logits (B, classes)."""

    def __init__(self, graph: dict, tensors: dict[str, np.ndarray], *, threads: int = 1, engine: str = "numpy",
                 source: str = "<memory>"):
        if engine not in ENGINES:
            raise GemdeployError(f"unknown sparse CPU engine {engine!r}; choose one of: {', '.join(ENGINES)}")
        if not isinstance(threads, int) or threads < 1:
            raise GemdeployError(f"threads must be an integer >= 1, got {threads!r}")
        _need(isinstance(graph, dict) and graph.get("format") == FILE_FORMAT,
              f"not a {FILE_FORMAT} graph (format {graph.get('format') if isinstance(graph, dict) else None!r})")
        _need(graph.get("version") == FORMAT_VERSION,
              f"version {graph.get('version')!r}; this gemdeploy reads version {FORMAT_VERSION}")
        self.graph, self.source, self.threads, self.engine = graph, source, threads, engine
        self.input_shape = _ints(graph.get("input_shape"), 3, "input_shape")
        self.num_classes = graph.get("num_classes")
        specs = graph.get("ops")
        _need(isinstance(specs, list) and specs, "no ops")
        slots = {"input": 0}
        self.ops: list[Op] = []
        for spec in specs:
            _need(isinstance(spec, dict) and spec.get("op") in OPS, f"unknown op {spec.get('op') if isinstance(spec, dict) else spec!r}")
            try:
                op = OPS[spec["op"]](spec, tensors)
            except (KeyError, TypeError, ValueError) as exc:
                raise GemdeployError(f"malformed sparse CPU graph: op {spec.get('name', spec['op'])}: {exc!r}") from None
            ins = spec.get("inputs")
            _need(isinstance(ins, list) and ins and all(i in slots for i in ins),
                  f"{spec.get('name', spec['op'])} reads a value that is not computed before it: {ins!r}")
            op.ins = tuple(slots[i] for i in ins)
            if spec.get("residual") is not None:
                _need(spec["residual"] in slots, f"{spec.get('name')}: unknown residual {spec['residual']!r}")
                op.res = slots[spec["residual"]]
            _need(isinstance(spec.get("output"), str) and spec["output"] not in slots, f"{spec.get('name')}: bad output")
            slots[spec["output"]] = op.out = len(slots)
            self.ops.append(op)
        _need(graph.get("output") in slots, "the output value is never computed")
        self.out_slot = slots[graph["output"]]
        self.n_slots = len(slots)
        # Free each value after its last reader; a reader that is the last one may reuse the buffer in place.
        last: dict[int, int] = {}
        for i, op in enumerate(self.ops):
            for s in (*op.ins, *(() if op.res is None else (op.res,))):
                last[s] = i
        self.free_after: list[tuple[int, ...]] = [() for _ in self.ops]
        for s, i in last.items():
            if s != self.out_slot:
                self.free_after[i] += (s,)
        for i, op in enumerate(self.ops):
            reads = [*op.ins, *(() if op.res is None else (op.res,))]
            op.owns = frozenset(s for s in reads if last.get(s) == i and reads.count(s) == 1 and s != self.out_slot)
        self._pool: ThreadPoolExecutor | None = None
        self._dense_at: dict[int, bool] = {}
        self._ms_per_image = self._estimate_ms_per_image()
        self._torch = None
        if engine == "torch":
            from gemdeploy.sparse_cpu.torch_engine import TorchEngine  # torch: only for engine='torch'

            self._torch = TorchEngine(threads)
            for op in self.ops:
                if isinstance(op, MatOp):
                    op.engine = self._torch

    def _estimate_ms_per_image(self) -> float | None:
        """Single-thread milliseconds per image at the largest tuned batch (sum of each layer's chosen kernel)."""
        total, batch = 0.0, None
        for spec in self.graph["ops"]:
            times = spec.get("timings_ms") if isinstance(spec, dict) else None
            if not isinstance(times, dict) or not times:
                continue
            b = max(times, key=int)
            batch = int(b)
            t = times[b]
            k = spec.get("kernel", {}).get(b)
            total += float(t[k]) if k in t else min(map(float, t.values()))
        return total / batch if batch else None

    # -------------------------------------------------------------- calls

    def _check(self, x) -> np.ndarray:
        if hasattr(x, "detach"):  # a torch tensor from a caller that has torch
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise GemdeployError(f"expected images of shape (batch, {', '.join(map(str, self.input_shape))}), "
                                 f"got {tuple(x.shape)}")
        return x

    def forward_chunk(self, x: np.ndarray, hook=None) -> np.ndarray:
        """Logits of one batch on the calling thread (``hook(i, op, vals)`` runs before op i)."""
        vals: list = [None] * self.n_slots
        # (B, C, H, W) -> (C, H, W, B), always a fresh float32 buffer the ops may overwrite
        vals[0] = np.array(x.transpose(1, 2, 3, 0), dtype=F32, order="C", copy=True)
        for i, op in enumerate(self.ops):
            if hook is not None:
                hook(i, op, vals)
            vals[op.out] = op.run(vals)
            for s in self.free_after[i]:
                vals[s] = None
        y = vals[self.out_slot]
        return y.T.copy() if y.ndim == 2 else np.ascontiguousarray(y.transpose(3, 0, 1, 2))

    def __call__(self, images) -> np.ndarray:
        x = self._check(images)
        if self._torch is not None:  # torch's own threads inside its kernels; the batch is not split
            return self._torch.call(self.forward_chunk, x)
        b = len(x)
        parts = self.chunks(b)
        # BLAS (dense kernels only) gets the threads the batch split leaves it: all of them for one chunk, else 1
        with blas_threads((self.threads if parts == 1 else 1) if self._uses_dense(-(-b // parts)) else None):
            if parts <= 1:
                return self.forward_chunk(x)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="gemdeploy-sparse")
            bounds = [round(i * b / parts) for i in range(parts + 1)]
            futures = [self._pool.submit(self.forward_chunk, x[bounds[i]:bounds[i + 1]]) for i in range(1, parts)]
            first = self.forward_chunk(x[bounds[0]:bounds[1]])  # this thread works too
            return np.concatenate([first, *(f.result() for f in futures)])

    def chunks(self, batch: int) -> int:
        """Into how many slices a batch is split across threads: at most ``threads``, and only as many as keep
        each slice above MIN_CHUNK_MS of single-thread work by the export-time timings (handing a few
        microseconds of work to another thread costs more than it saves)."""
        parts = min(self.threads, batch)
        if parts <= 1 or self._ms_per_image is None:
            return max(1, parts)
        return max(1, min(parts, int(batch * self._ms_per_image / MIN_CHUNK_MS)))

    def _uses_dense(self, batch: int) -> bool:
        got = self._dense_at.get(batch)
        if got is None:
            got = self._dense_at[batch] = any(isinstance(op, MatOp) and op.nnz and op.kernel_for(batch) == "dense"
                                              for op in self.ops)
        return got

    predict = __call__

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __del__(self):
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)

    # -------------------------------------------------------------- description

    def layers(self) -> list[dict]:
        """Per conv/linear layer: name, nnz, density, used columns and the kernel per batch size."""
        out = []
        for op in self.ops:
            if isinstance(op, MatOp):
                out.append({"name": op.name, "op": op.spec["op"], "rows": op.rows, "cols": op.cols, "nnz": op.nnz,
                            "density": op.nnz / max(1, op.rows * op.cols), "used_cols": len(op.used),
                            "kernel": dict(op.kernel)})
        return out

    def __repr__(self) -> str:
        return (f"SparseModel({self.source}, input {self.input_shape}, {len(self.ops)} ops, engine={self.engine}, "
                f"threads={self.threads})")


def default_threads() -> int:
    return max(1, os.cpu_count() or 1)
