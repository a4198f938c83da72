"""Choose each layer's kernel (CSR or dense) by timing both on the layer's real inputs, per batch size.

The model runs once per batch size on real images; just before each conv/linear layer runs, its two kernels are
timed on exactly the activations it is about to get (one thread, the same code path inference takes, alternating
the two so a busy machine slows both alike; best of the repeats). The faster one is recorded in the op's
``kernel`` ({batch: "csr"|"dense"}) with both timings in ``timings_ms``. numpy + scipy only.
"""

from __future__ import annotations

import time

import numpy as np

from gemdeploy.errors import GemdeployError
from gemdeploy.sparse_cpu.runtime import Conv2dOp, MatOp, SparseModel, blas_threads

DEFAULT_BATCHES = (1, 64)


def _time_kernels(op: MatOp, vals: list, budget_s: float, min_reps: int, max_reps: int) -> dict[str, float]:
    kernels = list(op.kernels)
    if isinstance(op, Conv2dOp):
        try:  # built here, outside the timing; refused when it would be too large
            op.unrolled(*vals[op.ins[0]].shape[1:3])
        except GemdeployError:
            kernels.remove("unrolled")
    owns, op.owns = op.owns, frozenset()  # never consume the captured buffers while timing
    best = {k: float("inf") for k in kernels}
    try:
        for k in kernels:  # warm-up (and the dense matrix is built on first use)
            op.forced = k
            op.run(vals)
        spent, reps = 0.0, 0
        while reps < min_reps or (spent < budget_s and reps < max_reps):
            for k in kernels:
                op.forced = k
                start = time.perf_counter()
                op.run(vals)
                took = time.perf_counter() - start
                best[k] = min(best[k], took)
                spent += took
            reps += 1
    finally:
        op.forced, op.owns = None, owns
    return {k: v * 1e3 for k, v in best.items()}


def tune(graph: dict, tensors: dict[str, np.ndarray], images: np.ndarray, batches=DEFAULT_BATCHES,
         budget_s: float = 0.1, min_reps: int = 5, max_reps: int = 50) -> dict:
    """Return ``graph`` with every conv/linear op's ``kernel`` and ``timings_ms`` set from measurements.

    ``images``: real (N, C, H, W) float32 inputs; a batch larger than N repeats them."""
    images = np.asarray(images, dtype=np.float32)
    decided: dict[int, dict] = {}  # op index -> batch -> timings
    for b in sorted(set(int(x) for x in batches)):
        reps = -(-b // len(images))
        x = np.concatenate([images] * reps)[:b] if reps > 1 else images[:b]
        model = SparseModel(graph, tensors, threads=1)

        def hook(i, op, vals, b=b):
            if isinstance(op, MatOp) and op.nnz:
                decided.setdefault(i, {})[str(b)] = _time_kernels(op, vals, budget_s, min_reps, max_reps)

        with blas_threads(1):  # one thread: what each worker of a split batch has
            model.forward_chunk(x, hook=hook)
    out = {**graph, "ops": []}
    for i, spec in enumerate(graph["ops"]):
        spec = dict(spec)
        if spec["op"] in ("conv2d", "linear"):
            times = decided.get(i, {})
            spec["kernel"] = {b: min(t, key=t.get) for b, t in times.items()} or {"1": "csr"}
            spec["timings_ms"] = {b: {k: round(v, 5) for k, v in t.items()} for b, t in times.items()}
        out["ops"].append(spec)
    out["tuned_batches"] = sorted(set(int(x) for x in batches))
    return out


def force(graph: dict, kernel: str) -> dict:
    """A copy of ``graph`` that runs every layer with one kernel (for comparisons)."""
    return {**graph, "ops": [{**s, "kernel": {"1": kernel}} if s["op"] in ("conv2d", "linear") else s
                             for s in graph["ops"]]}


def restrict(graph: dict, kernels: tuple[str, ...]) -> dict:
    """A copy of a tuned ``graph`` whose layers pick the fastest of ``kernels`` only (from the recorded timings),
    e.g. ("csr", "unrolled") for "sparse kernels only"."""
    ops = []
    for s in graph["ops"]:
        if s["op"] in ("conv2d", "linear") and s.get("timings_ms"):
            pick = {b: min((k for k in t if k in kernels), key=t.get) for b, t in s["timings_ms"].items()
                    if any(k in kernels for k in t)}
            s = {**s, "kernel": pick or s["kernel"]}
        ops.append(s)
    return {**graph, "ops": ops}
