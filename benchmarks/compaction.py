"""Compaction: what physical compaction buys (parameters, MACs, file bytes, CPU latency), and the accuracy of
2:4 and channel tickets next to unstructured Gem-Miner and IMP.

    .venv/bin/python -m benchmarks.compaction size        # resnet20 + vgg16 tickets -> size/latency table
    .venv/bin/python -m benchmarks.compaction accuracy    # conv4 + resnet20 on mnist5k -> accuracy table
    .venv/bin/python -m benchmarks.compaction report      # rewrite the Compaction section of BENCHMARKS.md

Runs land in benchmarks/results/compaction/runs (reused when present); results in .../compaction/*.json.
Tickets for the size/latency figures come from short mining runs on the 8x8 `digits` set (cheap on 2 cores);
the figures depend on the mask's structure, not on how long it was mined. resnet20 and vgg16 are fully
convolutional up to a global pool, so MACs and latency are measured on CIFAR-sized 1x32x32 inputs. Latency: the
ticket with its dense shapes (what an unpruned deployment runs) and the compacted model, timed alternately.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import typer

from benchmarks.report import machine, markdown_table, write_section

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "compaction"
RUNS = RESULTS / "runs"
app = typer.Typer(add_completion=False)

SIZE_TICKETS = [  # (label, extra mine args)
    ("unstructured 98.6%", ["--sparsity", "0.986"]),
    ("2:4 (+ to 98.6%)", ["--sparsity", "0.986", "--pattern", "2:4"]),
    ("2:4 only", ["--sparsity", "0.5", "--pattern", "2:4"]),
    ("channel 75%", ["--sparsity", "0.75", "--pattern", "channel"]),
]
ACC_TICKETS = [
    ("Gem-Miner unstructured", ["--sparsity", "0.9"]),
    ("Gem-Miner 2:4 (+ to 90%)", ["--sparsity", "0.9", "--pattern", "2:4"]),
    ("Gem-Miner channel 75%", ["--sparsity", "0.75", "--pattern", "channel"]),
    ("IMP", ["--sparsity", "0.9", "--method", "imp"]),
]


def mine(name: str, model: str, args: list[str], epochs: int, finetune_epochs: int, data: str = "mnist5k") -> Path:
    out = RUNS / name
    if (out / "summary.json").is_file() and (out / "compact.json").is_file():
        return out
    cmd = [sys.executable, "-m", "gemdeploy.cli", "mine", "--model", model, "--data", data, "--out", str(out),
           "--epochs", str(epochs), "--finetune-epochs", str(finetune_epochs), "--quiet", "--device", "cpu", *args]
    if out.exists():
        cmd.append("--resume")
    print("+", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)
    return out


def latency_ms(models: dict[str, torch.nn.Module], shape: tuple[int, ...], batch: int, reps: int) -> dict[str, float]:
    """Median forward latency per model, the models timed alternately so that load affects them alike."""
    x = torch.randn(batch, *shape)
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            m(x)  # warm-up
        for _ in range(reps):
            for k, m in models.items():
                t0 = time.perf_counter()
                m(x)
                times[k].append((time.perf_counter() - t0) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


@app.command()
def size(epochs: int = 1, reps1: int = 30, reps64: int = 5, image: int = 32) -> None:
    from gemdeploy.run.artifacts import RunArtifacts
    from gemdeploy.compact.compaction import load_compacted_model, model_totals

    rows = []
    for model in ("resnet20", "vgg16"):
        for label, args in SIZE_TICKETS:
            slug = f"size-{model}-" + label.split()[0].replace(":", "of")  + ("-only" if "only" in label else "")
            out = mine(slug, model, args, epochs, 0, data="digits")
            art = RunArtifacts.open(out)
            rec = art.run.read_json("compact.json")
            dense = art.finetuned_model()
            art.mask().apply_(dense)
            compact = load_compacted_model(art)
            shape = (art.input_shape[0], image, image)
            lat1 = latency_ms({"dense": dense, "compact": compact}, shape, 1, reps1)
            lat64 = latency_ms({"dense": dense, "compact": compact}, shape, 64, reps64)
            rows.append({"model": model, "ticket": label, "run": str(out.relative_to(ROOT)),
                         "weight_sparsity": art.summary()["sparsity"], "before": model_totals(dense, shape),
                         "after": model_totals(compact, shape), "input": list(shape),
                         "file_bytes": rec["file_bytes"], "latency_ms_b1": lat1, "latency_ms_b64": lat64,
                         "nm_holds": all(r["nm_holds"] for r in rec["layers"] if r["nm_eligible"])})
            print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "size.json").write_text(json.dumps({"machine": machine(), "threads": torch.get_num_threads(),
                                                   "epochs": epochs, "image": image, "rows": rows}, indent=2))


@app.command()
def accuracy(epochs: int = 2, finetune_epochs: int = 2, imp_epochs: int = 1, models: str = "conv4,resnet20",
             data: str = "mnist5k", skip_missing: bool = False) -> None:
    """Mine each ticket (reusing finished runs); with --skip-missing, only tabulate the runs already finished."""
    from gemdeploy.mine.methods import METHODS

    rows = []
    for model in models.split(","):
        for label, args in ACC_TICKETS:
            if "imp" in args and "imp" not in METHODS:
                rows.append({"model": model, "ticket": label, "pending": True})
                continue
            slug = f"acc-{data}-{model}-" + label.replace(" ", "-").replace(":", "of").replace("%", "").replace("(", "").replace(")", "").replace("+", "")
            e = imp_epochs if "imp" in args else epochs
            if skip_missing and not (RUNS / slug / "summary.json").is_file():
                rows.append({"model": model, "ticket": label, "not_run": True})
                continue
            out = mine(slug, model, args, e, finetune_epochs, data=data)
            s = json.loads((out / "summary.json").read_text())
            rows.append({"model": model, "data": data, "ticket": label, "test_acc": s["test_acc"], "sparsity": s["sparsity"],
                         "channel_sparsity": s["ticket"].get("channel_sparsity"), "epochs": e,
                         "finetune_epochs": finetune_epochs, "time_to_ticket_s": s["time_to_ticket_s"]})
            print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"accuracy-{data}.json").write_text(json.dumps({"machine": machine(), "epochs": epochs, "imp_epochs": imp_epochs,
                                                               "finetune_epochs": finetune_epochs, "rows": rows}, indent=2))


def _fmt(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


@app.command()
def report() -> None:
    parts = ["## Compaction", ""]
    size_file = RESULTS / "size.json"
    if size_file.is_file():
        data = json.loads(size_file.read_text())
        parts += [
            "Command: `.venv/bin/python -m benchmarks.compaction size` (then `... report`)  ",
            f"Machine: {data['machine']}; torch threads: {data['threads']}; PyTorch eager, fp32, CPU.  ",
            f"Tickets: Gem-Miner runs on `digits` (8x8) with `--epochs {data['epochs']} --finetune-epochs 0`: short "
            "mining runs, so only their structure matters here (accuracy: next table). MACs and latency at "
            f"1x{data['image']}x{data['image']} inputs (both nets are fully convolutional up to a global pool). "
            "*Dense* = the same ticket with its dense "
            "shapes (zeros kept), which is what runs when nothing is compacted; latency median over repeats, the two "
            "models timed alternately in one process. File bytes: `weights.safetensors` (dense fp32) vs "
            "`compact.safetensors` (thinned, sparse-encoded).", "",
        ]
        table = []
        for r in data["rows"]:
            b, a, f = r["before"], r["after"], r["file_bytes"]
            l1, l64 = r["latency_ms_b1"], r["latency_ms_b64"]
            table.append([r["model"], r["ticket"], f"{r['weight_sparsity']:.1%}",
                          f"{_fmt(b['params'])} -> {_fmt(a['params'])}", f"{_fmt(a['nonzero_params'])}",
                          f"{_fmt(b['macs'])} -> {_fmt(a['macs'])} ({b['macs'] / a['macs']:.1f}x)",
                          f"{f['dense'] / 1e3:.0f} kB -> {f['compact'] / 1e3:.0f} kB ({f['compact'] / f['dense']:.1%})",
                          f"{l1['dense']:.2f} / {l1['compact']:.2f} ({l1['dense'] / l1['compact']:.2f}x)",
                          f"{l64['dense']:.1f} / {l64['compact']:.1f} ({l64['dense'] / l64['compact']:.2f}x)",
                          "yes" if r["nm_holds"] else "no"])
        parts += [markdown_table(["model", "ticket", "weight sparsity", "params", "nonzero params after",
                                  "dense MACs", "file", "latency b=1 ms dense / compact", "latency b=64 ms dense / compact",
                                  "2:4 holds in eligible layers"], table), ""]
    for acc_file in sorted(RESULTS.glob("accuracy-*.json")):
        data = json.loads(acc_file.read_text())
        name = acc_file.stem.split("-", 1)[1]
        parts += [f"Accuracy on `{name}`: `.venv/bin/python -m benchmarks.compaction accuracy --data {name}"
                  f" --epochs {data.get('epochs', '?')} --finetune-epochs {data.get('finetune_epochs', '?')} --imp-epochs {data.get('imp_epochs', '?')}`"
                  " (test split).  ", f"Machine: {data['machine']}.", ""]
        table = []
        for r in data["rows"]:
            if r.get("not_run"):
                table.append([r["model"], r["ticket"], "not run (out of time on the shared 2-core machine)", "", "", ""])
                continue
            if r.get("pending"):
                table.append([r["model"], r["ticket"], "pending (`--method imp` not registered yet)", "", "", ""])
                continue
            table.append([r["model"], r["ticket"], f"{r['test_acc']:.1%}", f"{r['sparsity']:.1%}",
                          "" if r["channel_sparsity"] is None else f"{r['channel_sparsity']:.0%}",
                          f"{r['epochs']} + {r['finetune_epochs']}"])
        parts += [markdown_table(["model", "ticket", "test acc", "weight sparsity", "channel sparsity",
                                  "epochs (mine/round + fine-tune)"], table), ""]
    notes = RESULTS / "notes.md"
    if notes.is_file():
        parts += [notes.read_text().strip(), ""]
    write_section("compaction", "\n".join(parts))


if __name__ == "__main__":
    app()
