"""The second engine: the same graph and layout, with torch's CPU kernels for the matrix products (MKL's sparse
CSR x dense via ``addmm_``/``addmv_``, MKL sgemm for dense layers). Everything else (gathers, pooling, ReLU, adds)
is the numpy code of the default engine, on the same memory (torch.from_numpy shares it). Threads are torch's
intra-op threads inside each product (set process-wide when the model is loaded); the batch is not split. Needs torch; the default engine does not.
"""

from __future__ import annotations

import warnings

import numpy as np


class TorchEngine:
    name = "torch"

    def __init__(self, threads: int):
        import torch

        self.torch = torch
        self.threads = threads
        # torch's intra-op threads, process-wide, set once: resizing the pool on every call costs milliseconds
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        self._csr: dict[int, object] = {}

    def call(self, forward, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return forward(x)

    def _as_csr(self, csr: tuple, rows: int, cols: int):
        key = (id(csr[0]), id(csr[1]), id(csr[2]))
        got = self._csr.get(key)
        if got is None:
            torch = self.torch
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
                tensor = torch.sparse_csr_tensor(torch.from_numpy(csr[0]), torch.from_numpy(csr[1]),
                                                 torch.from_numpy(csr[2]), size=(rows, cols))
            got = self._csr[key] = (csr, tensor)  # holding ``csr`` keeps the ids valid
        return got[1]

    def sparse(self, csr: tuple, rows: int, cols: int, n: int, x: np.ndarray, y: np.ndarray) -> None:
        a = self._as_csr(csr, rows, cols)
        torch = self.torch
        yt = torch.from_numpy(y.reshape(rows, n))
        xt = torch.from_numpy(x.reshape(cols, n))
        if n == 1:
            yt.squeeze_(1).addmv_(a, xt.squeeze(1))
        else:
            yt.addmm_(a, xt)

    def dense(self, w: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
        torch = self.torch
        torch.from_numpy(y).addmm_(torch.from_numpy(w), torch.from_numpy(np.ascontiguousarray(x)))
