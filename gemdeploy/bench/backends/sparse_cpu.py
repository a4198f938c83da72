"""gemdeploy's sparse CPU runtime (gemdeploy.sparse_cpu) on the file `gemdeploy export --precision sparse-cpu` writes:
the numpy + scipy engine (`sparse-cpu`) and, opt-in, the same graph with torch's MKL kernels (`sparse-cpu-torch`)."""

from __future__ import annotations

from gemdeploy.bench.backends.base import Artifact, Backend, Runner
from gemdeploy.sparse_cpu import load


class SparseCpuRunner(Runner):
    def __init__(self, path, threads: int, engine: str):
        self.model = load(path, threads=threads, engine=engine)

    def predict(self, images):
        return self.model(images.detach().cpu().float().numpy())

    def _timed_call(self, images):
        x = images.detach().cpu().float().numpy()
        return lambda: self.model(x)


class SparseCpu(Backend):
    name, device = "sparse-cpu", "cpu"
    engine = "numpy"
    needs = "sparse CPU export"

    def unavailable(self):
        try:
            import scipy.sparse  # noqa: F401
            import safetensors  # noqa: F401
        except Exception as exc:  # noqa: BLE001
            return f"the sparse CPU runtime needs scipy and safetensors ({exc})"
        if self.engine == "torch":
            try:
                import torch  # noqa: F401
            except Exception as exc:  # noqa: BLE001
                return f"torch does not import ({exc})"
        return None

    def artifacts(self, run, threads):
        path = run.exports.file("sparse-cpu")
        if path is None:
            return []
        return [Artifact("sparse-cpu", f"sparse-cpu {self.engine}", path,
                         lambda: SparseCpuRunner(path, threads, self.engine), run.exports.record.get("source"))]

    def missing_hint(self, run):
        return f"gemdeploy export {run.art.run.path} --precision sparse-cpu"


class SparseCpuTorch(SparseCpu):
    name, engine, opt_in = "sparse-cpu-torch", "torch", True
