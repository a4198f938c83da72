"""The deployment comparison of issue 6: ResNet-20 tickets vs the dense model and IMP, on CPU backends.

    .venv/bin/python -m benchmarks.deploy [--epochs 8] [--finetune-epochs 8] [--imp-epochs 1] [--threads 1]

Mines (or reuses, with --keep) five runs on mnist5k: dense, Gem-Miner at 98.6% unstructured, Gem-Miner
2:4, Gem-Miner with --pattern channel at 75% channel sparsity, and IMP at 98.6%; exports each (fp32 +
INT8 Q/DQ + sparse-cpu), then times them all in ONE `gemdeploy bench` call so every ratio is measured side by
side (the sparse-cpu backend's rows included).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import typer

from benchmarks.report import ROOT, machine, markdown_table, write_section

RUNS = {
    "dense": ["--method", "dense"],
    "gm-unstructured": ["--method", "gem-miner", "--sparsity", "0.986"],
    "gm-2of4": ["--method", "gem-miner", "--pattern", "2:4", "--sparsity", "0.5"],
    "gm-channel": ["--method", "gem-miner", "--pattern", "channel", "--sparsity", "0.75"],
    "imp": ["--method", "imp", "--sparsity", "0.986"],
}


def cli(*args: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "gemdeploy.cli", *map(str, args)], capture_output=True, text=True)
    if proc.returncode not in ok:
        raise SystemExit(f"gemdeploy {' '.join(map(str, args))} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def main(epochs: int = 8, finetune_epochs: int = 8, imp_epochs: int = 1, threads: int = 1, iters: int = 30,
         model: str = "resnet20", keep: bool = typer.Option(False, help="Reuse finished runs in the work folder."),
         reuse: list[str] = typer.Option([], help="NAME=RUN: take a finished run (e.g. the tickets benchmark's, on "
                                                 "its reference recipe) instead of mining NAME; it gets exported."),
         work: Path = ROOT / "benchmarks" / "results" / "deploy", write: bool = True) -> None:
    work.mkdir(parents=True, exist_ok=True)
    reused = dict(item.split("=", 1) for item in reuse)
    if set(reused) - set(RUNS):
        raise SystemExit(f"--reuse names one of {', '.join(RUNS)}, got {', '.join(set(reused) - set(RUNS))}")
    paths, budgets = {}, {}
    for name, extra in RUNS.items():
        out = Path(reused[name]) if name in reused else work / "runs" / name  # runs/ is git-ignored
        paths[name] = out
        if name in reused:
            s = json.loads((out / "summary.json").read_text())
            budgets[name] = f"{name}: reused `{out.name}` ({s['method']}, {s['epochs']} + {s['finetune_epochs']} epochs)"
            if not (out / "export" / "model.sparse-cpu.safetensors").is_file():
                cli("export", out, "--precision", "int8", "--precision", "sparse-cpu", ok=(0, 3))
            continue
        if keep and (out / "export" / "export.json").is_file():
            continue
        e = imp_epochs if name == "imp" else (1 if name == "dense" else epochs)
        print(f"mining {name} ...", flush=True)
        if not (keep and (out / "summary.json").is_file()):
            cli("mine", "--model", model, "--data", "mnist5k", *extra, "--epochs", e, "--finetune-epochs", finetune_epochs,
                "--quiet", "--overwrite", "--out", out)
        # exit 3: INT8 lost more than --max-int8-drop; the files are written and the drop is in the table
        cli("export", out, "--precision", "int8", "--precision", "sparse-cpu", "--overwrite", ok=(0, 3))
    report = work / "runs" / "bench"
    proc = cli("bench", paths["gm-unstructured"], *[a for n in RUNS if n != "gm-unstructured" for a in ("--against", paths[n])],
               "--batch-size", "1", "--batch-size", "64", "--threads", threads, "--iters", iters, "--warmup", "5",
               "--out", report, "--overwrite", "--json")
    result = json.loads(proc.stdout)
    role = {path.name: name for name, path in paths.items()}  # bench names a run by its folder (reused ones too)
    for r in result["rows"]:
        r["run"] = role.get(r["run"], r["run"])
    rows = []
    for r in sorted(result["rows"], key=lambda r: (r["backend"], r["precision"], r["batch"], r["run"])):
        lat = r["latency_ms"]
        noisy = lat.get("noisy") or r.get("baseline_noisy")  # bench marks a spread too wide to trust
        rows.append([r["backend"], r["artifact"], r["batch"], r["run"], f"{r['test_acc']:.2%}",
                     f"{lat['median']:.3f}", f"{lat['p10']:.3f}-{lat['p90']:.3f}",
                     (f"{r['speedup_vs_dense_fp32']:.2f}x" + (" (noisy)" if noisy else ""))
                     if r["speedup_vs_dense_fp32"] else "-",
                     f"{r['nonzero_params']:,}", f"{r['macs']:,}", f"{r['file_bytes']:,}"])
    goal = [r for r in result["rows"] if r["run"] == "gm-channel" and r["batch"] == 64 and r["precision"] == "fp32"]
    dense = {(r["backend"]): r for r in result["rows"] if r["run"] == "dense" and r["batch"] == 64 and r["precision"] == "fp32"}
    verdicts = []
    for r in goal:
        d = dense.get(r["backend"])
        if d:
            ok = r["speedup_vs_dense_fp32"] >= 3 and r["test_acc"] >= d["test_acc"] - 0.01
            verdicts.append(f"- {r['backend']}: channel ticket {r['speedup_vs_dense_fp32']:.2f}x lower latency than dense at "
                            f"batch 64, accuracy {r['test_acc']:.2%} vs dense {d['test_acc']:.2%} -> "
                            f"{'meets' if ok else 'misses'} the goal (>= 3x, within 1 point)")
    # The sparse CPU runtime (issue 14) against ONNX Runtime fp32 on the dense model, both timed in this bench call.
    ort_dense = {r["batch"]: r for r in result["rows"] if r["run"] == "dense" and r["backend"] == "onnxruntime-cpu"
                 and r["precision"] == "fp32"}
    for r in result["rows"]:
        if r["backend"] == "sparse-cpu" and r["run"] == "gm-unstructured" and r["batch"] in ort_dense:
            d = ort_dense[r["batch"]]["latency_ms"]["median"]
            verdicts.append(f"- sparse-cpu: 98.6% ticket at batch {r['batch']} {d / r['latency_ms']['median']:.2f}x lower "
                            f"latency than the dense model on onnxruntime-cpu fp32 ({r['latency_ms']['median']:.3f} vs "
                            f"{d:.3f} ms)")
    body = (f"## Deployment: ResNet-20 tickets vs dense and IMP (CPU)\n\n"
            f"Command: `.venv/bin/python -m benchmarks.deploy --epochs {epochs} --finetune-epochs {finetune_epochs} "
            f"--imp-epochs {imp_epochs} --threads {threads}"
            + "".join(f" --reuse {n}=RUN" for n in reused) + f"` ({model} on mnist5k; Gem-Miner {epochs} mining + "
            f"{finetune_epochs} fine-tuning epochs, "
            + ("" if "imp" in reused else f"IMP {imp_epochs} epoch(s) per round, ")
            + f"dense {finetune_epochs} epochs; "
            f"one `gemdeploy bench` call, {iters} timed calls after 5 warm-ups, {threads} CPU thread(s))"
            + (f"; reused runs: {'; '.join(budgets.values())}" if budgets else "") + "  \n"
            f"Machine: {machine()}\n\n"
            + markdown_table(["backend", "artifact", "batch", "run", "test acc", "median ms", "p10-p90 ms",
                              "speedup vs dense fp32",
                              "nonzeros", "MACs", "file bytes"], rows)
            + "\n\nGoal check (channel-pattern ticket at batch 64):\n" + ("\n".join(verdicts) or "- not measured")
            + "\n\nNot measured here: " + "; ".join(f"{u['backend']}: {u['reason']}" for u in result["unavailable"]
                                                     if "run" not in u))
    print(body)
    if write:
        write_section("deploy-cpu", body)


if __name__ == "__main__":
    typer.run(main)
