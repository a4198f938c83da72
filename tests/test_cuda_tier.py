"""The CUDA tier: what a user does on a GPU server, on the GPU. Every test here is marked ``cuda`` and skips
without a CUDA GPU (the skip says so); `python -m benchmarks.cuda_tier` runs the tier on a GPU server and writes
its record (docs/cuda-tier.md). On the CPU, tests/test_cuda_layout.py runs the same code path in CUDA's layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import case_id, cli, interrupt_when, method_pattern_cases, run_cli
from gemdeploy.compact.compaction import EXACT_REL_TOL

NO_GPU = "needs a CUDA GPU: torch.cuda.is_available() is False on this machine"
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)]

TOY = ["--model", "resnet20", "--data", "digits", "--epochs", "1", "--finetune-epochs", "1", "--quiet"]
CUDA_LAYOUT = "channels_last, bf16 autocast"


@pytest.fixture(scope="module")
def cuda_runs(tmp_path_factory) -> dict[tuple[str, str], Path]:
    """Every (method, pattern) mined on the GPU at toy budgets; `mine` compacts each one."""
    root = tmp_path_factory.mktemp("cuda-tier")
    runs = {}
    for method, pattern in method_pattern_cases():
        out = root / case_id(method, pattern)
        cli("mine", *TOY, "--sparsity", "0.5", "--method", method, "--pattern", pattern, "--device", "cuda",
            "--seed", "1", "--out", out, check=True)
        runs[(method, pattern)] = out
    return runs


@pytest.mark.parametrize("method,pattern", method_pattern_cases(), ids=[case_id(*c) for c in method_pattern_cases()])
def test_every_method_and_pattern_mines_and_compacts_on_cuda(cuda_runs, method, pattern):
    out = cuda_runs[(method, pattern)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"].startswith("cuda") and summary["layout"] == CUDA_LAYOUT
    assert summary["method"] == method and summary["pattern"] == pattern
    check = json.loads((out / "compact.json").read_text())["check"]
    assert check["max_abs_logit_diff"] <= EXACT_REL_TOL * max(1.0, check["logit_scale"])


def test_a_killed_cuda_run_resumes_from_its_checkpoint(tmp_path):
    out = tmp_path / "killed"
    args = ["mine", *TOY, "--epochs", "6", "--sparsity", "0.9", "--device", "cuda", "--out", out]
    interrupted = interrupt_when(args, out, "checkpoint-mine.safetensors")
    assert interrupted.returncode == 130 and "--resume" in interrupted.stderr, interrupted.stderr
    assert not (out / "mask.safetensors").exists()
    run_cli("mine", "--out", out, "--resume", "--quiet", check=True)
    epochs = [(r["phase"], r["epoch"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
    assert epochs == [("mine", e) for e in range(1, 7)] + [("finetune", 1)]  # each epoch once, none lost
    assert json.loads((out / "summary.json").read_text())["sparsity"] == pytest.approx(0.9, abs=1e-3)


def test_sanity_checks_run_on_cuda(cuda_runs):
    result = cli("sanity", cuda_runs[("gem-miner", "unstructured")], "--checks", "shuffle,reinit", "--device", "cuda",
                 "--quiet", "--json", check=True)
    checks = json.loads(result.stdout)["checks"]
    assert set(checks) == {"shuffle", "reinit"} and all(0 <= c["test_acc"] <= 1 for c in checks.values())


def test_nm_projection_compacts_exactly_on_cuda(cuda_runs, tmp_path):
    out = tmp_path / "projected"
    cli("compact", cuda_runs[("magnitude", "unstructured")], "--pattern", "2:4", "--out", out, "--finetune-epochs", "1",
        "--quiet", check=True)
    record = json.loads((out / "compact.json").read_text())
    assert record["check"]["max_abs_logit_diff"] <= EXACT_REL_TOL * max(1.0, record["check"]["logit_scale"])
    assert all(layer["nm_holds"] for layer in record["layers"] if layer["nm_eligible"])


def _cuda_logits(run: Path, source: str, images: torch.Tensor) -> np.ndarray:
    """The deployed model's fp32 logits computed by PyTorch on the GPU (TF32 off: true fp32)."""
    import gemdeploy.api as gd

    model = gd.open_run(run).model(compacted=source == "compacted").cuda().eval()
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.inference_mode():
            return model(images.cuda()).float().cpu().numpy()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_exported_onnx_matches_pytorch_on_cuda(cuda_runs, pattern):
    import onnxruntime as ort

    from gemdeploy.data import load_data

    run = cuda_runs[("gem-miner", pattern)]
    cli("export", run, "--precision", "fp32", "--precision", "fp16", "--quiet", check=True)
    source = json.loads((run / "export" / "export.json").read_text())["source"]
    images = torch.cat([x for x, _ in load_data("digits").test.batches(256)])
    expected = _cuda_logits(run, source, images)
    scale = float(np.abs(expected).max())
    outputs = {}
    for precision in ("fp32", "fp16"):
        session = ort.InferenceSession(str(run / "export" / f"model.{precision}.onnx"), providers=["CPUExecutionProvider"])
        outputs[precision] = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    assert np.abs(outputs["fp32"] - expected).max() <= 1e-4 * max(1.0, scale)
    agreement = float((outputs["fp16"].argmax(1) == expected.argmax(1)).mean())
    assert agreement >= 0.995, agreement


def test_bench_times_every_cuda_backend(cuda_runs, tmp_path):
    from gemdeploy.bench.backends import BACKENDS

    # TensorRT needs engines (`export --trt`; not installable on the tier's server); opt-in backends (torch.compile)
    # spend minutes compiling, which the tier's 4-minute box has no room for (benchmarks/gpu.py times them).
    cuda_backends = [name for name, cls in BACKENDS.items() if cls.device == "cuda" and not cls.opt_in
                     and name != "tensorrt" and cls().unavailable() is None]
    assert "pytorch-cuda" in cuda_backends
    ticket, dense = cuda_runs[("gem-miner", "channel")], cuda_runs[("dense", "unstructured")]
    args = [a for name in cuda_backends for a in ("--backend", name)]
    result = json.loads(cli("bench", ticket, "--against", dense, *args, "--batch-size", "1", "--batch-size", "32",
                            "--iters", "5", "--warmup", "2", "--out", tmp_path / "bench", "--json", check=True).stdout)
    measured = {r["backend"] for r in result["rows"]}
    assert set(cuda_backends) <= measured, (cuda_backends, result.get("unavailable"))
    for r in result["rows"]:
        assert r["latency_ms"]["median"] > 0 and 0 <= r["test_acc"] <= 1
    eager = {r["run"]: r["test_acc"] for r in result["rows"] if r["backend"] == "pytorch-cuda" and r["batch"] == 32}
    summaries = {run.name: json.loads((run / "summary.json").read_text())["test_acc"] for run in (ticket, dense)}
    for name, acc in eager.items():  # the GPU computes the accuracy `mine` measured (bf16 there: a few images)
        assert abs(acc - summaries[f"{name}"]) <= 0.02, (name, acc, summaries)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs for a 2-process NCCL run")
def test_two_process_nccl_mine(tmp_path):
    out = tmp_path / "ddp"
    run_cli("mine", *TOY, "--epochs", "2", "--sparsity", "0.9", "--device", "cuda", "--nproc-per-node", "2",
            "--out", out, check=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["sparsity"] == pytest.approx(0.9, abs=1e-3)
