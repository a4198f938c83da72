"""The GPU benchmark: one prepared command that fills every GPU figure of BENCHMARKS.md.

    # on the GPU machine (no registry access), repository root, wheels/ from benchmarks/gpu_wheels.sh carried along:
    bash benchmarks/gpu_run.sh OUT          # installs wheels/, then runs:
    python3 -m benchmarks.gpu --out OUT/gpu.json --markdown OUT/BENCHMARKS-gpu.md
    # back here, with the returned JSON:
    .venv/bin/python -m benchmarks.gpu --from-json gpu.json          # -> the "gpu" section of BENCHMARKS.md
    # the same code at toy size on the CPU, in under a minute (tests/test_gpu_benchmark.py runs it):
    .venv/bin/python -m benchmarks.gpu --smoke        # JSON in benchmarks/results/quick/ (git-ignored)

Three parts (issue 9's numbering; they run in the order 1, 3, 2 because part 2's IMP rounds stretch to fill
whatever time is left; issue 25's paper-budget ticket table is benchmarks/gpu_tickets.py):

1. mining (the pace of the loop, issue 25): gemdeploy's Gem-Miner epoch (ScoredNetwork through
   gemdeploy.train.loop.train_epoch, the scores' L2 penalty and projection after every step) of ResNet-20 over
   50,000 CIFAR-shaped uint8 images resident on the GPU, bf16 autocast, channels_last, batch 128: with per-layer
   scores and torch's default SGD (the code before issue 25), eager (flat buffers, fused SGD), with the step in a
   CUDA graph (`mine --cuda-graph`) and torch.compile'd (`mine --compile`), next to a plain dense training epoch
   of the same model through the same loop and data (the ceiling); a ticket-training and an IMP-round epoch (the
   masked loop) eager and graphed. Optionally a torch.profiler table of a few mining steps (top ops by CUDA time).
2. tickets: `gemdeploy mine` runs (in this process, as benchmarks/tickets.py does) of resnet20 on mnist5k at
   1.44% density: Gem-Miner 150 mining + 150 fine-tuning epochs, random and SynFlow with the same fine-tuning,
   IMP on its reference recipe with as many epochs per round as the time left affords (computed from the
   measured epoch time), its ticket trained for the same 150 epochs.
3. inference: PyTorch CUDA latency at batch 1, 64 and 256 of dense, channel-compacted (75% of the channels) and
   2:4 tickets of resnet20 and vgg16, bf16, channels_last, eager / CUDA graph / torch.compile (reduce-overhead,
   i.e. inductor + CUDA graphs), and the 2:4 tickets with every qualifying layer on a
   `torch.sparse.to_sparse_semi_structured` weight (Linear layers directly, convolutions as one GEMM over
   channels-last patches). Tickets come from 1-epoch mining runs on 256 random images: their structure is what
   latency depends on, their accuracy means nothing.

Time: ``--budget`` seconds in all (default 450, inside the 8 minutes the issue allows with start-up and wheel
install), shared out between the parts (what one leaves over goes to the next); a run that passes a part's
deadline stops at its next epoch or measurement. Every figure is written to the JSON (and the markdown) the
moment it is measured, and a watchdog writes them once more and exits if the whole run overruns by 90 s, so a
run cut off anywhere still returns what it finished. Anything not measured says why.
"""

from __future__ import annotations

import copy
import gc
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import typer
from torch import nn

from benchmarks.report import ROOT, machine, markdown_table, write_section

SECTION = "gpu"
HOW_TO_RUN = [
    "here (registry access): `bash benchmarks/gpu_wheels.sh` downloads the 4 wheels the GPU image lacks into "
    "`wheels/` (git-ignored, about 2 MiB);",
    "on the GPU machine, from the repository root with `wheels/`: `bash benchmarks/gpu_run.sh \"$OUT\"`, i.e. "
    "`python3 -m pip install --no-index --no-deps --target /tmp/gemdeploy-site wheels/*.whl`, then "
    "`PYTHONPATH=$PWD:/tmp/gemdeploy-site python3 -m benchmarks.gpu --out $OUT/gpu.json --markdown "
    "$OUT/BENCHMARKS-gpu.md --work /tmp/gemdeploy-gpu` (log in `$OUT/gpu.log`); with the workplace's device tool: "
    "run(command='bash benchmarks/gpu_run.sh \"$OUT\"', carry=['wheels'], timeout_s=600);",
    "back here: copy `gpu.json` to `benchmarks/results/gpu.json`, then "
    "`.venv/bin/python -m benchmarks.gpu --from-json benchmarks/results/gpu.json` writes this section.",
    "the pace of the training loop alone (issue 25: part 1 with every mode, given the whole budget): "
    "`bash benchmarks/gpu_run.sh \"$OUT\" --parts mining`; the paper-budget ticket table: "
    "`bash benchmarks/gpu_tickets.sh \"$OUT\"` (its own section, below).",
]
PARTS = ("mining", "inference", "tickets")  # execution order
REPORT_ORDER = ("mining", "tickets", "inference")  # the issue's order
SHARES = {"mining": 0.45, "inference": 0.20, "tickets": 0.35}  # the paper-budget tickets: benchmarks/gpu_tickets.py
WATCHDOG_GRACE_S = 90.0
PENDING = "not reached"


class BudgetExceeded(Exception):
    """A part's deadline passed; the message says where the work stopped."""


# --------------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings:
    smoke: bool = False
    device: str = "cuda"
    budget_s: float = 450.0
    # part 1
    mining_images: int = 50_000
    mining_image: int = 32
    mining_batch: int = 128
    mining_epochs: int = 3  # timed epochs after one warm-up
    profile_steps: int = 40
    # part 2
    tickets_model: str = "resnet20"
    tickets_data: str = "mnist5k"
    density: float = 0.0144
    epochs: int = 150
    finetune_epochs: int = 150
    seeds: int = 1
    tickets_subset: int = 0  # >0: only this many training images (the smoke run)
    imp_max_epochs: int = 160  # the reference's round (configs/imp/resnet20.yml)
    # part 3
    models: tuple[str, ...] = ("resnet20", "vgg16")
    batches: tuple[int, ...] = (1, 64, 256)
    iters: int = 50
    warmup: int = 10
    ticket_images: int = 256
    infer_image: int = 32
    compile_backend: str = "inductor"
    threads: int = 0  # torch CPU threads (0: torch's default)


# Toy sizes: every code path of the GPU run, on the CPU, in well under a minute. torch.compile uses the "eager"
# backend (Dynamo traces, no C++/Triton code generation) so the compiled path is exercised without minutes of
# compiling; CUDA graphs and semi-structured weights need CUDA and say so.
# The budget is generous on purpose: the smoke run must measure every part even on a loaded machine; the work
# itself takes well under a minute on an idle 2-core one (480 s: the pace rows of part 1 added work, and a machine
# shared by four test suites ran out of 300 s in part 3).
SMOKE = dict(smoke=True, device="cpu", budget_s=480.0, mining_images=64, mining_image=8, mining_batch=32,
             mining_epochs=1, profile_steps=1, tickets_data="digits", tickets_subset=128, density=0.64, epochs=2,
             finetune_epochs=1, imp_max_epochs=1, batches=(2,), iters=3, warmup=1, ticket_images=16, infer_image=8,
             compile_backend="eager", threads=1)


# ---------------------------------------------------------------------------------------------------- results
def _now() -> float:
    return time.monotonic()


def log(msg: str) -> None:
    print(f"[gpu-bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


class Results:
    """The JSON being filled in; saved (with the markdown) after every figure, atomically."""

    def __init__(self, out: Path | None, markdown: Path | None, data: dict):
        self.out, self.markdown, self.data = out, markdown, data
        self.lock = threading.RLock()

    def part(self, name: str) -> dict:
        return self.data["parts"][name]

    def save(self) -> None:
        with self.lock:
            self.data["meta"]["elapsed_s"] = round(time.time() - self.data["meta"]["started_unix"], 1)
            text = json.dumps(self.data, indent=1, default=str)
            if self.out is not None:
                _atomic_write(self.out, text)
            if self.markdown is not None:
                _atomic_write(self.markdown, render(self.data) + "\n")


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def not_measured(row: dict, reason: str) -> None:
    row.update(status="not measured", reason=reason)


def measured(row: dict, **figures) -> None:
    row.update(status="measured", reason=None, **figures)


@dataclass
class Clock:
    """The whole run's deadline, and each part's share of what is left."""

    budget_s: float
    started: float = field(default_factory=_now)
    deadline: float = 0.0  # the current part's

    def end(self) -> float:
        return self.started + self.budget_s

    def begin_part(self, name: str, remaining_parts: list[str]) -> float:
        left = max(0.0, self.end() - _now())
        share = SHARES[name] / sum(SHARES[p] for p in remaining_parts)
        self.deadline = _now() + left * share
        return left * share

    def left(self) -> float:
        return self.deadline - _now()

    def over(self) -> bool:
        return self.left() <= 0


def device_meta(s: Settings) -> dict:
    from importlib import metadata

    meta = {"machine": machine(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "smoke": s.smoke, "settings": asdict(s)}
    if s.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        meta.update(device=torch.cuda.get_device_name(0), capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version(),
                    multiprocessors=props.multi_processor_count)
        try:
            import subprocess

            meta["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            meta["driver"] = None
        try:
            meta["cusparselt"] = torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else None
        except (AttributeError, RuntimeError):
            meta["cusparselt"] = None
    else:
        meta["device"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)" + \
            (": smoke run, toy sizes, no figure means anything" if s.smoke else "")
    packages = {}
    for name in ("torch-pruning", "mlxtend", "onnx", "onnxruntime", "numpy", "triton"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    meta["packages"] = packages
    return meta


# ------------------------------------------------------------------------------------------------------ plans
# Every row a part will measure exists from the start, "not measured" until it is, so a cut-off run and a
# machine without a GPU produce the same tables with the reason in place of the figure.
# (epoch, mode), in the order measured (what a cut-off run misses comes last). Epochs: Gem-Miner's mining, a plain
# dense epoch (the ceiling), a ticket's training (mask fixed, 1.44%) and an IMP round (mask fixed, 80%): the last
# two are the same masked loop with IMP's or the fine-tuning recipe. Modes: "per-layer" is Gem-Miner as gemdeploy
# had it before issue 25 (one score tensor per layer, torch's default foreach SGD; benchmarks.pace's reference);
# "eager" is gemdeploy's loop now (flat score buffers, fused SGD); "cuda-graph" is `mine --cuda-graph`; "compile"
# is `mine --compile`.
MINING_ROWS = (("dense", "eager"), ("gem-miner", "per-layer"), ("gem-miner", "eager"), ("gem-miner", "cuda-graph"),
               ("dense", "cuda-graph"), ("ticket", "eager"), ("ticket", "cuda-graph"), ("imp-round", "eager"),
               ("imp-round", "cuda-graph"), ("gem-miner", "compile"), ("dense", "compile"))
MODE_LABELS = {"per-layer": "per-layer scores, default SGD (before)", "eager": "eager", "cuda-graph": "CUDA graph",
               "compile": "torch.compile"}
EPOCH_LABELS = {"gem-miner": "Gem-Miner mining epoch", "dense": "plain dense training epoch",
                "ticket": "ticket training epoch (1.44% mask)", "imp-round": "IMP round epoch (80% mask)"}
MASKED_EPOCHS = {"ticket": (0.0144, 0.01), "imp-round": (0.8, 0.1)}  # density, lr (momentum 0.9, wd 1e-4 both)
GOAL_S, GOAL_RATIO = 1.0, 1.2  # issue 25: a mining epoch in <= 1 s and <= 1.2x the dense epoch of the same run
TICKET_METHODS = ("gem-miner", "random", "synflow", "imp")
INFER_TICKETS = ("dense", "channel 75%", "2:4", "2:4 semi-structured")
INFER_MODES = ("eager", "cuda-graph", "compiled")


MINING_LOOP = ("each epoch is gemdeploy.train.loop.train_epoch (the loop `gemdeploy mine` runs) over a gemdeploy "
               "TensorSplit of uint8 images with random crop and flip done on the device; Gem-Miner: ScoredNetwork "
               "(signed-constant weights, scores U[0,1]), SGD lr 0.1 momentum 0.9 on the scores, L2 penalty 1e-4, "
               "projection after every step; dense: kaiming-normal ResNet-20, SGD lr 0.1 momentum 0.9 wd 1e-4; "
               "ticket and IMP round: kaiming-normal ResNet-20 under a fixed random mask (gemdeploy.train.masked: "
               "gradients masked, mask enforced after every step), SGD momentum 0.9 wd 1e-4 at lr 0.01 (the "
               "fine-tuning) and 0.1 (IMP's round); per-layer: Gem-Miner's scores one tensor per layer with torch's "
               "default SGD, the code before the flat buffers (benchmarks.pace.PerLayerScoredNetwork); cuda-graph: "
               "the whole step captured once and replayed, as `gemdeploy mine --cuda-graph` does; compile: "
               "torch.compile of the forward module, as `gemdeploy mine --compile` does")


def _planned_command(s: Settings, method: str, seed: int) -> str:
    epochs = "<fitted to the time left>" if method == "imp" else s.epochs
    return (f"gemdeploy mine --model {s.tickets_model} --data {s.tickets_data} --method {method} "
            f"--sparsity {round(1 - s.density, 10):g} --epochs {epochs} --finetune-epochs {s.finetune_epochs} "
            f"--seed {seed} --device {s.device}")


def _ticket_command(s: Settings, model: str, pattern: str, sparsity: float) -> str:
    return (f"gemdeploy mine --model {model} --data synthetic --method gem-miner --sparsity {sparsity:g} --pattern "
            f"{pattern} --epochs 1 --finetune-epochs 0 --seed 0 --device {s.device} --batch-size "
            f"{min(128, s.ticket_images)}")


SEMI_HOW = {True: "torch.sparse.to_sparse_semi_structured",
            False: "a dense stand-in: on the CPU, to_sparse_semi_structured needs CUDA"}
INFER_RUNS = (("dense", None, 0.0), ("channel 75%", "channel", 0.75), ("2:4", "2:4", 0.5))


def plan(s: Settings, reason: str = PENDING) -> dict:
    mining = {"status": "not measured", "reason": reason,
              "setup": {"model": "resnet20", "images": s.mining_images, "image": s.mining_image,
                        "batch": s.mining_batch, "timed_epochs": s.mining_epochs, "loop": MINING_LOOP,
                        "steps_per_epoch": s.mining_images // s.mining_batch,
                        "precision": "bf16 autocast, channels_last" if s.device == "cuda" else "fp32 (CPU)"},
              "commands": [f"python3 -m benchmarks.gpu --parts mining{' --smoke' if s.smoke else ''}"],
              "rows": [{"epoch": kind, "mode": mode, "status": "not measured", "reason": reason}
                       for kind, mode in MINING_ROWS],
              "profile": {"status": "not measured", "reason": reason}}
    tickets = {"status": "not measured", "reason": reason,
               "setup": {"model": s.tickets_model, "data": s.tickets_data, "density": s.density, "epochs": s.epochs,
                         "finetune_epochs": s.finetune_epochs, "seeds": s.seeds},
               "commands": [f"python3 -m benchmarks.gpu --parts tickets{' --smoke' if s.smoke else ''}"],
               "rows": [{"method": m, "seed": seed, "status": "not measured", "reason": reason,
                         "command": _planned_command(s, m, seed)}
                        for seed in range(s.seeds) for m in TICKET_METHODS]}
    inference = {"status": "not measured", "reason": reason,
                 "setup": {"models": list(s.models), "batches": list(s.batches), "iters": s.iters, "warmup": s.warmup,
                           "image": s.infer_image, "ticket_images": s.ticket_images, "semi_structured": SEMI_HOW[s.device == "cuda"],
                           "timing": ("CUDA events around each call (gemdeploy.bench.backends.base.cuda_event_times)"
                                      if s.device == "cuda" else "wall clock (CPU)"),
                           "compiled": ("torch.compile(mode='reduce-overhead', dynamic=False): inductor + CUDA graphs"
                                        if s.compile_backend == "inductor"
                                        else f"torch.compile(backend='{s.compile_backend}'): Dynamo only"),
                           "precision": "bf16, channels_last" if s.device == "cuda" else "fp32 (CPU)"},
                 "commands": [f"python3 -m benchmarks.gpu --parts inference{' --smoke' if s.smoke else ''}"]
                 + [_ticket_command(s, m, p, sp) for m in s.models for _, p, sp in INFER_RUNS if p],
                 "tickets": {f"{m}|{t}": {"model": m, "ticket": t} for m in s.models for t in INFER_TICKETS},
                 "rows": [{"model": m, "ticket": t, "mode": mode, "batch": b, "status": "not measured", "reason": reason}
                          for m in s.models for t in INFER_TICKETS for mode in INFER_MODES for b in s.batches]}
    return {"mining": mining, "tickets": tickets, "inference": inference}


def _finish_part(part: dict, reason_left: str) -> None:
    """Rows still pending get ``reason_left``; the part's status sums up its rows."""
    rows = part["rows"]
    for r in rows:
        if r["status"] != "measured" and r.get("reason") == PENDING:
            r["reason"] = reason_left
    done = sum(r["status"] == "measured" for r in rows)
    part["status"] = "measured" if done == len(rows) else ("partial" if done else "not measured")
    part["reason"] = None if done else (part.get("reason") if part.get("reason") != PENDING else reason_left)


def _release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _compile(module: nn.Module, backend: str, **kw) -> Callable:
    """torch.compile as gemdeploy's --compile does it (inductor), or Dynamo alone for the smoke run."""
    return torch.compile(module, **kw) if backend == "inductor" else torch.compile(module, backend=backend)


def _raise_recompile_limit() -> None:
    # Part 3 compiles many modules of one class (3 tickets x 3 batch sizes): past Dynamo's default limit of 8
    # cache entries per code object it would silently run eager and report eager timings as compiled.
    import torch._dynamo.config as dc

    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(dc, name):
            setattr(dc, name, max(getattr(dc, name), 256))


# ------------------------------------------------------------------------------------------- part 1: mining
def resident_images(n: int, size: int, device: torch.device, channels_last: bool):
    """``n`` CIFAR-shaped uint8 images and labels living on ``device``, served by gemdeploy's own TensorSplit (random
    crop with padding 4 and flips done in whole batches on the device, as for CIFAR-10)."""
    from gemdeploy.data.splits import TensorSplit

    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, device=device, generator=gen)
    labels = torch.randint(0, 10, (n,), device=device, generator=gen)
    mean = torch.full((1, 3, 1, 1), 0.5, device=device)
    std = torch.full((1, 3, 1, 1), 0.29, device=device)
    return TensorSplit(images, labels, mean, std, crop_padding=4, flip=True, channels_last=channels_last)


def epoch_runner(kind: str, mode: str, s: Settings, hw, split) -> Callable[[int], object]:
    """One training epoch over ``split`` of ``kind`` (MINING_ROWS) in ``mode``, set up as gemdeploy's phases set it
    up (GemMiner._mine, train_masked); the step is built once, so a CUDA graph is captured once."""
    from benchmarks.pace import PerLayerScoredNetwork
    from gemdeploy.mine.methods.gem_miner import ScoredNetwork
    from gemdeploy.mine.recipes import paper_lambda
    from gemdeploy.models import build_model
    from gemdeploy.models.init import initialize
    from gemdeploy.sparsity.masks import Mask
    from gemdeploy.train.loop import make_step, sgd, train_epoch
    from gemdeploy.train.masked import MaskedModel

    torch.manual_seed(0)
    hw = replace(hw, cuda_graph=mode == "cuda-graph")
    shape = (3, s.mining_image, s.mining_image)
    penalty = after_step = None
    if kind == "gem-miner":
        net = hw.prepare(initialize(build_model("resnet20", shape, 10), "signed-constant"))
        cls = PerLayerScoredNetwork if mode == "per-layer" else ScoredNetwork
        scored = cls(net, torch.Generator().manual_seed(0)).train()
        params = scored.score_parameters()
        # before: torch's default SGD (foreach on CUDA); now: gemdeploy's sgd (fused on CUDA)
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9) if mode == "per-layer" else sgd(params, 0.1, 0.9, 0.0)
        module = scored
        lam = paper_lambda(0.0144)
        penalty, after_step = (lambda: lam * scored.l2_penalty()), scored.project_
    else:
        module = hw.prepare(initialize(build_model("resnet20", shape, 10), "kaiming-normal")).train()
        lr = 0.1
        if kind in MASKED_EPOCHS:
            density, lr = MASKED_EPOCHS[kind]
            gen = torch.Generator().manual_seed(0)
            mask = Mask({k: (torch.rand(m.shape, generator=gen) < density).float()
                         for k, m in Mask.ones_like(module).items()})
            masked = MaskedModel(module, mask)
            after_step = masked.enforce
        opt = sgd(module.parameters(), lr, 0.9, 1e-4)
    forward = _compile(module, s.compile_backend) if mode == "compile" else module
    step = make_step(forward, opt, hw, penalty, after_step)
    return lambda epoch: train_epoch(forward, opt, split, hw, epoch=epoch, seed=0, batch_size=s.mining_batch, step=step)


def part_mining(s: Settings, res: Results, clock: Clock) -> None:
    from gemdeploy.train.loop import Hardware

    part = res.part("mining")
    hw = Hardware.resolve(s.device)
    split = resident_images(s.mining_images, s.mining_image, hw.device, hw.channels_last)
    for row in part["rows"]:
        if clock.over():
            break
        label = f"{row['epoch']} {row['mode']}"
        if row["mode"] == "cuda-graph" and hw.device.type != "cuda":
            not_measured(row, "needs CUDA")
            continue
        log(f"mining: {label} ...")
        run = None
        try:
            run = epoch_runner(row["epoch"], row["mode"], s, hw, split)
            t0 = time.perf_counter()
            first = run(0)  # warm-up: cuDNN autotuning; compile for the compiled rows
            warm_s = time.perf_counter() - t0
            # At least one timed epoch (seconds) even past the part's deadline, so a long compilation still yields
            # its figure; more while the part's time allows another.
            epochs = []
            while len(epochs) < s.mining_epochs and (not epochs or clock.left() > epochs[-1].seconds):
                epochs.append(run(len(epochs) + 1))
            if epochs:
                sec = statistics.median(e.seconds for e in epochs)
                measured(row, epoch_s=sec, images_per_s=statistics.median(e.images_per_s for e in epochs),
                         epochs_timed=len(epochs), epoch_times_s=[round(e.seconds, 4) for e in epochs],
                         warmup_epoch_s=warm_s, images_per_epoch=epochs[0].images, loss_first=first.loss)
                log(f"mining: {label}: {sec:.3f} s/epoch, {row['images_per_s']:,.0f} images/s "
                    f"(warm-up {warm_s:.1f} s)")
        except Exception as exc:  # one failing configuration must not cost the others
            not_measured(row, f"error: {_short(exc)}")
            row["traceback"] = traceback.format_exc()[-2000:]
            log(f"mining: {label} failed: {_short(exc)}")
        del run
        _release()
        res.save()
        if (row["epoch"], row["mode"]) == ("gem-miner", "eager"):  # cheap, and it says where an eager epoch goes
            part["profile"] = _profile_or_reason(s, hw, split, clock)
            res.save()
    if part["profile"].get("reason") == PENDING:
        part["profile"] = {"status": "not measured", "reason": "budget: the part's time ran out first"}
    _finish_part(part, "budget: the part's time ran out first")
    _mining_verdict(part, s)
    res.save()


def _profile_or_reason(s: Settings, hw, split, clock: Clock) -> dict:
    if s.profile_steps <= 0:
        return {"status": "not measured", "reason": "--profile-steps 0"}
    if clock.left() < 5:
        return {"status": "not measured", "reason": "budget: no time left for the profile"}
    log(f"mining: profiling {s.profile_steps} eager Gem-Miner steps ...")
    try:
        return profile_mining(s, hw, split)
    except Exception as exc:
        return {"status": "not measured", "reason": f"error: {_short(exc)}", "traceback": traceback.format_exc()[-2000:]}


def _mining_verdict(part: dict, s: Settings) -> None:
    """Each epoch against the dense epoch of its mode (per-layer: the eager dense epoch), each mode's gain over
    eager, and issue 25's goal: the best mining epoch <= GOAL_S and <= GOAL_RATIO x the best dense epoch."""
    by = {(r["epoch"], r["mode"]): r for r in part["rows"] if r["status"] == "measured"}
    ratios, vs_dense, vs_eager = {}, {}, {}
    for (kind, mode), r in by.items():
        dense = by.get(("dense", "eager" if mode == "per-layer" else mode))
        if dense is not None:
            vs_dense[f"{kind}|{mode}"] = r["epoch_s"] / dense["epoch_s"]
        eager = by.get((kind, "eager"))
        if eager is not None and mode != "eager":
            vs_eager[f"{kind}|{mode}"] = eager["epoch_s"] / r["epoch_s"]
    for mode in ("eager", "compile", "cuda-graph", "per-layer"):
        if f"gem-miner|{mode}" in vs_dense:
            ratios[mode] = vs_dense[f"gem-miner|{mode}"]
    part.update(ratios=ratios, vs_dense=vs_dense, speedup_over_eager=vs_eager)
    mines = [r for (k, m), r in by.items() if k == "gem-miner" and m != "per-layer"]
    denses = [r for (k, _), r in by.items() if k == "dense"]
    if not mines or not denses:
        part["goal"] = {"met": None, "detail": "not measured"}
        return
    best_m = min(mines, key=lambda r: r["epoch_s"])
    best_d = min(denses, key=lambda r: r["epoch_s"])
    ratio = best_m["epoch_s"] / best_d["epoch_s"]
    met = best_m["epoch_s"] <= GOAL_S and ratio <= GOAL_RATIO
    part["goal"] = {"met": None if s.smoke else met, "best_mining": best_m["mode"], "best_mining_epoch_s": best_m["epoch_s"],
                    "best_dense": best_d["mode"], "best_dense_epoch_s": best_d["epoch_s"], "ratio": ratio,
                    "detail": (f"best mining epoch {best_m['epoch_s']:.2f} s ({best_m['mode']}) vs goal {GOAL_S:g} s; "
                               f"{ratio:.2f}x the best dense epoch ({best_d['epoch_s']:.2f} s, {best_d['mode']}) vs goal "
                               f"{GOAL_RATIO:g}x" + (" (smoke sizes: no verdict)" if s.smoke else ""))}


def _event_time(evt, *names: str) -> float:
    for n in names:
        v = getattr(evt, n, None)
        if v is not None:
            return float(v)
    return 0.0


def profile_mining(s: Settings, hw, split) -> dict:
    """torch.profiler over ``profile_steps`` eager Gem-Miner steps (after one unprofiled warm-up pass): the top
    operators by self CUDA time (CPU time on the CPU), and how much of the wall time the GPU was busy."""
    from torch.profiler import ProfilerActivity, profile

    from gemdeploy.data.splits import TensorSplit

    n = s.profile_steps * s.mining_batch
    sub = TensorSplit(split.images[:n], split.labels[:n], split.mean, split.std, split.crop_padding, split.flip,
                      split.channels_last)
    run = epoch_runner("gem-miner", "eager", s, hw, sub)
    run(0)
    cuda = hw.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        stats = run(1)
    events = prof.key_averages()
    dev_keys = ("self_device_time_total", "self_cuda_time_total")
    key = dev_keys if cuda else ("self_cpu_time_total",)
    top = sorted(events, key=lambda e: _event_time(e, *key), reverse=True)[:15]
    rows = [{"op": e.key, "calls": int(e.count), "self_device_ms": _event_time(e, *dev_keys) / 1e3,
             "self_cpu_ms": _event_time(e, "self_cpu_time_total") / 1e3} for e in top]
    table = None
    for sort in (("self_device_time_total", "self_cuda_time_total") if cuda else ("self_cpu_time_total",)):
        try:
            table = events.table(sort_by=sort, row_limit=15)
            break
        except Exception:  # the sort keys were renamed across torch versions (cuda -> device)
            continue
    kernels = sum(_event_time(e, *dev_keys) for e in events if getattr(e, "device_type", None) is not None
                  and "CUDA" in str(getattr(e, "device_type")))
    return {"status": "measured", "reason": None, "steps": s.profile_steps, "wall_s": stats.seconds,
            "sorted_by": "self CUDA time" if cuda else "self CPU time (no GPU)", "top": rows,
            "cuda_kernel_ms": kernels / 1e3 if cuda else None, "table": table}


# ----------------------------------------------------------------------------------------- part 2: tickets
class DeadlineReporter:
    """A silent gemdeploy Reporter that prints a progress line now and then and stops the run (BudgetExceeded,
    raised between epochs, after the epoch's checkpoint) once the part's deadline has passed."""

    def __init__(self, clock: Clock, label: str, every: int = 25):
        self.clock, self.label, self.every = clock, label, every
        self.enabled = False
        self.phase, self.total, self.done = "", 0, 0

    def start(self, phase: str, total: int, done: int = 0) -> None:
        self.phase, self.total, self.done = phase, total, done

    def update(self, *, loss: float, acc: float, density: float, advance: int = 1) -> None:
        self.done += advance
        if self.done % self.every == 0 or self.done == self.total:
            log(f"tickets: {self.label} {self.phase} {self.done}/{self.total} val acc {acc:.2%} density {density:.3%}")
        if self.clock.over():
            raise BudgetExceeded(f"{self.phase} epoch {self.done}/{self.total}")

    def log(self, message: str) -> None:
        pass

    def close(self) -> None:
        pass


def subset(bundle, n: int):
    """``bundle`` with only its first ``n`` training and n // 2 validation and test images (the smoke run)."""
    from gemdeploy.data.splits import DataBundle, TensorSplit

    def cut(split, k):
        return TensorSplit(split.images[:k], split.labels[:k], split.mean, split.std, split.crop_padding, split.flip,
                           split.channels_last)

    return DataBundle(bundle.name, bundle.input_shape, bundle.num_classes, cut(bundle.train, n),
                      cut(bundle.val, n // 2), cut(bundle.test, n // 2), bundle.real)


def _mine_command(cfg) -> str:
    parts = ["gemdeploy mine", f"--model {cfg.model}", f"--data {cfg.data}", f"--method {cfg.method}",
             f"--sparsity {cfg.sparsity:g}"]
    if cfg.pattern != "unstructured":
        parts.append(f"--pattern {cfg.pattern}")
    parts += [f"--epochs {cfg.epochs}", f"--finetune-epochs {cfg.finetune_epochs}", f"--seed {cfg.seed}",
              f"--device {cfg.device}"]
    return " ".join(parts)


def part_tickets(s: Settings, res: Results, clock: Clock, work: Path) -> None:
    from gemdeploy.mine.methods.imp import level_counts
    from gemdeploy.mine.pipeline import prepare
    from gemdeploy.stages import mine_in
    from gemdeploy.models import build_model
    from gemdeploy.run.config import MineConfig
    from gemdeploy.run.rundir import RunDir
    from gemdeploy.sparsity.masks import prunable_weights

    part = res.part("tickets")
    prepared = prepare(MineConfig(model=s.tickets_model, data=s.tickets_data, device=s.device))
    if s.tickets_subset:
        prepared = (prepared[0], subset(prepared[1], s.tickets_subset))
        part["setup"]["subset"] = f"the first {s.tickets_subset} training images (smoke)"
    data = prepared[1]
    train_size = len(data.train)
    total = sum(w.numel() for w in prunable_weights(build_model(s.tickets_model, data.input_shape,
                                                                data.num_classes)).values())
    rounds = len(level_counts(total, s.density)) - 1
    part["setup"].update(train_images=train_size, prunable_weights=total, imp_rounds=rounds,
                         batch=128, input_shape=list(data.input_shape))
    epoch_time: float | None = None  # seconds per masked-training epoch (validation and checkpoint included)
    for row in part["rows"]:
        method, seed = row["method"], row["seed"]
        if clock.over():
            break
        epochs = s.epochs
        if method == "imp":
            if epoch_time is None:
                not_measured(row, "no epoch time measured before IMP (the runs before it did not finish)")
                continue
            margin = 5.0 + 0.05 * clock.left()
            fits = math.floor((clock.left() - margin - s.finetune_epochs * epoch_time) / (rounds * epoch_time))
            if fits < 1:
                need = (rounds + s.finetune_epochs) * epoch_time
                not_measured(row, f"budget: {rounds} rounds of 1 epoch + {s.finetune_epochs} ticket epochs need "
                                  f"~{need:.0f} s, {clock.left():.0f} s left")
                continue
            epochs = min(fits, s.imp_max_epochs)
            row["epochs_per_round_rule"] = (f"floor((time left {clock.left():.0f} s - margin {margin:.0f} s - "
                                            f"{s.finetune_epochs} ticket epochs) / ({rounds} rounds x "
                                            f"{epoch_time:.3f} s per epoch)), at most {s.imp_max_epochs}")
        cfg = MineConfig(model=s.tickets_model, data=s.tickets_data, method=method, sparsity=round(1 - s.density, 10),
                         epochs=epochs, finetune_epochs=s.finetune_epochs, seed=seed,
                         device=s.device).resolve(train_size=train_size)
        out = work / "tickets" / f"{method}-s{seed}"
        row["command"] = _mine_command(cfg)
        log(f"tickets: {method} seed {seed}: {epochs} {'epochs per round' if method == 'imp' else 'mining epochs'} "
            f"+ {s.finetune_epochs} ticket epochs, {clock.left():.0f} s left")
        started = time.perf_counter()
        try:
            summary = mine_in(cfg, RunDir.create(out, overwrite=True), reporter=DeadlineReporter(clock, method),
                               prepared=prepared)
        except BudgetExceeded as exc:
            last = RunDir(out).metrics()[-1:] or [{}]
            not_measured(row, f"budget: cut off at {exc} after {time.perf_counter() - started:.0f} s")
            row["cut_off"] = {k: last[0].get(k) for k in ("phase", "epoch", "val_acc", "density", "time_s")}
            log(f"tickets: {method} cut off at {exc}")
            res.save()
            break
        except Exception as exc:
            not_measured(row, f"error: {_short(exc)}")
            row["traceback"] = traceback.format_exc()[-2000:]
            log(f"tickets: {method} failed: {_short(exc)}")
            res.save()
            continue
        ticket = summary["ticket"]
        measured(row, test_acc=summary["test_acc"], val_acc=summary["val_acc"], density=summary["density"],
                 time_to_ticket_s=summary["time_to_ticket_s"], finetune_time_s=summary["finetune_time_s"],
                 total_time_s=summary["total_time_s"], ticket_epochs=summary["ticket_epochs"],
                 epochs=summary["epochs"], finetune_epochs=summary["finetune_epochs"],
                 rounds=ticket.get("rounds"), init=summary["init"],
                 trained_from=(summary.get("ticket_training") or {}).get("starts_from"),
                 recipe=(summary.get("ticket_training") or {}).get("recipe"),
                 wall_s=time.perf_counter() - started)
        if s.finetune_epochs:
            epoch_time = summary["finetune_time_s"] / s.finetune_epochs  # what an IMP round's epoch costs too
            row["ticket_epoch_s"] = epoch_time
        if method == "gem-miner" and summary["epochs"]:
            row["mining_epoch_s"] = summary["time_to_ticket_s"] / summary["epochs"]
        log(f"tickets: {method} seed {seed}: test {summary['test_acc']:.2%} at density {summary['density']:.3%}, "
            f"time to ticket {summary['time_to_ticket_s']:.1f} s, total {summary['total_time_s']:.1f} s")
        res.save()
    _finish_part(part, "budget: the part's time ran out first")
    res.save()


# --------------------------------------------------------------------------------------- part 3: inference
# The conv/linear -> GEMM lowering and the 2:4 layout check live in the library (the pytorch-cuda-2:4 bench backend).
from gemdeploy.bench.semi_structured import ConvAsGemm, GemmLinear, patches_nhwc  # noqa: E402,F401
from gemdeploy.sparsity.kernels24 import holds_24 as holds_2of4, weight_2d as conv_weight_2d  # noqa: E402


def _conv_qualifies(m: nn.Conv2d) -> bool:
    return (m.groups == 1 and tuple(m.dilation) == (1, 1) and isinstance(m.padding, tuple)
            and m.padding_mode == "zeros")


def semi_structured(model: nn.Module, sparsify: Callable[[torch.Tensor], torch.Tensor]) -> tuple[nn.Module, dict]:
    """A copy of ``model`` whose layers that hold 2:4 (rows of the [K, R*S*C] / [out, in] weight) and that
    ``sparsify`` accepts run as GEMMs on the sparsified weight; the others stay as they are (and say why)."""
    out = copy.deepcopy(model)
    swapped, kept = [], {}
    for name, mod in list(out.named_modules()):
        if isinstance(mod, nn.Linear):
            w2d = mod.weight.detach()
        elif isinstance(mod, nn.Conv2d):
            if not _conv_qualifies(mod):
                kept[name] = "grouped, dilated or non-zero-padded conv"
                continue
            w2d = conv_weight_2d(mod.weight)
        else:
            continue
        if not holds_2of4(w2d):
            kept[name] = "weights not 2:4 (first layer or not 2:4-eligible)"
            continue
        try:
            sparse = sparsify(w2d)
        except Exception as exc:  # torch's shape/dtype constraints: the layer does not qualify
            kept[name] = f"refused: {_short(exc)[:160]}"
            continue
        new = GemmLinear(sparse, mod.bias) if isinstance(mod, nn.Linear) else ConvAsGemm(mod, sparse)
        parent_name, _, attr = name.rpartition(".")
        setattr(out.get_submodule(parent_name) if parent_name else out, attr, new)
        swapped.append({"layer": name, "type": type(mod).__name__, "shape": list(w2d.shape),
                        "weight": type(sparse).__name__})
    return out.eval(), {"swapped": swapped, "kept": kept}


def _sparsifier(cuda: bool) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    if cuda:
        from torch.sparse import to_sparse_semi_structured

        return to_sparse_semi_structured, SEMI_HOW[True]
    # The CPU has no semi-structured kernels: the same conversion with the dense 2:4 weights, so the smoke run
    # checks everything but the sparse GEMM itself.
    return (lambda w: w.clone()), SEMI_HOW[False]


def _ticket_run(work: Path, model: str, pattern: str, sparsity: float, hw, s: Settings) -> nn.Module:
    """A 1-epoch Gem-Miner ticket on a few random CIFAR-shaped images, mined and compacted (gemdeploy.stages)."""
    from gemdeploy.compact.compaction import load_compacted_model
    from gemdeploy.data.sets import synthetic_bundle
    from gemdeploy.stages import mine_in
    from gemdeploy.progress import Reporter
    from gemdeploy.run.artifacts import RunArtifacts
    from gemdeploy.run.config import MineConfig
    from gemdeploy.run.rundir import RunDir

    n = s.ticket_images
    data = synthetic_bundle("synthetic", (3, s.infer_image, s.infer_image), 10, n, pool=n).to(hw.device, hw.channels_last)
    cfg = MineConfig(model=model, data="synthetic", method="gem-miner", pattern=pattern, sparsity=sparsity, epochs=1,
                     finetune_epochs=0, batch_size=min(128, n), device=s.device).resolve(train_size=n)
    out = work / "inference" / f"{model}-{pattern.replace(':', 'of')}"
    mine_in(cfg, RunDir.create(out, overwrite=True), reporter=Reporter(enabled=False), prepared=(hw, data))
    return load_compacted_model(RunArtifacts.open(out)).eval()


def _latency(fn: Callable[[], object], iters: int, warmup: int, cuda: bool) -> dict:
    from gemdeploy.bench.backends.base import cuda_event_times

    if cuda:
        times = cuda_event_times(fn, iters, warmup)
    else:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    ms = sorted(t * 1e3 for t in times)
    return {"median_ms": statistics.median(ms), "p90_ms": ms[min(len(ms) - 1, int(0.9 * len(ms)))],
            "min_ms": ms[0], "iters": iters, "warmup": warmup}


def _cuda_graph(module: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """``module(x)`` captured once into a CUDA graph (after warm-up on a side stream); the call replays it."""
    from gemdeploy.bench.backends.cuda_graph import capture

    graph, _ = capture(module, x.clone())
    return graph.replay


def part_inference(s: Settings, res: Results, clock: Clock, work: Path) -> None:
    from gemdeploy.compact.compaction import model_totals
    from gemdeploy.models import build_model
    from gemdeploy.train.loop import Hardware

    part = res.part("inference")
    hw = Hardware.resolve(s.device)
    cuda = hw.device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    shape = (3, s.infer_image, s.infer_image)
    sparsify, how = _sparsifier(cuda)
    rows = {(r["model"], r["ticket"], r["mode"], r["batch"]): r for r in part["rows"]}
    modules: dict[tuple[str, str], nn.Module] = {}
    torch.manual_seed(0)

    def place(m: nn.Module) -> nn.Module:
        m = m.eval().to(hw.device, dtype)
        return m.to(memory_format=torch.channels_last) if cuda else m

    # The tickets: dense (the architecture at its init), channel 75% and 2:4 from short mining runs, compacted.
    for model in s.models:
        for ticket, pattern, sparsity in INFER_RUNS:
            info = part["tickets"][f"{model}|{ticket}"]
            if clock.over():
                break
            try:
                if pattern is None:
                    net = build_model(model, shape, 10).eval()
                    info["how"] = "the architecture at a random init (latency only)"
                else:
                    net = _ticket_run(work, model, pattern, sparsity, hw, s).cpu()
                    info["how"] = f"1-epoch Gem-Miner ticket, compacted: {_ticket_command(s, model, pattern, sparsity)}"
                info.update(model_totals(net, shape))
                modules[(model, ticket)] = place(net)
                log(f"inference: {model} {ticket}: {info['params']:,} params, {info['macs']:,} MACs")
            except Exception as exc:
                info["error"] = _short(exc)
                info["traceback"] = traceback.format_exc()[-2000:]
                log(f"inference: {model} {ticket} failed: {_short(exc)}")
        if (model, "2:4") in modules:
            info = part["tickets"][f"{model}|2:4 semi-structured"]
            try:
                src = modules[(model, "2:4")]
                semi, layers = semi_structured(src, sparsify)
                info.update(layers, how=f"the 2:4 ticket, qualifying layers via {how}")
                with torch.inference_mode():
                    x = torch.randn(8, *shape, device=hw.device, dtype=dtype)
                    if cuda:
                        x = x.contiguous(memory_format=torch.channels_last)
                    ref, got = src(x).float(), semi(x).float()
                info["max_abs_logit_diff"] = float((ref - got).abs().max())
                info["logit_scale"] = float(ref.abs().max())
                modules[(model, "2:4 semi-structured")] = semi
                log(f"inference: {model} 2:4 semi-structured: {len(layers['swapped'])} layers swapped, "
                    f"max |logit diff| {info['max_abs_logit_diff']:.3g} (scale {info['logit_scale']:.3g})")
            except Exception as exc:
                info["error"] = _short(exc)
                info["traceback"] = traceback.format_exc()[-2000:]
                log(f"inference: {model} semi-structured failed: {_short(exc)}")
        res.save()
    for key, info in part["tickets"].items():
        if tuple(key.split("|")) not in modules:
            reason = f"error: {info['error']}" if "error" in info else "budget: the part's time ran out first"
            for r in part["rows"]:
                if (r["model"], r["ticket"]) == tuple(key.split("|")):
                    not_measured(r, f"no ticket ({reason})")

    def inputs(batch: int) -> torch.Tensor:
        x = torch.randn(batch, *shape, device=hw.device, dtype=dtype)
        return x.contiguous(memory_format=torch.channels_last) if cuda else x

    def measure(row: dict, make: Callable[[torch.Tensor], Callable[[], object]], batch: int) -> None:
        try:
            with torch.inference_mode():
                x = inputs(batch)
                t0 = time.perf_counter()
                fn = make(x)
                fn()  # first call: cuDNN autotuning, graph capture, compilation
                if cuda:
                    torch.cuda.synchronize()
                first = time.perf_counter() - t0
                measured(row, first_call_s=first, **_latency(fn, s.iters, s.warmup, cuda))
        except Exception as exc:
            not_measured(row, f"error: {_short(exc)}")
            row["traceback"] = traceback.format_exc()[-2000:]
        _add_speedups(part)
        res.save()

    # Eager and CUDA-graph rows first (cheap), then the compiled ones, which cost a compilation each.
    for (model, ticket), module in modules.items():
        for mode in ("eager", "cuda-graph"):
            for batch in s.batches:
                row = rows[(model, ticket, mode, batch)]
                if clock.over():
                    break
                if mode == "cuda-graph" and not cuda:
                    not_measured(row, "needs CUDA")
                    continue
                measure(row, (lambda x, m=module: (lambda: m(x))) if mode == "eager"
                        else (lambda x, m=module: _cuda_graph(m, x)), batch)
        log(f"inference: {model} {ticket}: " + ", ".join(
            f"{r['mode']} b={r['batch']} {r['median_ms']:.3f} ms" for r in part["rows"]
            if (r["model"], r["ticket"]) == (model, ticket) and r["status"] == "measured"))
    _raise_recompile_limit()
    # Every model's dense, channel and 2:4 tickets before the semi-structured variants (the least likely to compile).
    for (model, ticket), module in sorted(modules.items(), key=lambda kv: kv[0][1] == "2:4 semi-structured"):
        if clock.over():
            break
        torch._dynamo.reset()
        kw = dict(mode="reduce-overhead", dynamic=False)
        compiled = _compile(module, s.compile_backend, **kw)
        for batch in s.batches:
            row = rows[(model, ticket, "compiled", batch)]
            if clock.over():
                break
            log(f"inference: compiling {model} {ticket} at batch {batch} ...")
            measure(row, lambda x, m=compiled: (lambda: m(x)), batch)
        del compiled
    torch._dynamo.reset()
    _finish_part(part, "budget: the part's time ran out first")
    _add_speedups(part)
    modules.clear()
    _release()
    res.save()


def _add_speedups(part: dict) -> None:
    dense = {(r["model"], r["mode"], r["batch"]): r for r in part["rows"]
             if r["ticket"] == "dense" and r["status"] == "measured"}
    for r in part["rows"]:
        d = dense.get((r["model"], r["mode"], r["batch"]))
        r["speedup_vs_dense"] = d["median_ms"] / r["median_ms"] if d and r["status"] == "measured" else None


# -------------------------------------------------------------------------------------------------- render
def _fmt_s(v: float | None) -> str:
    return "" if v is None else (f"{v:.2f} s" if v < 100 else f"{v:.0f} s")


def _cell(row: dict, common: str | None, text: Callable[[dict], str]) -> str:
    if row["status"] == "measured":
        return text(row)
    reason = row.get("reason")
    return "not measured" if reason == common or not reason else f"not measured ({reason[:120]})"


def _common_reason(rows: list[dict]) -> str | None:
    reasons = {r.get("reason") for r in rows if r["status"] != "measured"}
    return reasons.pop() if len(reasons) == 1 else None


def render(result: dict) -> str:
    """The GPU section of BENCHMARKS.md from the benchmark's JSON."""
    meta, parts = result["meta"], result["parts"]
    smoke = meta.get("smoke")
    lines = ["## GPU", ""]
    if smoke:
        lines += ["**Smoke run** (`--smoke`: every part at toy size on the CPU, to keep the script working; "
                  "no figure below means anything).", ""]
    lines += ["How to run it (8 minutes on one H100 or H200; no registry needed there):", ""]
    lines += [f"{i}. {step}" for i, step in enumerate(HOW_TO_RUN, 1)] + [""]
    if meta.get("not_run"):
        lines += [f"**Not run yet ({meta['not_run']})**: every figure below is marked not measured; the next time a "
                  "GPU is at hand, the commands above run first.", ""]
    else:
        lines += _render_run_meta(meta)
    for name in REPORT_ORDER:
        lines += {"mining": _render_mining, "tickets": _render_tickets, "inference": _render_inference}[name](parts[name])
        lines.append("")
    lines += ["Not in this benchmark: TensorRT engines and ONNX Runtime CUDA (the GPU image has no TensorRT and only the "
              "CPU build of onnxruntime; `gemdeploy export --trt` and `gemdeploy bench --backend tensorrt` run inside "
              "the Dockerfile's TensorRT container), and ResNet-50 mining at 224x224 "
              "(`gemdeploy mine --model resnet50 --data synthetic-imagenet --device cuda`)."]
    return "\n".join(lines).rstrip()


def _render_run_meta(meta: dict) -> list[str]:
    return [f"This run: `{meta.get('command', '?')}`  ",
              f"Device: **{meta.get('device', '?')}**"
              + (f" (compute capability {meta['capability']}, {meta['gpu_memory_gib']} GiB, driver {meta.get('driver')})"
                 if meta.get("capability") else "")
              + f"; torch {meta.get('torch')}, CUDA {meta.get('cuda')}"
              + (f", cuDNN {meta['cudnn']}" if meta.get("cudnn") else "")
              + (f", cuSPARSELt {meta['cusparselt']}" if meta.get("cusparselt") else "")
              + f"; Python {meta.get('python')}  ",
              f"Machine: {meta.get('machine')}  ",
              f"Budget: {meta.get('settings', {}).get('budget_s', '?')} s for the three parts; the run took "
              f"{meta.get('elapsed_s', '?')} s" + (" (finished)" if meta.get("finished") else
                                                    " (**did not finish**: figures up to where it stopped)") + ".", ""]


def _part_status(part: dict) -> list[str]:
    if part["status"] == "measured":
        return []
    common = _common_reason(part["rows"])
    if part["status"] == "not measured" and common:
        return [f"**Not measured: {common}.**", ""]
    return ["Partly measured; each missing figure says why.", ""]


def _render_mining(part: dict) -> list[str]:
    st = part["setup"]
    lines = [f"### 1. Mining throughput: ResNet-20, {st['images']:,} CIFAR-shaped images on the device, batch {st['batch']}",
             "", f"{st['precision']}; median of up to {st['timed_epochs']} timed epochs after a warm-up epoch (cuDNN "
             f"autotuning, compilation); {st['steps_per_epoch']} steps per epoch. Command: `{part['commands'][0]}`; "
             + st["loop"] + ".", ""]
    lines += _part_status(part)
    common = _common_reason(part["rows"]) if part["status"] == "not measured" else None
    ratios = part.get("ratios", {})
    vs_dense = part.get("vs_dense") or {f"gem-miner|{m}": v for m, v in ratios.items()}  # older JSON: ratios only
    gain = part.get("speedup_over_eager", {})
    rows = []
    for r in part["rows"]:
        key = f"{r['epoch']}|{r['mode']}"
        ratio = 1.0 if r["epoch"] == "dense" and r["status"] == "measured" else vs_dense.get(key)
        rows.append([EPOCH_LABELS.get(r["epoch"], r["epoch"]), MODE_LABELS.get(r["mode"], r["mode"]),
                     _cell(r, common, lambda r: f"{r['images_per_s']:,.0f}"),
                     _cell(r, common, lambda r: f"{r['epoch_s']:.3f} s"),
                     "" if ratio is None else f"{ratio:.2f}x",
                     f"{gain[key]:.2f}x" if key in gain else "",
                     _cell(r, common, lambda r: f"{r['warmup_epoch_s']:.1f} s")])
    lines += [markdown_table(["epoch", "mode", "images/s", "s per epoch", "vs dense (same mode)",
                              "speed-up over eager", "warm-up epoch (incl. compile, capture)"], rows), ""]
    goal = part.get("goal")
    # older JSON was judged against issue 9's 1.5x; its detail names the goal it was judged by
    target = f"mining epoch <= {GOAL_S:g} s and <= {GOAL_RATIO:g}x the dense epoch"
    if goal:
        verdict = {True: "met", False: "**not met**", None: "no verdict"}[goal.get("met")]
        lines.append(f"Goal ({target}): {verdict}; {goal['detail']}.")
    else:
        lines.append(f"Goal ({target}): not measured.")
    prof = part.get("profile") or {}
    if prof.get("status") == "measured":
        lines += ["", f"Profile of {prof['steps']} eager Gem-Miner steps (torch.profiler, top ops by "
                  f"{prof['sorted_by']}; {prof['wall_s']:.3f} s wall"
                  + (f", {prof['cuda_kernel_ms']:.1f} ms in CUDA kernels" if prof.get("cuda_kernel_ms") else "") + "):", "",
                  markdown_table(["op", "calls", "self CUDA ms", "self CPU ms"],
                                 [[f"`{t['op'][:60]}`", t["calls"], f"{t['self_device_ms']:.2f}", f"{t['self_cpu_ms']:.2f}"]
                                  for t in prof["top"][:10]])]
    else:
        lines += ["", f"Profile (torch.profiler, one mining epoch's top ops): not measured ({prof.get('reason')})."]
    return lines


def _render_tickets(part: dict) -> list[str]:
    st = part["setup"]
    lines = [f"### 2. Tickets at the paper's budget: {st['model']} / {st['data']}, {st['density']:.2%} density",
             "", f"Gem-Miner {st['epochs']} mining + {st['finetune_epochs']} fine-tuning epochs; random and SynFlow with "
             f"the same fine-tuning; IMP on its reference recipe (gemdeploy.mine.recipes) with as many epochs per round "
             f"as the time left afforded, its ticket trained {st['finetune_epochs']} epochs from the rewind point; "
             f"{st['seeds']} seed(s); batch 128; eager. Command: `{part['commands'][0]}`; each row is a `gemdeploy mine` "
             "run in that process (its command in the last column). Time to ticket is the wall time finding the mask "
             "(validation and checkpoints included), IMP's every round up to the ticket.", ""]
    lines += _part_status(part)
    common = _common_reason(part["rows"]) if part["status"] == "not measured" else None
    rows = []
    for r in part["rows"]:
        m = r["status"] == "measured"
        rows.append([r["method"], r["seed"], _cell(r, common, lambda r: f"{r['test_acc']:.2%}"),
                     f"{r['density']:.3%}" if m else "",
                     _cell(r, common, lambda r: _fmt_s(r["time_to_ticket_s"])),
                     _cell(r, common, lambda r: f"{r['ticket_epochs']:.0f}"
                           + (f" ({r['rounds']} rounds x {r['epochs']})" if r.get("rounds") else "")),
                     _cell(r, common, lambda r: f"{r['finetune_epochs']} in {_fmt_s(r['finetune_time_s'])}"),
                     _cell(r, common, lambda r: _fmt_s(r["total_time_s"])),
                     f"`{r['command']}`" if r.get("command") else ""])
    lines.append(markdown_table(["method", "seed", "test acc", "density", "time to ticket", "ticket epochs",
                                 "ticket training (epochs, time)", "total", "command"], rows))
    cut = [r for r in part["rows"] if r.get("cut_off")]
    for r in cut:
        c = r["cut_off"]
        lines += ["", f"{r['method']} was cut off by the budget in phase {c.get('phase')} at epoch {c.get('epoch')} "
                  f"(validation accuracy then {c.get('val_acc')})."]
    return lines


def _render_inference(part: dict) -> list[str]:
    st = part["setup"]
    batches = st["batches"]
    lines = [f"### 3. Inference latency: PyTorch, batch {', '.join(map(str, batches))}, "
             f"{st['image']}x{st['image']} inputs", "",
             f"{st['precision']}; {st.get('timing', 'CUDA events')}; median of {st['iters']} calls after {st['warmup']} "
             f"warm-ups. Modes: eager; CUDA graph (the eager model captured once, replayed); compiled "
             f"({st.get('compiled', 'torch.compile, reduce-overhead')}). Tickets: dense = the architecture; channel 75% "
             "and 2:4 = 1-epoch Gem-Miner tickets on random images, compacted (structure only); 2:4 semi-structured = "
             f"the 2:4 ticket with every qualifying layer on a semi-structured weight ({st.get('semi_structured', 'torch.sparse.to_sparse_semi_structured')}"
             "; convolutions as one GEMM over channels-last patches). Speed-up = dense latency / ticket latency, "
             "same model, mode and batch. Command: `" + part["commands"][0] + "`; the tickets, each mined on "
             f"{st['ticket_images']} random images (in the same process, not synthetic's 50,000): "
             + "; ".join(f"`{c}`" for c in part["commands"][1:]) + ".", ""]
    lines += _part_status(part)
    common = _common_reason(part["rows"]) if part["status"] == "not measured" else None
    for model in st["models"]:
        rows = []
        for ticket in INFER_TICKETS:
            info = part["tickets"].get(f"{model}|{ticket}", {})
            size = (f"{info['params'] / 1e6:.2f}M / {info['macs'] / 1e6:.1f}M" if "params" in info else "")
            if ticket == "2:4 semi-structured" and "swapped" in info:
                size = f"{len(info['swapped'])} layers swapped, {len(info['kept'])} kept"
            for mode in INFER_MODES:
                rs = {r["batch"]: r for r in part["rows"]
                      if (r["model"], r["ticket"], r["mode"]) == (model, ticket, mode)}
                rows.append([ticket, mode, size] + [_cell(rs[b], common, lambda r: f"{r['median_ms']:.3f}") for b in batches]
                            + [" / ".join(f"{rs[b]['speedup_vs_dense']:.2f}x" if rs[b].get("speedup_vs_dense") else "-"
                                          for b in batches)])
        lines += [f"**{model}**", "", markdown_table(["ticket", "mode", "params / MACs"]
                                                     + [f"b={b} ms" for b in batches]
                                                     + ["speed-up vs dense (" + " / ".join(f"b={b}" for b in batches) + ")"],
                                                     rows), ""]
        semi = part["tickets"].get(f"{model}|2:4 semi-structured", {})
        if "max_abs_logit_diff" in semi:
            lines.append(f"{model} semi-structured check: max |logit difference| to the 2:4 ticket "
                         f"{semi['max_abs_logit_diff']:.3g} (logit scale {semi['logit_scale']:.3g}); swapped: "
                         + (", ".join(l["layer"] for l in semi["swapped"]) or "none") + ".")
            lines.append("")
    return lines


# ---------------------------------------------------------------------------------------------------- main
def _watchdog(res: Results, clock: Clock) -> threading.Timer:
    def fire() -> None:
        log("watchdog: the run overran its budget; writing what it has and exiting")
        res.data["meta"]["watchdog"] = f"stopped {WATCHDOG_GRACE_S:.0f} s past the budget"
        for _ in range(3):  # the main thread may be changing the results right now: try again
            try:
                res.save()
                break
            except RuntimeError:
                time.sleep(0.2)
        os._exit(3)

    timer = threading.Timer(max(1.0, clock.end() + WATCHDOG_GRACE_S - _now()), fire)
    timer.daemon = True
    timer.start()
    return timer


def run_benchmark(s: Settings, out: Path | None, markdown: Path | None, parts: list[str], work: Path | None,
                  command: str) -> dict:
    started_unix = time.time()
    cuda_ok = torch.cuda.is_available()
    if s.device == "cuda" and not cuda_ok:
        data = {"schema": 1, "meta": {**device_meta(replace(s, device="cpu")), "device": "none (no CUDA GPU visible)",
                                      "command": command, "started_unix": started_unix, "finished": True},
                "parts": plan(s, "no CUDA GPU visible to PyTorch on this machine")}
        res = Results(out, markdown, data)
        for p in data["parts"].values():
            _finish_part(p, p["reason"])
        res.save()
        log("no CUDA GPU visible: every figure written as not measured")
        return data
    data = {"schema": 1, "meta": {**device_meta(s), "command": command, "started_unix": started_unix,
                                  "finished": False}, "parts": plan(s)}
    res = Results(out, markdown, data)
    for name in PARTS:
        if name not in parts:
            not_measured(data["parts"][name], "not asked for (--parts)")
            _finish_part(data["parts"][name], "not asked for (--parts)")
    res.save()
    clock = Clock(s.budget_s)
    dog = _watchdog(res, clock)
    work = Path(tempfile.mkdtemp(prefix="gemdeploy-gpu-")) if work is None else work
    work.mkdir(parents=True, exist_ok=True)
    todo = [p for p in PARTS if p in parts]
    for i, name in enumerate(todo):
        share = clock.begin_part(name, todo[i:])
        part = data["parts"][name]
        part.update(status="running", reason=PENDING, budget_s=round(share, 1))
        log(f"part {name}: {share:.0f} s")
        t0 = _now()
        try:
            if name == "mining":
                part_mining(s, res, clock)
            elif name == "tickets":
                part_tickets(s, res, clock, work)
            else:
                part_inference(s, res, clock, work)
        except Exception as exc:  # the part's setup failed (data, imports): the others still run
            part["error"] = _short(exc)
            part["traceback"] = traceback.format_exc()[-3000:]
            log(f"part {name} failed: {_short(exc)}")
            _finish_part(part, f"error: {_short(exc)}")
        part["elapsed_s"] = round(_now() - t0, 1)
        _release()
        res.save()
    dog.cancel()
    data["meta"]["finished"] = True
    data["meta"]["work"] = str(work)
    res.save()
    return data


def main(
    out: Path | None = typer.Option(None, help="The JSON of every figure (default: benchmarks/results/gpu.json; "
                                               "--smoke: benchmarks/results/quick/gpu-smoke.json, git-ignored)."),
    markdown: Path | None = typer.Option(None, help="Also write the rendered GPU section to this file."),
    smoke: bool = typer.Option(False, "--smoke", help="Every part at toy size on the CPU (under a minute)."),
    budget: float = typer.Option(0.0, help="Seconds for all parts (0: 450 on the GPU, 480 for --smoke)."),
    parts: str = typer.Option(",".join(PARTS), help="Parts to run, comma-separated: mining, inference, tickets."),
    work: Path | None = typer.Option(None, help="Where the run directories go (default: a new temporary folder)."),
    seeds: int = typer.Option(1, help="Seeds of the tickets part."),
    profile_steps: int = typer.Option(-1, help="Mining steps to profile with torch.profiler (0: none; default 40, "
                                               "2 for --smoke)."),
    from_json: Path | None = typer.Option(None, "--from-json", help="Run nothing: render this JSON into BENCHMARKS.md."),
    not_measured_reason: str | None = typer.Option(None, "--not-measured", help="Run nothing: write every figure as "
                                                   "'not measured (REASON)' (JSON and BENCHMARKS.md)."),
    write_benchmarks: bool | None = typer.Option(None, "--write-benchmarks/--no-write-benchmarks", help="Write the "
                                                 "section into BENCHMARKS.md (default: with --from-json and "
                                                 "--not-measured only)."),
) -> None:
    command = "python3 -m benchmarks.gpu " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if from_json is not None:
        if not from_json.is_file():
            raise typer.BadParameter(f"{from_json} does not exist", param_hint="--from-json")
        data = json.loads(from_json.read_text())
        body = render(data)
        if markdown is not None:
            _atomic_write(markdown, body + "\n")
        if write_benchmarks is not False:
            write_section(SECTION, body)
            log(f"wrote the '{SECTION}' section of BENCHMARKS.md from {from_json}")
        return
    out = out or ROOT / "benchmarks" / "results" / ("quick/gpu-smoke.json" if smoke else "gpu.json")
    s = Settings(**SMOKE) if smoke else Settings()
    s = replace(s, seeds=seeds, budget_s=budget or s.budget_s,
                profile_steps=s.profile_steps if profile_steps < 0 else profile_steps)
    if not_measured_reason is not None:
        data = {"schema": 1, "meta": {"not_run": not_measured_reason, "device": None, "torch": None, "cuda": None,
                                      "python": None, "machine": None, "smoke": False, "settings": asdict(s),
                                      "command": None, "started_unix": time.time(), "finished": True},
                "parts": plan(s, not_measured_reason)}
        for p in data["parts"].values():
            _finish_part(p, not_measured_reason)
        Results(out, markdown, data).save()
        if write_benchmarks is not False:
            write_section(SECTION, render(data))
        return
    chosen = [p.strip() for p in parts.split(",") if p.strip()]
    unknown = set(chosen) - set(PARTS)
    if unknown:
        raise typer.BadParameter(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    if s.threads:
        torch.set_num_threads(s.threads)
    data = run_benchmark(s, out, markdown, chosen, work, command)
    if write_benchmarks:
        write_section(SECTION, render(data))
    summary = {name: data["parts"][name]["status"] for name in REPORT_ORDER}
    log(f"done in {data['meta']['elapsed_s']} s: {summary}; JSON: {out}")


if __name__ == "__main__":
    typer.run(main)
