"""Issue 22: every torchvision classifier through mine, compact, export and bench, or refused in one line.

    .venv/bin/python -m benchmarks.zoo                      # the whole list, every pattern (hours on 2 cores)
    .venv/bin/python -m benchmarks.zoo --models resnet18,regnet_x_400mf --patterns channel
    .venv/bin/python -m benchmarks.zoo --families            # the smallest model of each family
    .venv/bin/python -m benchmarks.zoo --smoke               # one small model, one pattern, no BENCHMARKS.md
    .venv/bin/python -m benchmarks.zoo --resume              # continue an interrupted walk (its zoo.json in --work)
    .venv/bin/python -m benchmarks.zoo --smallest-first --resume  # the same, fewest parameters first: a walk cut
                                                             # short still covers the most models
    .venv/bin/python -m benchmarks.zoo --models resnext50_32x4d --patterns channel --resume --again  # after a fix
    .venv/bin/python -m benchmarks.zoo --from-json W/zoo.json  # BENCHMARKS.md's section from a walk so far

For every model of `torchvision.models.list_models(module=torchvision.models)` and every pattern, as a new user
would: 48 random 3xSxS images of 10 classes (a data factory file this script writes), `mine --pattern P --sparsity
0.5 --epochs 1 --finetune-epochs 1`, the compaction it ends with (exact logits, from compact.json), `export
--precision fp32` (verified against PyTorch) and `bench --backend onnxruntime-cpu`. Each step's outcome is `ok`,
`refused` (a clear one-line error, exit 2 or 3: an input size the model cannot take, an op without an ONNX
conversion, a layer the pattern cannot handle) or a failure the walk exists to catch: `BUG` (exit 70), `hang`
(over the step's time limit), `crash` (any other exit, e.g. killed for memory). Every step runs in its own process,
so a hang or a crash costs one cell of the table, not the walk. The table goes to the terminal and, unless
--smoke or --no-write, to BENCHMARKS.md ("Model zoo") with the machine it ran on.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import typer

from benchmarks.report import ROOT, machine, markdown_table, write_section

PATTERNS = ("unstructured", "2:4", "channel")
STEPS = ("mine", "compact", "export", "bench")
DATA_FILE = '''"""48 random {size}x{size} RGB images of 10 classes (benchmarks/zoo.py): what a new user tries first."""
import numpy as np


def make_data():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (48, 3, {size}, {size}), dtype=np.uint8)
    y = np.arange(48) % 10
    return {{"train": (x[:32], y[:32]), "val": (x[32:40], y[32:40]), "test": (x[40:], y[40:]), "num_classes": 10}}
'''
SMOKE_MODELS, SMOKE_PATTERNS, SMOKE_SIZE = ("squeezenet1_1",), ("unstructured",), 32


def torchvision_models() -> list[str]:
    from torchvision import models

    return models.list_models(module=models)


def family(name: str) -> str:
    """resnet18 -> resnet, regnet_x_400mf -> regnet, wide_resnet50_2 -> wide_resnet, mobilenet_v3_small -> mobilenet."""
    base = re.split(r"\d", name)[0].rstrip("_")
    return "wide_resnet" if base.startswith("wide_resnet") else base.split("_")[0]


def parameter_count(name: str) -> int:
    """The model's parameters from torchvision's weight metadata (nothing is downloaded); huge when it has none."""
    from torchvision import models

    try:
        return min(w.meta["num_params"] for w in models.get_model_weights(name))
    except (ValueError, KeyError, TypeError):
        return 1 << 62


def family_representatives() -> list[str]:
    """The model with the fewest parameters of each family."""
    best: dict[str, str] = {}
    for name in torchvision_models():
        f = family(name)
        if f not in best or parameter_count(name) < parameter_count(best[f]):
            best[f] = name
    return sorted(best.values())


@dataclass
class Step:
    outcome: str  # ok | refused | BUG | hang | crash | skipped
    seconds: float = 0.0
    detail: str = ""


@dataclass
class Walk:
    model: str
    pattern: str
    steps: dict[str, Step] = field(default_factory=dict)

    @property
    def through(self) -> bool:
        """Every step that was asked for went through."""
        return all(s.outcome in ("ok", "not asked") for s in self.steps.values())

    @property
    def failed(self) -> bool:
        return any(s.outcome in ("BUG", "hang", "crash") for s in self.steps.values())


# A runner executes `gemdeploy ARGS` and returns (exit status, stderr, seconds); None as the status means it hung.
Runner = Callable[[list[str], float], tuple[int | None, str, float]]


def subprocess_runner(args: list[str], timeout: float) -> tuple[int | None, str, float]:
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "gemdeploy.cli", *args], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "", time.perf_counter() - start
    return proc.returncode, proc.stderr, time.perf_counter() - start


def _step(runner: Runner, args: list[str], timeout: float) -> Step:
    code, err, seconds = runner(args, timeout)
    lines = [ln.strip() for ln in err.splitlines() if ln.strip() and not ln.startswith("WARNING")]
    last = lines[-1] if lines else ""
    if code is None:
        return Step("hang", seconds, f"still running after {timeout:.0f} s")
    if code == 0:
        return Step("ok", seconds)
    if code in (2, 3) and "Traceback" not in err:
        return Step("refused", seconds, last.removeprefix("error: "))
    return Step("BUG" if code == 70 else "crash", seconds, f"exit {code}: {last}")


def data_file(work: Path, size: int) -> Path:
    path = work / f"random{size}.py"
    if not path.is_file():
        work.mkdir(parents=True, exist_ok=True)
        path.write_text(DATA_FILE.format(size=size))
    return path


def run_folder(work: Path, model: str, pattern: str) -> Path:
    return work / "runs" / f"{model}-{pattern.replace(':', '')}"


def walk(model: str, pattern: str, work: Path, size: int, runner: Runner = subprocess_runner,
         timeout: float = 900.0, steps: tuple[str, ...] = STEPS, exporter: str = "auto") -> Walk:
    """mine -> compact -> export -> bench of one torchvision model with one pattern (or the first of ``steps``);
    each step only after the last one went through."""
    run = run_folder(work, model, pattern)
    result = Walk(model, pattern)
    mine = _step(runner, ["mine", "--model", f"torchvision:{model}", "--data", f"{data_file(work, size)}:make_data",
                          "--pattern", pattern, "--sparsity", "0.5", "--epochs", "1", "--finetune-epochs", "1",
                          "--batch-size", "16", "--out", str(run), "--overwrite", "--quiet"], timeout)
    result.steps["mine"] = mine
    if mine.outcome == "ok":
        result.steps["compact"] = _compaction(run)
    if result.steps.get("compact", Step("skipped")).outcome == "ok" and "export" in steps:
        result.steps["export"] = _step(runner, ["export", str(run), "--precision", "fp32", "--verify-samples", "8",
                                                "--exporter", exporter, "--overwrite", "--quiet"], timeout)
    if result.steps.get("export", Step("skipped")).outcome == "ok" and "bench" in steps:
        result.steps["bench"] = _step(runner, ["bench", str(run), "--backend", "onnxruntime-cpu", "-b", "1",
                                               "--iters", "3", "--warmup", "1", "--overwrite", "--json"], timeout)
    for name in STEPS:
        result.steps.setdefault(name, Step("skipped" if name in steps else "not asked"))
    return result


def _compaction(run: Path) -> Step:
    """The compaction `mine` ended with: its logits check, and how much it removed (or why channels stayed)."""
    record = json.loads((run / "compact.json").read_text())
    check = record["check"]
    seconds = float(record.get("seconds", 0.0))
    if not check["max_abs_logit_diff"] <= 1e-4 * max(check["logit_scale"], 1e-6):
        return Step("BUG", seconds, f"logits differ by {check['max_abs_logit_diff']:.3g}")
    before, after = record["before"]["params"], record["after"]["params"]
    note = f"params {after / before:.0%}, nonzeros {record['after']['nonzero_params'] / before:.0%} of dense"
    if record.get("channels_left_whole"):
        note += f"; channels left whole: {record['channels_left_whole']}"
    return Step("ok", seconds, note)


def _cell(step: Step) -> str:
    if step.outcome in ("skipped", "not asked"):
        return "-"
    text = f"{step.outcome} {step.seconds:.0f}s"
    return f"{text}: {step.detail}" if step.detail and step.outcome != "ok" else text


def table_rows(walks: list[Walk]) -> list[list[str]]:
    return [[w.model, w.pattern, *[_cell(w.steps[s]) for s in STEPS],
             w.steps["compact"].detail if w.steps["compact"].outcome == "ok" else ""] for w in walks]


HEADERS = ["model", "pattern", *STEPS, "compaction"]


def print_table(walks: list[Walk]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="torchvision models through gemdeploy (random data; outcome and wall time per step)")
    for h in HEADERS:
        table.add_column(h, overflow="fold")
    colour = {"ok": "green", "refused": "yellow", "BUG": "red", "hang": "red", "crash": "red"}
    for w, row in zip(walks, table_rows(walks)):
        cells = [escape(c) for c in row]
        for i, s in enumerate(STEPS, start=2):
            c = colour.get(w.steps[s].outcome)
            if c:
                cells[i] = f"[{c}]{cells[i]}[/{c}]"
        table.add_row(*cells)
    Console(width=200).print(table)


def summary(walks: list[Walk]) -> str:
    models = sorted({w.model for w in walks})
    patterns = {w.pattern for w in walks}
    through = [m for m in models if {w.pattern for w in walks if w.model == m} == patterns
               and all(w.through for w in walks if w.model == m)]
    failed = [w for w in walks if w.failed]
    refused = [w for w in walks if not w.through and not w.failed]
    text = (f"{len(models)} models x {len(patterns)} patterns ({len(walks)} walks): {len(through)} models through every "
            f"step with every pattern; {len(refused)} model/pattern pairs refused in one line; "
            f"{len(failed)} failures (BUG, hang or crash)")
    if failed:
        text += ": " + ", ".join(f"{w.model} {w.pattern}" for w in failed)
    return text + "."


def render(walks: list[Walk], size: int, command: str, seconds: float) -> str:
    return "\n".join([
        "## Model zoo: every torchvision classifier through gemdeploy (issue 22)", "",
        f"Command: `{command}` ({seconds / 60:.0f} min). Machine: {machine()}.", "",
        f"Each model of `torchvision.models.list_models(module=torchvision.models)`, untrained, on 48 random 3x{size}x"
        f"{size} images of 10 classes: `mine --pattern P --sparsity 0.5 --epochs 1 --finetune-epochs 1` (compaction "
        "included: *compact* checks its logits are exact), `export --precision fp32` (verified against PyTorch), "
        "`bench --backend onnxruntime-cpu -b 1`. *refused*: a one-line error naming the reason; *BUG* (exit 70), "
        "*hang*, *crash*: what must never happen. Times are wall seconds on a shared machine.", "",
        summary(walks) + _subset_note(walks), "", markdown_table(HEADERS, table_rows(walks)), ""])


def _subset_note(walks: list[Walk]) -> str:
    total = len(torchvision_models())
    models, patterns = {w.model for w in walks}, {w.pattern for w in walks}
    if len(models) == total and len(patterns) == len(PATTERNS):
        return ""
    return (f" A subset ({len(models)} of {total} models, patterns {', '.join(sorted(patterns))}); the whole list with "
            "every pattern: `python -m benchmarks.zoo`.")


def load_walks(path: Path) -> tuple[list[Walk], int, float, str]:
    """The walks of a zoo.json (with its image size, seconds and command)."""
    data = json.loads(path.read_text())
    walks = [Walk(w["model"], w["pattern"], {k: Step(**v) for k, v in w["steps"].items()}) for w in data["walks"]]
    return walks, data["size"], data["seconds"], data.get("command", "python -m benchmarks.zoo")


def main(models: str = typer.Option("", help="Comma-separated torchvision names (default: every one)."),
         families: bool = typer.Option(False, "--families", help="Only the smallest model of each family."),
         smallest_first: bool = typer.Option(False, "--smallest-first", help="Walk the models in order of parameter "
                                             "count, so that a walk cut short covers the most models."),
         patterns: str = typer.Option(",".join(PATTERNS), help="Comma-separated patterns."),
         size: int = typer.Option(64, help="Image side."),
         timeout: float = typer.Option(900.0, help="Seconds one step may take before it counts as a hang."),
         smoke: bool = typer.Option(False, help="One small model, one pattern, 32x32; nothing written to BENCHMARKS.md."),
         work: Path = typer.Option(ROOT / "benchmarks" / "results" / "zoo", help="Runs and zoo.json go here."),
         write: bool = typer.Option(True, help="Write the Model zoo section of BENCHMARKS.md."),
         resume: bool = typer.Option(False, "--resume", help="Keep the walks already in --work's zoo.json (same "
                                     "--size) and walk only the rest."),
         again: bool = typer.Option(False, "--again", help="With --resume: walk the chosen models and patterns again "
                                    "(after a fix), replacing their rows."),
         keep_runs: bool = typer.Option(False, "--keep-runs", help="Keep each walk's run folder (the whole list's "
                                        "take tens of GB); by default a walk's folder is removed once it is recorded."),
         from_json: Path = typer.Option(None, help="Only write BENCHMARKS.md's section from this zoo.json.")) -> None:
    if from_json:
        walks, size, seconds, command = load_walks(from_json)
        print_table(walks)
        write_section("model-zoo", render(walks, size, command, seconds))
        return
    known = torchvision_models()
    names = [m for m in models.split(",") if m] or (family_representatives() if families else known)
    if smallest_first:
        names = sorted(names, key=parameter_count)
    chosen = [p for p in patterns.split(",") if p]
    if smoke:
        names, chosen, size, write = list(SMOKE_MODELS), list(SMOKE_PATTERNS), SMOKE_SIZE, False
    unknown = [m for m in names if m not in known] + [p for p in chosen if p not in PATTERNS]
    if unknown:
        raise SystemExit(f"unknown model or pattern: {', '.join(unknown)}")
    command = "python -m benchmarks.zoo" + "".join(f" {a}" for a in sys.argv[1:] if a != "--resume")
    walks, before = [], 0.0
    if resume and (work / "zoo.json").is_file():
        walks, old_size, before, old_command = load_walks(work / "zoo.json")
        if old_command != command and not old_command.endswith(f"then {command} --resume"):  # said once per kind
            command = f"{old_command}, then {command} --resume"
        else:
            command = old_command
        if old_size != size:
            raise SystemExit(f"{work / 'zoo.json'} walked {old_size}x{old_size} images, not {size}x{size}")
    if again:
        walks = [w for w in walks if not (w.model in names and w.pattern in chosen)]
    done = {(w.model, w.pattern) for w in walks}
    start, seconds = time.perf_counter(), before
    for name in names:
        for pattern in chosen:
            if (name, pattern) in done:
                continue
            w = walk(name, pattern, work, size, timeout=timeout)
            print(f"{name} {pattern}: " + ", ".join(f"{s} {_cell(w.steps[s])}" for s in STEPS), flush=True)
            walks.append(w)
            seconds = before + time.perf_counter() - start  # saved after every walk: an interrupted walk keeps it
            work.mkdir(parents=True, exist_ok=True)
            tmp = work / "zoo.json.tmp"
            tmp.write_text(json.dumps({"size": size, "seconds": seconds, "command": command,
                                       "walks": [asdict(w) for w in walks]}, indent=1))
            tmp.replace(work / "zoo.json")
            if not keep_runs:
                shutil.rmtree(run_folder(work, name, pattern), ignore_errors=True)
    print_table(walks)
    print(summary(walks))
    if write:
        write_section("model-zoo", render(walks, size, command, seconds))
    if any(w.failed for w in walks):
        raise SystemExit(1)


if __name__ == "__main__":
    typer.run(main)
