"""sparse-cpu: the ticket for gemdeploy's own CPU runtime (gemdeploy.sparse_cpu), which runs unstructured
sparsity faster than dense: BatchNorm folded, each conv/linear weight in CSR, and per layer the kernel (CSR over
gathered columns, unrolled CSR conv, or dense) that measured fastest on this machine at batch 1 and at
--sparse-cpu-batch. Built on the exported model (the compacted one when the run has compact.json), so removed
channels stay removed. Safetensors + a JSON op graph in its metadata: no pickles, no code on load.

Verified like the other files: through the runtime itself (numpy + scipy engine), the logits on the verification
images and on the whole test split must be within 1e-4 x the largest |logit| of PyTorch's, and the test accuracy
must equal PyTorch's; otherwise nothing is written.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from gemdeploy.errors import GemdeployError
from gemdeploy.exporters import layout
from gemdeploy.exporters import onnx_export as ox
from gemdeploy.exporters.precisions.base import ExportJob, Precision
from gemdeploy.files import file_sha256


def check_against_torch(sparse_model, torch_model: torch.nn.Module, data) -> dict:
    """Logits of the whole test split through the runtime vs PyTorch eval mode, and both accuracies."""
    worst = scale = 0.0
    correct_rt = correct_pt = total = 0
    with torch.no_grad():
        for x, y in data.test.batches(256):
            ref = torch_model(x.float()).numpy()
            got = sparse_model(x.float().numpy())
            worst = max(worst, float(np.max(np.abs(ref - got))))
            scale = max(scale, float(np.max(np.abs(ref))))
            labels = y.cpu().numpy()
            correct_rt += int((got.argmax(1) == labels).sum())
            correct_pt += int((ref.argmax(1) == labels).sum())
            total += len(labels)
    real = getattr(data, "real", True)
    tol = ox.FP32_REL_TOL * max(scale, 1e-6)
    acc_rt = correct_rt / max(1, total) if real else None
    acc_pt = correct_pt / max(1, total) if real else None
    return {"split": "test", "samples": total, "max_abs_diff": worst, "logit_scale": scale, "tolerance": tol,
            "test_acc": acc_rt, "pytorch_test_acc": acc_pt,
            "ok": bool(np.isfinite(worst) and worst <= tol and acc_rt == acc_pt)}


class SparseCpu(Precision):
    name = "sparse-cpu"
    file = layout.SPARSE_CPU
    runtime = "sparse-cpu"  # gemdeploy.sparse_cpu runs it, not ONNX Runtime

    def export(self, job: ExportJob) -> dict:
        from gemdeploy.sparse_cpu import build, runtime, tune  # the class attribute `runtime` shadows the module

        started = time.perf_counter()
        shape = tuple(int(s) for s in job.art.input_shape)
        graph, tensors = build.trace(job.model, shape, job.art.config.model)
        images = job.verify_images.float().numpy()
        batches = sorted({1, job.opts.sparse_cpu_batch})
        graph = tune.tune(graph, tensors, images, batches=batches)
        graph["num_classes"] = int(job.reference.shape[1])
        graph["source"] = {"run_model": job.art.config.model, "source": job.source,
                           "source_sha256": job.source_sha256}
        path = job.stage / self.file
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            runtime.save(tmp, graph, tensors)
            model = runtime.load(tmp, threads=1)  # what a user gets: read back from the file
            check = ox.with_rounding_floor(ox.compare(job.reference, model(images), "fp32"), job.model,
                                           job.verify_images)
            if not check["ok"]:
                raise GemdeployError(f"the sparse CPU model failed verification, not written: "
                                     f"{ox.describe_failure(check).replace('ONNX Runtime', 'sparse runtime')}")
            split = check_against_torch(model, job.model, job.data)
            if not split["ok"]:
                why = (f"max |diff| {split['max_abs_diff']:.3g} > {split['tolerance']:.3g}"
                       if split["max_abs_diff"] > split["tolerance"] else
                       f"test accuracy {split['test_acc']} != PyTorch's {split['pytorch_test_acc']}")
                raise GemdeployError(f"the sparse CPU model disagrees with PyTorch on the test split, not written: {why}")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        layers = model.layers()
        kernels = {}
        for lay in layers:
            for b, k in lay["kernel"].items():
                kernels.setdefault(b, {}).setdefault(k, 0)
                kernels[b][k] += 1
        job.log(f"sparse CPU model verified: {len(layers)} layers, kernels per batch {kernels}, "
                f"max |diff| {split['max_abs_diff']:.2g} on {split['samples']} test images")
        return {"file": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path),
                "source": job.source, "source_sha256": job.source_sha256, "precision": self.name,
                "format": f"{runtime.FILE_FORMAT} v{runtime.FORMAT_VERSION} (safetensors + JSON graph)",
                "runtime": "gemdeploy.sparse_cpu (numpy + scipy; engine 'torch' optional)",
                "input": {"shape": ["batch", *shape]}, "tuned_batches": batches, "kernels": kernels,
                "layers": layers, "ops": len(graph["ops"]), "verification": check, "test_split": split,
                "test_acc": split["test_acc"], "pytorch_test_acc": split["pytorch_test_acc"],
                "export_seconds": round(time.perf_counter() - started, 2)}
