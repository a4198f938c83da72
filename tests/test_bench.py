"""`gemdeploy bench` on tiny real runs, through the real CLI."""

import json

import pytest

from conftest import assert_clean_error, cli

TINY = ["--data", "digits", "--epochs", "2", "--finetune-epochs", "2", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    gm, dense = root / "gm", root / "dense"
    cli("mine", "--model", "lenet300", "--sparsity", "0.95", "--out", gm, *TINY, check=True)
    cli("mine", "--model", "lenet300", "--method", "dense", "--out", dense, *TINY, check=True)
    for r in (gm, dense):
        cli("export", r, check=True)
    return gm, dense


@pytest.mark.slow
def test_bench_reports_every_run_backend_and_batch(runs, tmp_path):
    gm, dense = runs
    out = tmp_path / "report"
    proc = cli("bench", gm, "--against", dense, "--batch-size", "1", "--batch-size", "8", "--iters", "3",
                   "--warmup", "1", "--threads", "1", "--out", out, "--json", check=True)
    result = json.loads(proc.stdout)
    assert result["reference"] == "dense"  # the dense run is the reference wherever it is listed
    backends = {r["backend"] for r in result["rows"]}
    assert {"pytorch-cpu", "onnxruntime-cpu"} <= backends
    for run in ("gm", "dense"):
        for backend in backends:
            batches = sorted(r["batch"] for r in result["rows"] if r["run"] == run and r["backend"] == backend
                             and r["precision"] == "fp32")
            assert batches == [1, 8], (run, backend)
    for r in result["rows"]:
        lat = r["latency_ms"]
        assert 0 < lat["min"] <= lat["median"] <= lat["p90"] <= lat["p99"]
        assert r["throughput_ips"] > 0 and r["file_bytes"] > 0 and r["macs"] > 0
    # The exported ONNX gives the same test accuracy as PyTorch on the same split.
    for run in ("gm", "dense"):
        accs = {r["backend"]: r["test_acc"] for r in result["rows"] if r["run"] == run and r["precision"] == "fp32"}
        assert accs["onnxruntime-cpu"] == accs["pytorch-cpu"], accs
    gm_rows = [r for r in result["rows"] if r["run"] == "gm"]
    assert all(r["nonzero_params"] < 0.2 * next(d for d in result["rows"] if d["run"] == "dense")["nonzero_params"]
               for r in gm_rows)
    # Backends this machine lacks are named with a reason, not silently dropped.
    named = {u["backend"]: u["reason"] for u in result["unavailable"]}
    if "tensorrt" not in backends:
        assert "tensorrt" in named and named["tensorrt"]
    if "pytorch-cuda" not in backends:
        assert "pytorch-cuda" in named
    # The report and its plots exist and are real PNGs.
    report = (out / "report.md").read_text()
    assert "| gm |" in report and "| dense |" in report
    assert ("## Not measured" in report) == bool(result["unavailable"])
    for png in ("accuracy_vs_latency.png", "latency_by_backend.png", "accuracy_vs_density.png"):
        data = (out / png).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5_000, png
        assert f"({png})" in report
    assert json.loads((out / "bench.json").read_text())["rows"] == result["rows"]


@pytest.mark.slow
def test_bench_refuses_runs_of_different_data(runs, tmp_path):
    gm, _ = runs
    other = tmp_path / "mnist"
    cli("mine", "--model", "lenet300", "--data", "mnist5k", "--epochs", "1", "--finetune-epochs", "1", "--quiet",
            "--out", other, check=True)
    proc = cli("bench", gm, "--against", other, "--out", tmp_path / "r")
    assert_clean_error(proc, "cannot compare", "digits", "mnist5k")
    assert not (tmp_path / "r").exists()


def test_bench_names_the_export_command_for_a_missing_artifact(tmp_path):
    run = tmp_path / "noexport"
    cli("mine", "--model", "lenet300", "--out", run, *TINY, check=True)
    proc = cli("bench", run, "--backend", "onnxruntime-cpu", "--iters", "1", "--out", tmp_path / "r")
    assert_clean_error(proc, "no ONNX export", f"gemdeploy export {run}")
    assert_clean_error(cli("bench", run, "--backend", "warp-drive", "--out", tmp_path / "r"), "unknown backend")
    assert_clean_error(cli("bench", tmp_path / "nothing"), "not a gemdeploy run directory")


def test_bench_never_overwrites_a_report(runs, tmp_path):
    gm, _ = runs
    out = tmp_path / "r"
    out.mkdir()
    (out / "report.md").write_text("mine")
    assert_clean_error(cli("bench", gm, "--out", out), "already holds a report", "--overwrite")
    assert (out / "report.md").read_text() == "mine"


def test_tensorrt_engine_batch_profile_is_enforced(runs):
    from gemdeploy.exporters.tensorrt_build import cuda_status, tensorrt_status

    trt, gpu = tensorrt_status(), cuda_status()
    if not (trt["available"] and gpu["available"]):
        pytest.skip(f"needs TensorRT and a CUDA GPU: {trt['reason'] or gpu['reason']}")
    gm, _ = runs
    cli("export", gm, "--trt", "--max-batch", "4", "--opt-batch", "2", "--overwrite", check=True)
    assert_clean_error(cli("bench", gm, "--backend", "tensorrt", "--batch-size", "16", "--overwrite"),
                       "above the engine's profile")
