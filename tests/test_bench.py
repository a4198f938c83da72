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
        cli("export", r, "--precision", "int8", check=True)
    return gm, dense


@pytest.fixture(scope="module")
def imp_run(tmp_path_factory):
    """A real IMP run with its saved levels (4 levels to 50% sparsity on the digits)."""
    out = tmp_path_factory.mktemp("bench-imp") / "imp"
    cli("mine", "--model", "lenet300", "--method", "imp", "--sparsity", "0.5", "--out", out, "--data", "digits",
        "--epochs", "1", "--finetune-epochs", "1", "--quiet", check=True)
    return out


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
        assert 0 < lat["min"] <= lat["p10"] <= lat["median"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert lat["calls"] >= 3 and isinstance(lat["noisy"], bool)  # 3 calls, more when re-measured
        assert lat["spread"] == pytest.approx((lat["p90"] - lat["p10"]) / lat["median"])
        assert lat["remeasured"] == (lat["first_attempt"] is not None)
        assert r["throughput_ips"] > 0 and r["file_bytes"] > 0 and r["macs"] > 0
        assert 0 < r["nonzero_macs"] <= r["macs"]
        assert r["cpu_threads"] == (1 if r["device"] == "cpu" else None)
    # Every speed-up and accuracy delta is against the dense run's fp32 on the same backend and batch (named),
    # with a second figure against the dense run in the row's own precision.
    rows = {(r["run"], r["backend"], r["precision"], r["batch"]): r for r in result["rows"]}
    for (run, backend, precision, batch), r in rows.items():
        base = rows[("dense", backend, "fp32", batch)]
        assert r["baseline"] == f"dense fp32 on {backend}"
        assert r["speedup_vs_dense_fp32"] == pytest.approx(base["latency_ms"]["median"] / r["latency_ms"]["median"])
        assert r["acc_delta_vs_dense_fp32"] == pytest.approx(r["test_acc"] - base["test_acc"])
        same = rows[("dense", backend, precision, batch)]
        assert r["speedup_vs_dense_same_precision"] == pytest.approx(same["latency_ms"]["median"] / r["latency_ms"]["median"])
        assert r["acc_delta_vs_dense_same_precision"] == pytest.approx(r["test_acc"] - same["test_acc"])
    # Every accuracy comes with its 95% interval and every delta with its paired interval (same test images).
    from gemdeploy.stats import judge, Difference

    for (run, backend, precision, batch), r in rows.items():
        low, high = r["test_acc_ci"]
        assert 0 <= low <= r["test_acc"] <= high <= 1 and r["test_images"] > 0
        ci = r["acc_delta_vs_dense_fp32_ci"]
        assert ci["paired"] and ci["n"] == r["test_images"]
        assert r["acc_delta_vs_dense_fp32"] == pytest.approx(ci["delta"]) and ci["low"] <= ci["delta"] <= ci["high"]
        assert ci["judgement"] == judge(Difference(ci["delta"], ci["low"], ci["high"], ci["n"], True))
        assert ("images_for_1_point" in ci) == (ci["judgement"] == "too small to tell")
    # The dense run's own INT8 is measured against its fp32 (no longer 1.00x against itself).
    dense_int8, dense_fp32 = rows[("dense", "onnxruntime-cpu", "int8", 8)], rows[("dense", "onnxruntime-cpu", "fp32", 8)]
    assert dense_int8["speedup_vs_dense_same_precision"] == 1.0
    assert dense_int8["acc_delta_vs_dense_fp32"] == pytest.approx(dense_int8["test_acc"] - dense_fp32["test_acc"])
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
    # The report and its plots exist and are real PNGs; the report says how, where, when and with what it was made.
    report = (out / "report.md").read_text()
    assert "| gm |" in report and "| dense |" in report
    assert "Command: `gemdeploy bench " in report and f"--against {dense}" in report
    assert "Version: gemdeploy " in report and "Date: " in report and "Machine: " in report
    assert "## Verdict" in report and "**Verdict: " in report and "dense fp32" in report
    assert "nonzero MACs" in report and "Baseline: dense fp32 on onnxruntime-cpu" in report
    assert "CPU backends on 1 thread" in report
    assert "95% CI" in report and "Newcombe" in report
    assert ("## Not measured" in report) == bool(result["unavailable"])
    for png in ("accuracy_vs_latency.png", "latency_by_backend.png", "accuracy_vs_density.png"):
        data = (out / png).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5_000, png
        assert f"({png})" in report
    saved = json.loads((out / "bench.json").read_text())
    assert saved["rows"] == result["rows"] and saved["command"].startswith("gemdeploy bench ")
    assert saved["options"]["threads"] == 1


def test_verdict_says_when_the_test_split_is_too_small_to_tell():
    """The issue's case: a ticket and its dense model both at 0% on 64 test images is no evidence the ticket costs
    nothing; the verdict says the split cannot tell and how many images could."""
    import numpy as np

    from gemdeploy.bench.measure import add_relative
    from gemdeploy.bench.report import verdict

    def row(run, ms, correct):
        return {"run": run, "method": "dense" if run == "dense" else "gem-miner", "backend": "onnxruntime-cpu",
                "device": "cpu", "artifact": "fp32 ONNX", "precision": "fp32", "batch": 64,
                "test_acc": float(correct.mean()), "_correct": correct, "latency_ms": {"median": ms, "p10": ms, "p90": ms},
                "file_bytes": 1000 if run == "dense" else 100, "nonzero_macs": 10}

    def judged(gm_correct, dense_correct):
        rows = [row("gm", 1.0, gm_correct), row("dense", 3.0, dense_correct)]
        add_relative(rows, "dense")
        runs = [{"name": "gm", "method": "gem-miner", "sparsity": 0.9}, {"name": "dense", "method": "dense", "sparsity": 0.0}]
        return rows[0], verdict({"rows": rows, "reference": "dense", "runs": runs, "reference_is_dense": True})

    zeros = np.zeros(64, dtype=bool)
    gm, text = judged(zeros, zeros)
    assert gm["acc_delta_vs_dense_fp32_ci"]["judgement"] == "too small to tell"
    assert "too small to tell" in text and "worth it" not in text
    assert "64 test images" in text and "381 test images would decide it" in text
    # 5,000 images on which the two models agree but for a handful: the same 3x faster ticket is worth it.
    rng = np.random.default_rng(0)
    dense = rng.random(5000) < 0.9
    gm_correct = dense.copy()
    gm_correct[:5] = ~gm_correct[:5]
    gm, text = judged(gm_correct, dense)
    assert gm["acc_delta_vs_dense_fp32_ci"]["judgement"] == "within" and "**Verdict: worth it.**" in text


@pytest.mark.slow
def test_bench_defaults_to_one_thread_and_plots_every_imp_level(runs, imp_run, tmp_path):
    gm, dense = runs
    out = tmp_path / "report"
    proc = cli("bench", gm, "--against", dense, "--against", imp_run, "--batch-size", "4", "--iters", "3",
               "--warmup", "1", "--backend", "pytorch-cpu", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "1 CPU thread" in proc.stdout and "Verdict:" in proc.stdout
    result = json.loads((out / "bench.json").read_text())
    assert result["options"]["threads"] == 1 and result["options"]["threads_requested"] == 1
    assert all(r["cpu_threads"] == 1 for r in result["rows"])
    imp = next(r for r in result["runs"] if r["name"] == "imp")
    assert len(imp["imp_levels"]) == 4  # 0.8^3 = 51% > 50% >= 0.8^4: levels 0..3
    densities = [lv["density"] for lv in imp["imp_levels"]]
    assert densities == sorted(densities, reverse=True) and densities[0] == pytest.approx(1.0)
    assert all(0 <= lv["val_acc"] <= 1 for lv in imp["imp_levels"])
    assert all(r["imp_levels"] == [] for r in result["runs"] if r["name"] != "imp")
    assert (out / "accuracy_vs_density.png").stat().st_size > 5_000


def test_latency_stats_and_noise_flag():
    from gemdeploy.bench.measure import NOISY_SPREAD, is_noisy, latency_stats

    steady = latency_stats([0.001] * 9 + [0.0011])
    assert steady["median"] == pytest.approx(1.0) and steady["calls"] == 10 and not is_noisy(steady)
    # One slow call in ten does not move the median; a machine busy half the time makes the spread noisy.
    busy = latency_stats([0.0005] * 5 + [0.01] * 5)
    assert busy["p90"] > busy["median"] and busy["spread"] > NOISY_SPREAD and is_noisy(busy)
    assert busy["min"] == pytest.approx(0.5) and busy["max"] == pytest.approx(10.0)


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


@pytest.mark.slow
def test_a_run_without_the_backends_artifact_is_a_gap_not_a_refusal(runs, tmp_path):
    """`bench ticket --against dense --backend sparse-cpu --backend onnxruntime-cpu` where only the ticket has a
    sparse CPU export: every pair that has its artifact is measured, the dense run on sparse-cpu is a listed gap."""
    import shutil

    gm, dense = runs
    ticket = tmp_path / "ticket"
    shutil.copytree(gm, ticket)
    cli("export", ticket, "--precision", "sparse-cpu", "--no-sparse-storage", "--quiet", check=True)
    out = tmp_path / "r"
    proc = cli("bench", ticket, "--against", dense, "--backend", "sparse-cpu", "--backend", "onnxruntime-cpu",
               "--batch-size", "2", "--iters", "1", "--warmup", "0", "--out", out, check=True)
    result = json.loads((out / "bench.json").read_text())
    measured = {(r["run"], r["backend"]) for r in result["rows"]}
    assert measured == {("ticket", "sparse-cpu"), ("ticket", "onnxruntime-cpu"), ("dense", "onnxruntime-cpu")}
    gap = next(u for u in result["unavailable"] if u.get("run") == "dense")
    assert gap["backend"] == "sparse-cpu" and gap["needs"] == "sparse CPU export"
    assert gap["make"] == f"gemdeploy export {dense} --precision sparse-cpu"
    assert "not measured" in proc.stdout and f"gemdeploy export {dense} --precision sparse-cpu" in proc.stdout
    report = (out / "report.md").read_text()
    assert "## Not measured" in report and "**sparse-cpu** (dense)" in report
