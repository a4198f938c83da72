"""Export benchmark: fp32 vs the two INT8 files (int8 for TensorRT, int8-cpu for ONNX Runtime on CPU), each
measured as its Q/DQ numerics (ONNX Runtime without graph optimizations: what TensorRT runs), on ONNX Runtime CPU
here (fused INT8 kernels) and under the emulated x86 kernels without VNNI; plus what `gemdeploy bench` reports on
the CPU, and the ONNX bytes. Dense and Gem-Miner tickets on mnist5k. Writes the "export" section of BENCHMARKS.md.

    .venv/bin/python benchmarks/export.py            # mines the runs (once) into runs/bench-export/, exports them
    .venv/bin/python benchmarks/export.py --render   # rewrites the BENCHMARKS.md section from the saved results

Runs are mined with the real CLI; a run that already exists is reused, so a second call only re-exports.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, markdown_table, write_section  # noqa: E402

# name -> (model, method, sparsity, mining epochs, fine-tuning epochs): short CPU budgets, not the paper's 150 + 150.
RUNS = {
    "lenet300-dense": ("lenet300", "dense", 0.0, 1, 8),
    "lenet300-gm": ("lenet300", "gem-miner", 0.986, 4, 12),
    "conv4-gm": ("conv4", "gem-miner", 0.9, 3, 3),
    "resnet20-gm": ("resnet20", "gem-miner", 0.9, 3, 3),
}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gemdeploy.cli", *map(str, args)], capture_output=True, text=True)


def emulated_accuracy(run: Path, onnx_file: Path) -> float:
    """Test accuracy of an INT8 file under the emulated x86 kernels without VNNI (saturating int16 pair sums)."""
    import numpy as np

    from gemdeploy.calibration.x86_emulation import emulate
    from gemdeploy.run.artifacts import RunArtifacts

    data = RunArtifacts.open(run).data("cpu")
    correct = total = 0
    for x, y in data.test.batches(250):
        pred = emulate(onnx_file, x.float().numpy()).argmax(1)
        correct += int((pred == y.numpy()).sum())
        total += len(y)
    return correct / max(1, total)


def bench_accuracy(run: Path, out: Path) -> dict:
    """What `gemdeploy bench` reports for each ONNX file on onnxruntime-cpu (accuracy is measured on the whole test
    split; 5 timed calls only, the latency is not the point here)."""
    proc = cli("bench", run, "--backend", "onnxruntime-cpu", "--batch-size", "1", "--iters", "5", "--warmup", "1",
               "--out", out, "--overwrite", "--json")
    if proc.returncode != 0:
        sys.exit(f"bench {run} failed: {proc.stderr.strip()}")
    return {r["precision"]: r["test_acc"] for r in json.loads(proc.stdout)["rows"]}


# ONNX Runtime quantization modes considered for int8-cpu: (activations, weights, reduce_range, symmetric activations)
SCHEMES = {
    "S8S8 (int8)": ("QInt8", "QInt8", False, True),
    "S8S8 7-bit weights (int8-cpu)": ("QInt8", "QInt8", True, True),
    "U8S8": ("QUInt8", "QInt8", False, False),
    "U8S8 7-bit weights": ("QUInt8", "QInt8", True, False),
    "U8U8": ("QUInt8", "QUInt8", False, False),
}


def compare_schemes(run: Path, emulation: bool, iters: int = 30) -> list[list]:
    """Quantize the run's fp32 ONNX with each mode (same calibration: entropy, 512 training images, per-channel
    Q/DQ) and measure test accuracy (Q/DQ numerics, ONNX Runtime CPU here, emulated x86 without VNNI) and the
    ONNX Runtime CPU latency at batch 64 on 1 thread."""
    import statistics
    import tempfile

    import numpy as np
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from gemdeploy.calibration.int8 import _reader
    from gemdeploy.exporters import onnx_export as ox
    from gemdeploy.progress import quiet
    from gemdeploy.run.artifacts import RunArtifacts

    data = RunArtifacts.open(run).data("cpu")
    calib = data.sample_images(512, "train").float().numpy()
    xs, ys = zip(*[(x.float().numpy(), y.numpy()) for x, y in data.test.batches(250)])
    images, labels = np.concatenate(xs), np.concatenate(ys)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (act, wt, reduce_range, sym) in SCHEMES.items():
            path = Path(tmp) / "q.onnx"
            with quiet():
                quantize_static(str(run / "export" / "model.fp32.onnx"), str(path), _reader(calib, 64),
                                quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
                                activation_type=getattr(QuantType, act), weight_type=getattr(QuantType, wt),
                                op_types_to_quantize=["Conv", "Gemm", "MatMul"],
                                calibrate_method=CalibrationMethod.Entropy,
                                extra_options={"ActivationSymmetric": sym, "WeightSymmetric": wt == "QInt8",
                                               "CalibMovingAverage": False, "QDQKeepRemovableActivations": False})
            accs = {}
            for how, optimize in (("qdq", False), ("cpu", True)):
                accs[how] = float((ox.ort_run(ox.ort_session(path, optimize=optimize), images).argmax(1) == labels).mean())
            accs["emulated"] = emulated_accuracy(run, path) if emulation else None
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = 1, 1, 3
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            batch = {"input": images[:64]}
            for _ in range(5):
                session.run(None, batch)
            times = []
            for _ in range(iters):
                t = time.perf_counter()
                session.run(None, batch)
                times.append(time.perf_counter() - t)
            rows.append({"mode": name, "qdq": accs["qdq"], "cpu": accs["cpu"], "emulated": accs["emulated"],
                         "ms_batch64": statistics.median(times) * 1e3})
    return rows


def pct(v) -> str:
    return "n/a" if v is None else f"{v:.1%}"


RESULTS = Path(__file__).resolve().parent / "results" / "export" / "export.json"


def measure(args) -> dict:
    runs = []
    for name in args.runs:
        model, method, sparsity, epochs, ft = RUNS[name]
        run = Path(args.out) / name
        mine = ["mine", "--model", model, "--data", "mnist5k", "--method", method, "--epochs", epochs,
                "--finetune-epochs", ft, "--quiet", "--out", run] + (["--sparsity", sparsity] if method != "dense" else [])
        if not (run / "summary.json").is_file():
            t = time.perf_counter()
            proc = cli(*mine, *(["--resume"] if (run / "config.json").is_file() else []))
            if proc.returncode != 0:
                sys.exit(f"mine {name} failed: {proc.stderr.strip()}")
            print(f"mined {name} in {time.perf_counter() - t:.0f} s", flush=True)
        t = time.perf_counter()
        proc = cli("export", run, "--precision", "int8", "--precision", "int8-cpu", "--calib-samples",
                   args.calib_samples, "--calib-method", args.calib_method, "--overwrite", "--json", "--quiet")
        if proc.returncode not in (0, 3):  # 3: an INT8 verdict failed; the files are written and the table says so
            sys.exit(f"export {name} failed: {proc.stderr.strip()}")
        rec = json.loads(proc.stdout)
        seconds = time.perf_counter() - t
        emu = {} if args.no_emulation else {p: emulated_accuracy(run, run / "export" / f"model.{p}.onnx")
                                             for p in ("int8", "int8-cpu")}
        summary = json.loads((run / "summary.json").read_text())
        entry = {"name": name, "model": model, "method": method, "sparsity": summary["sparsity"], "epochs": epochs,
                 "finetune_epochs": ft, "source": rec["source"], "fp32": rec["accuracy"]["fp32"],
                 "ort_cpu": {p: rec["accuracy"][p] for p in ("int8", "int8-cpu")},
                 "qdq": {p: rec["qdq_accuracy"][p] for p in ("int8", "int8-cpu")}, "emulated": emu,
                 "bench": bench_accuracy(run, run / "bench-int8"), "sizes": rec["sizes"],
                 "verdicts": {p: rec["verdicts"][p] for p in ("int8", "int8-cpu")}, "export_seconds": round(seconds),
                 "schemes": compare_schemes(run, not args.no_emulation) if name in args.schemes else []}
        runs.append(entry)
        print(json.dumps({k: entry[k] for k in ("name", "fp32", "ort_cpu", "qdq", "emulated", "bench")}), flush=True)
    from gemdeploy.machine import describe_int8_cpu

    return {"machine": machine(), "cpu_int8": describe_int8_cpu(), "calib_samples": args.calib_samples,
            "calib_method": args.calib_method, "runs": runs}


def render(res: dict) -> str:
    acc_rows, size_rows, scheme_rows, verdicts, details = [], [], [], [], []
    for r in res["runs"]:
        ticket = "dense" if r["method"] == "dense" else f"Gem-Miner {r['sparsity']:.1%}"
        emu, bench = r["emulated"], r["bench"]
        acc_rows.append([r["model"], ticket, f"{r['epochs']}+{r['finetune_epochs']}" if r["method"] != "dense"
                         else str(r["finetune_epochs"]), pct(r["fp32"]),
                         pct(r["ort_cpu"]["int8"]), pct(r["qdq"]["int8"]), pct(emu.get("int8")),
                         pct(r["ort_cpu"]["int8-cpu"]), pct(r["qdq"]["int8-cpu"]), pct(emu.get("int8-cpu")),
                         pct(bench.get("int8-cpu")),
                         f"{(r['fp32'] - bench['int8-cpu']) * 100:+.1f}" if "int8-cpu" in bench else "-"])
        sizes = r["sizes"]
        size_rows.append([r["model"], ticket, r["source"], f"{sizes['dense_bytes']:,}",
                          "-" if sizes["compacted_bytes"] is None else f"{sizes['compacted_bytes']:,}",
                          "-" if sizes.get("sparse_storage_bytes") is None else f"{sizes['sparse_storage_bytes']:,}",
                          f"{sizes['int8_bytes']:,}", f"{sizes['int8_cpu_bytes']:,}"])
        scheme_rows += [[r["model"], ticket, m["mode"], pct(m["qdq"]), pct(m["cpu"]), pct(m["emulated"]),
                         f"{m['ms_batch64']:.3f}"] for m in r["schemes"]]
        verdicts += [f"{r['name']} {p}: {'ok' if v['ok'] else 'NOT ok (' + str(v['cause']) + ')'}"
                     for p, v in r["verdicts"].items()]
        details.append(f"{r['name']}: export {r['export_seconds']} s")
    worst_cpu = max(abs(r["fp32"] - r["bench"].get("int8-cpu", r["fp32"])) for r in res["runs"]) * 100
    emulated = [r for r in res["runs"] if r["emulated"]]
    reading = [f"**Reading.** On every model the file `gemdeploy bench` runs on the CPU, model.int8-cpu.onnx, stays "
               f"within {worst_cpu:.1f} points of fp32 here (target: 1 point)."]
    if emulated:
        worst = max(emulated, key=lambda r: r["qdq"]["int8"] - r["emulated"]["int8"])
        exact = all(r["emulated"]["int8-cpu"] == r["qdq"]["int8-cpu"] for r in emulated)
        reading.append(
            f" Under the emulated kernels without VNNI the full-range int8 file loses up to "
            f"{(worst['qdq']['int8'] - worst['emulated']['int8']) * 100:.1f} points against its own Q/DQ numerics "
            f"({worst['name']}: {pct(worst['qdq']['int8'])} -> {pct(worst['emulated']['int8'])}), while int8-cpu "
            + ("scores exactly its Q/DQ numerics on every model (no weight pair can reach the int16 limit)."
               if exact else "differs from its Q/DQ numerics somewhere: see the table."))
    reading.append(
        " This machine has VNNI, so its own ONNX Runtime figures equal the Q/DQ numerics; the loss the issue "
        "measured on an AVX2 machine without VNNI (dense lenet300: 92.6% fp32, S8S8 71.1% with optimizations on and "
        "92.7% off; 7-bit weights 92.6% both ways; U8S8 90.9% / 92.6%) is larger than this emulation gives for our "
        "dense lenet300, so read the emulated column as showing the mechanism and that int8-cpu is immune, not as a "
        "prediction of the exact loss. int8-cpu is S8S8 with 7-bit weights: it keeps int8's symmetric Q/DQ (the "
        "same graph, one bit less weight resolution, at most a few tenths of a point here), costs no latency, and is "
        "saturation-free by construction; U8S8 with 7-bit weights is as good but asymmetric, and U8U8 (also "
        "saturation-free) is about 2x slower on this CPU.")
    return "\n".join([
        "## Export: fp32 vs INT8 (int8 for TensorRT, int8-cpu for ONNX Runtime on CPU)",
        "",
        "Command: `.venv/bin/python benchmarks/export.py` (runs: `gemdeploy mine --model M --data mnist5k "
        "[--method dense | --sparsity S] --epochs E --finetune-epochs F`, then `gemdeploy export RUN --precision "
        f"int8 --precision int8-cpu --calib-samples {res['calib_samples']} --calib-method {res['calib_method']}`, "
        "then `gemdeploy bench RUN --backend onnxruntime-cpu`; measurements kept in "
        "`benchmarks/results/export/export.json`, `--render` rewrites this section from them).  ",
        f"Machine: {res['machine']}. Its CPU has **{res['cpu_int8']}**: ONNX Runtime's fused INT8 kernels here "
        "accumulate in int32.",
        "",
        "Test accuracy on the 1,000 mnist5k test digits. For each INT8 file: *ORT CPU* is ONNX Runtime with its "
        "graph optimizations on, on this machine (fused QGemm/QLinearConv kernels: what `gemdeploy bench` and a "
        "user get); *Q/DQ* is ONNX Runtime with graph optimizations off (DequantizeLinear then the float op: the "
        "quantized model's own numerics, what TensorRT executes); *no-VNNI (emulated)* runs the same file through "
        "`gemdeploy.calibration.x86_emulation`, which reproduces the arithmetic of ONNX Runtime's x86 kernels "
        "without VNNI (u8 x s8 pairs summed in a saturating int16). *bench* is the accuracy `gemdeploy bench` "
        "reports for model.int8-cpu.onnx on onnxruntime-cpu; Δ = its drop from fp32 in points.",
        "",
        markdown_table(["model", "ticket", "epochs", "fp32", "int8 ORT CPU", "int8 Q/DQ", "int8 no-VNNI (emulated)",
                        "int8-cpu ORT CPU", "int8-cpu Q/DQ", "int8-cpu no-VNNI (emulated)", "bench int8-cpu",
                        "Δ (pt)"], acc_rows),
        "",
        "Verdicts (export.json and every sidecar): " + "; ".join(verdicts) + ".",
        "",
        "".join(reading),
        "",
        "Which INT8 for ONNX Runtime on CPU: the ONNX Runtime quantization modes on the same fp32 file and "
        "calibration (entropy, 512 images, per-channel Q/DQ); latency: ONNX Runtime CPU, batch 64, 1 thread, "
        "median of 30 calls on this machine.",
        "",
        markdown_table(["model", "ticket", "mode", "Q/DQ", "ORT CPU", "no-VNNI (emulated)", "ms (batch 64)"],
                       scheme_rows) if scheme_rows else "(not measured)",
        "",
        "ONNX bytes: *dense* is the fine-tuned masked model at full width, *compacted* the model with dead "
        "channels removed (what is exported), *sparse storage* the exported fp32 model with its weights as ONNX "
        "`sparse_initializer`s (COO, int64 indices; ONNX Runtime only; for the dense model no smaller file exists, "
        "the fp32 size is shown).",
        "",
        markdown_table(["model", "ticket", "exported", "dense bytes", "compacted bytes", "sparse-storage bytes",
                        "int8 bytes", "int8-cpu bytes"], size_rows),
        "",
        "Budgets: short CPU runs (mining + fine-tuning epochs above), not the paper's 150+150: the accuracies are "
        "those of quick tickets (the ResNet-20 ticket is weak at 3+3 epochs); the point is fp32 against INT8 on "
        "the same model. " + "; ".join(details) + ".",
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench-export")
    ap.add_argument("--runs", nargs="*", default=list(RUNS))
    ap.add_argument("--calib-samples", type=int, default=512)
    ap.add_argument("--calib-method", default="entropy")
    ap.add_argument("--no-emulation", action="store_true", help="skip the emulated x86-without-VNNI column")
    ap.add_argument("--schemes", nargs="*", default=["lenet300-dense", "conv4-gm"],
                    help="runs on which the ONNX Runtime quantization modes are compared (the int8-cpu choice)")
    ap.add_argument("--render", action="store_true", help="rewrite the section from the saved measurements")
    ap.add_argument("--no-write", action="store_true", help="print, do not touch BENCHMARKS.md")
    args = ap.parse_args()
    if args.render:
        res = json.loads(RESULTS.read_text())
    else:
        res = measure(args)
        if not args.no_write:
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(res, indent=1) + "\n")
    body = render(res)
    print(body)
    if not args.no_write:
        write_section("export", body)


if __name__ == "__main__":
    main()
