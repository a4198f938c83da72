"""Export benchmark: fp32 vs INT8 (Q/DQ, ONNX Runtime CPU) test accuracy and ONNX bytes, dense vs
compacted vs sparse storage, for Gem-Miner tickets on mnist5k. Writes the "export" section of BENCHMARKS.md.

    .venv/bin/python benchmarks/export.py            # mines the tickets (once) into runs/bench-export/, exports them

Tickets are mined with the real CLI; a run that already exists is reused, so a second call only re-exports.
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

# model -> (sparsity, mining epochs, fine-tuning epochs): short CPU runs, not the paper's 150 + 150.
TICKETS = {"lenet300": (0.986, 8, 8), "conv4": (0.9, 3, 3), "resnet20": (0.9, 3, 3)}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gemdeploy.cli", *map(str, args)], capture_output=True, text=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench-export")
    ap.add_argument("--models", nargs="*", default=list(TICKETS))
    ap.add_argument("--calib-samples", type=int, default=512)
    ap.add_argument("--calib-method", default="entropy")
    ap.add_argument("--no-write", action="store_true", help="print, do not touch BENCHMARKS.md")
    args = ap.parse_args()
    rows, details = [], []
    for model in args.models:
        sparsity, epochs, ft = TICKETS[model]
        run = Path(args.out) / f"{model}-gm"
        mine = ["mine", "--model", model, "--data", "mnist5k", "--sparsity", sparsity, "--epochs", epochs,
                "--finetune-epochs", ft, "--quiet", "--out", run]
        if not (run / "summary.json").is_file():
            t = time.perf_counter()
            proc = cli(*mine, *(["--resume"] if (run / "config.json").is_file() else []))
            if proc.returncode != 0:
                sys.exit(f"mine {model} failed: {proc.stderr.strip()}")
            print(f"mined {model} in {time.perf_counter() - t:.0f} s", flush=True)
        t = time.perf_counter()
        proc = cli("export", run, "--precision", "int8", "--calib-samples", args.calib_samples, "--calib-method",
                   args.calib_method, "--overwrite", "--json", "--quiet")
        if proc.returncode not in (0, 3):  # 3: INT8 drop above --max-int8-drop, still recorded
            sys.exit(f"export {model} failed: {proc.stderr.strip()}")
        rec = json.loads(proc.stdout)
        acc, sizes = rec["accuracy"], rec["sizes"]
        summary = json.loads((run / "summary.json").read_text())
        rows.append([model, f"{summary['sparsity']:.1%}", f"{epochs}+{ft}", rec["source"], f"{acc['fp32']:.2%}",
                     f"{acc['int8']:.2%}", f"{rec['int8_drop_points']:+.2f}",
                     f"{sizes['dense_bytes']:,}", "-" if sizes["compacted_bytes"] is None else f"{sizes['compacted_bytes']:,}",
                     f"{sizes['sparse_storage_bytes']:,}", f"{sizes['int8_bytes']:,}"])
        details.append(f"{model}: export {time.perf_counter() - t:.0f} s, exporter {rec['exporter']}")
        print(rows[-1], flush=True)
    body = "\n".join([
        "## Export",
        "",
        "Command: `.venv/bin/python benchmarks/export.py` (tickets: `gemdeploy mine --model M --data mnist5k "
        "--sparsity S --epochs E --finetune-epochs F`, then `gemdeploy export RUN --precision int8 "
        f"--calib-samples {args.calib_samples} --calib-method {args.calib_method}`).",
        f"Machine: {machine()}.",
        "",
        "Test accuracy on the 1,000 mnist5k test digits, measured with ONNX Runtime (CPU) on the exported files; "
        "INT8 is the explicit Q/DQ ONNX (symmetric activations, symmetric per-channel weights) calibrated on "
        "training images. Drop = fp32 - INT8 in points (negative: INT8 was better). ONNX bytes: *dense* is the "
        "fine-tuned masked model at full width, *compacted* the model with dead channels removed (what is "
        "exported), *sparse storage* the exported fp32 model with its weights as ONNX `sparse_initializer`s "
        "(COO, int64 indices; ONNX Runtime only, TensorRT engines are built from the dense file).",
        "",
        markdown_table(["model", "sparsity", "epochs (mine+ft)", "exported", "fp32 acc", "INT8 acc", "drop (pt)",
                        "dense bytes", "compacted bytes", "sparse-storage bytes", "INT8 bytes"], rows),
        "",
        "Short CPU runs, not the paper's 150+150 epochs: the accuracies are those of quick tickets; the point "
        "is fp32 vs INT8 on the same ticket. " + "; ".join(details) + ".",
    ])
    print(body)
    if not args.no_write:
        write_section("export", body)


if __name__ == "__main__":
    main()
