"""GPU inference as deployed (issue 26), one prepared call: ResNet-50 at 224x224 and ResNet-20 at 32x32; dense,
channel-50% and 2:4 tickets; batch 1 / 64 / 256; fp32 eager vs fp16 CUDA graphs vs the 2:4 backend (fp16 CUDA
graphs with semi-structured weights on the layers measured faster), with every layer's 2:4 verdict.

    python -m benchmarks.gpu_inference --out OUT/gpu_inference.json --markdown OUT/BENCHMARKS-gpu_inference.md
    python -m benchmarks.gpu_inference --from-json benchmarks/results/gpu_inference.json   # back here: BENCHMARKS.md
    python -m benchmarks.gpu_inference --smoke                                           # CPU, seconds, toy sizes

Only latency matters here, so the tickets are made in seconds, not mined: the channel ticket removes a random 50%
of every coupled channel group (kept counts multiples of 8, as `mine` rounds them) through gemdeploy's own
Torch-Pruning groups; the 2:4 ticket keeps 2 random weights of every 4 input channels in the layers `mine --pattern
2:4` covers. Their speed is a mined ticket's speed (same shapes, same zeros pattern); their accuracy is not
measured. The runners, timing and statistics are `gemdeploy bench`'s (gemdeploy.bench).

On the GPU the run keeps to --budget seconds (default 420) and writes the JSON after every figure; a row it has no
time for says so. --smoke runs everything on the CPU at toy sizes (the CUDA rows say they need CUDA, the 2:4
backend runs with a dense stand-in for the sparse weight), writes no BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from benchmarks.report import machine, markdown_table, write_section

SECTION = "gpu-inference"
TICKETS = ("dense", "channel 50%", "2:4")
MODES = ("fp32 eager", "fp16 cuda-graph", "2:4 sparse fp16 cuda-graph")
TICKET_NOTE = ("tickets made for latency only, not mined: channel 50% = a random half of every coupled channel "
               "group removed (multiples of 8 kept); 2:4 = 2 random weights of every 4 input channels in the layers "
               "`mine --pattern 2:4` covers; their accuracy is not measured")


@dataclass
class Settings:
    models: dict = field(default_factory=lambda: {"resnet50": (3, 224, 224, 1000), "resnet20": (3, 32, 32, 10)})
    batches: tuple = (1, 64, 256)
    iters: int = 50
    warmup: int = 10
    budget_s: float = 420.0
    smoke: bool = False

    @classmethod
    def for_smoke(cls) -> "Settings":
        return cls(models={"resnet50": (3, 32, 32, 10), "resnet20": (3, 16, 16, 10)}, batches=(1, 2), iters=2,
                   warmup=1, budget_s=120.0, smoke=True)


# ------------------------------------------------------------------------------------------------ tickets
def channel_ticket(model: nn.Module, shape: tuple[int, int, int], fraction: float = 0.5, round_to: int = 8,
                   seed: int = 0) -> nn.Module:
    """``model`` with a random ``fraction`` of every coupled channel group removed (kept counts multiples of
    ``round_to``), through the groups and removal step `gemdeploy mine`'s compaction uses."""
    from gemdeploy.sparsity.channels import build_graph, channel_groups, prune_step

    gen = torch.Generator().manual_seed(seed)
    graph = build_graph(model, shape)
    for cg in channel_groups(model, graph):
        keep = max(round_to, round(cg.size * (1 - fraction) / round_to) * round_to)
        if keep < cg.size:
            drop = torch.randperm(cg.size, generator=gen)[: cg.size - keep]
            prune_step(graph, model, cg.root, sorted(drop.tolist()))
    return model


def nm_ticket(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` with 2 random weights of every 4 input channels kept in the layers `mine --pattern 2:4` covers."""
    from gemdeploy.sparsity.nm import nm_eligible_layers, nm_mask_from_scores

    gen = torch.Generator().manual_seed(seed)
    covered = nm_eligible_layers(model, 4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in covered:
                p.mul_(nm_mask_from_scores(torch.rand(p.shape, generator=gen), 2, 4))
    return model


def make_ticket(name: str, ticket: str, shape: tuple[int, int, int], classes: int) -> nn.Module:
    from gemdeploy.models import build_model

    torch.manual_seed(0)
    model = build_model(name, shape, classes).eval()
    if ticket == "channel 50%":
        return channel_ticket(model, shape)
    return nm_ticket(model) if ticket == "2:4" else model


# ------------------------------------------------------------------------------------------------ measuring
class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def runner_for(mode: str, model: nn.Module, device: str):
    from gemdeploy.bench.backends.cuda_graph import CudaGraphRunner, SemiStructuredRunner
    from gemdeploy.bench.backends.pytorch import TorchRunner

    if mode == "fp32 eager":
        return TorchRunner(model, device, compile=False)
    if mode == "fp16 cuda-graph":
        return CudaGraphRunner(model, torch.float16)
    if device == "cuda":
        return SemiStructuredRunner(model)
    # The CPU has no 2:4 kernels: every step but the sparse GEMM, on a dense stand-in, in fp32.
    return SemiStructuredRunner(model, torch.float32, "cpu", sparsify=lambda w: w.clone(), layer_iters=2)


def plan(s: Settings) -> list[dict]:
    return [{"model": m, "ticket": t, "mode": mode, "batch": b, "status": "pending"}
            for m in s.models for t in TICKETS for mode in MODES if mode != MODES[2] or t == "2:4"
            for b in s.batches]


def measure_all(s: Settings, result: dict, save) -> None:
    from gemdeploy.bench.measure import latency_stats, timed
    from gemdeploy.compact.compaction import model_totals

    device = "cuda" if torch.cuda.is_available() and not s.smoke else "cpu"
    budget = Budget(s.budget_s)
    rows = result["rows"]
    for name, (c, h, w, classes) in s.models.items():
        shape = (c, h, w)
        for ticket in TICKETS:
            mine = [r for r in rows if r["model"] == name and r["ticket"] == ticket]
            if budget.left() <= 0:
                break
            model = make_ticket(name, ticket, shape, classes)
            result["tickets"][f"{name} {ticket}"] = model_totals(model, shape)
            for mode in dict.fromkeys(r["mode"] for r in mine):
                if mode != "fp32 eager" and device != "cuda" and mode != MODES[2]:
                    for r in mine:
                        if r["mode"] == mode:
                            r.update(status="not measured", reason="needs CUDA")
                    continue
                runner = runner_for(mode, copy.deepcopy(model), device)
                for r in (r for r in mine if r["mode"] == mode):
                    if budget.left() <= 0:
                        r.update(status="not measured", reason="budget: the run's time ran out first")
                        continue
                    try:
                        images = torch.randn(r["batch"], *shape)
                        # the smoke run only proves the path: no re-measuring of noisy figures on a busy CPU
                        lat = (latency_stats(runner.time(images, s.iters, s.warmup)) if s.smoke
                               else timed(runner, images, s.iters, s.warmup))
                        r.update(status="measured", latency_ms=lat,
                                 throughput_ips=r["batch"] / (lat["median"] / 1e3), **runner.notes(r["batch"]))
                    except Exception as exc:  # noqa: BLE001 - one failing row must not lose the others
                        r.update(status="not measured", reason=f"error: {type(exc).__name__}: {str(exc)[:200]}")
                    print(_progress(r), flush=True)
                    save()
                del runner
                if device == "cuda":
                    torch.cuda.empty_cache()
    for r in rows:
        if r["status"] == "pending":
            r.update(status="not measured", reason="budget: the run's time ran out first")
    result["meta"]["seconds"] = round(s.budget_s - budget.left(), 1)


def _progress(r: dict) -> str:
    if r["status"] != "measured":
        return f"{r['model']} {r['ticket']} {r['mode']} b={r['batch']}: not measured ({r['reason']})"
    line = (f"{r['model']} {r['ticket']} {r['mode']} b={r['batch']}: {r['latency_ms']['median']:.3f} ms, "
            f"{r['throughput_ips']:,.0f} img/s")
    return line + (f" | {r['sparse24']['summary']}" if r.get("sparse24") else "")


# ------------------------------------------------------------------------------------------------ verdicts
def _row(rows, model, ticket, mode, batch) -> dict | None:
    return next((r for r in rows if (r["model"], r["ticket"], r["mode"], r["batch"]) == (model, ticket, mode, batch)
                 and r["status"] == "measured"), None)


def speedup(rows, model, ticket, mode, batch, base_ticket="dense", base_mode=None) -> float | None:
    a, b = _row(rows, model, base_ticket, base_mode or mode, batch), _row(rows, model, ticket, mode, batch)
    return a["latency_ms"]["median"] / b["latency_ms"]["median"] if a and b else None


def goals(rows: list[dict], s: Settings) -> list[str]:
    """The issue's goals, as measured (a figure that misses its goal is reported as it is)."""
    big = max(s.batches)
    mid = 64 if 64 in s.batches else big
    out = []
    ch = speedup(rows, "resnet50", "channel 50%", MODES[1], mid)
    out.append(f"channel-50% ResNet-50 vs dense, fp16 CUDA graphs, batch {mid}: "
               + ("not measured" if ch is None else f"{ch:.2f}x (goal >= 2x: {'met' if ch >= 2 else 'not met'})"))
    r24 = [r for r in rows if r["model"] == "resnet50" and r["mode"] == MODES[2] and r["status"] == "measured"]
    for r in r24:
        out.append(f"ResNet-50 2:4 per-layer verdict, {r['sparse24']['summary']}")
    at_big = _row(rows, "resnet50", "2:4", MODES[2], big)
    if at_big is None:
        out.append(f"ResNet-50 2:4 backend at batch {big}: not measured")
    else:
        n = sum(v["sparse"] for v in at_big["sparse24"]["layers"])
        e2e = speedup(rows, "resnet50", "2:4", MODES[2], big, base_mode=MODES[1])
        vs = "not measured (no dense fp16 CUDA-graph row)" if e2e is None else f"{e2e:.2f}x"
        if n == 0:
            out.append(f"ResNet-50 2:4 at batch {big}: no layer measured faster sparse, so nothing to gain end to end "
                       f"(the per-layer verdicts say why); end to end {vs} dense fp16 CUDA graphs")
        else:
            met = "" if e2e is None else f" (goal >= 1.1x: {'met' if e2e >= 1.1 else 'not met'})"
            out.append(f"ResNet-50 2:4 at batch {big}: {n} layers sparse, end to end {vs} dense fp16 CUDA graphs{met}")
    return out


# ------------------------------------------------------------------------------------------------ output
def table(result: dict, model: str) -> str:
    rows, batches = result["rows"], result["settings"]["batches"]
    head = ["ticket", "mode", "params / MACs"] + [f"b={b} ms (img/s)" for b in batches] + \
        ["vs dense, same mode (" + " / ".join(f"b={b}" for b in batches) + ")", "vs dense fp32 eager"]
    body = []
    for ticket in TICKETS:
        totals = result["tickets"].get(f"{model} {ticket}")
        size = f"{totals['params'] / 1e6:.2f}M / {totals['macs'] / 1e9:.2f}G" if totals else "-"
        for mode in MODES:
            mine = [r for r in rows if (r["model"], r["ticket"], r["mode"]) == (model, ticket, mode)]
            if not mine:
                continue
            cells = [(f"{r['latency_ms']['median']:.3f} ({r['throughput_ips']:,.0f})" if r["status"] == "measured"
                      else f"not measured ({r['reason']})") for r in mine]
            base_mode = MODES[1] if mode == MODES[2] else mode
            same = [speedup(rows, model, ticket, mode, b, base_mode=base_mode) for b in batches]
            fp32 = [speedup(rows, model, ticket, mode, b, base_mode=MODES[0]) for b in batches]
            body.append([ticket, mode, size, *cells, " / ".join("-" if x is None else f"{x:.2f}x" for x in same),
                         " / ".join("-" if x is None else f"{x:.2f}x" for x in fp32)])
    return markdown_table(head, body)


def render(result: dict) -> str:
    meta, s = result["meta"], result["settings"]
    from gemdeploy.machine import describe_gpu

    lines = ["## GPU inference as deployed: fp16 CUDA graphs, throughput, 2:4 where it pays (issue 26)", "",
             f"Command: `{meta['command']}`  ", f"Device: **{describe_gpu(meta['gpu']) if meta['gpu'] else meta['device']}**  ",
             f"Machine: {meta['machine']}; torch {meta['torch']}, CUDA {meta['cuda']}  ",
             f"Timing: `gemdeploy bench`'s runners and statistics: median of {s['iters']} calls after {s['warmup']} "
             "warm-ups (CUDA events; a noisy one re-measured), random images; fp32 eager = the `pytorch-cuda` "
             "backend, fp16 cuda-graph = `pytorch-cuda-fp16` (captured once per batch size), 2:4 = `pytorch-cuda-2:4` "
             "(each layer timed dense and on its semi-structured weight at that batch, swapped only where >= 5% "
             f"faster). {TICKET_NOTE}. Took {meta.get('seconds')} s.", "", "### Goals (as measured)", ""]
    lines += [f"- {g}" for g in result["goals"]]
    for model in s["models"]:
        c, h, w, classes = s["models"][model]
        lines += ["", f"### {model}, {h}x{w}, {classes} classes", "", table(result, model)]
        for r in result["rows"]:
            if r["model"] == model and r.get("sparse24") and r["batch"] == max(s["batches"]):
                lines += ["", f"2:4 verdict per layer at batch {r['batch']} ({r['sparse24']['kernels']}; max |logit "
                          f"diff| {r['sparse24']['max_abs_logit_diff']:.3g} of {r['sparse24']['logit_scale']:.3g}):", "",
                          markdown_table(["layer", "shape", "GEMM", "dense ms", "sparse ms", "verdict"], [
                              [v["layer"], v["shape"], f"{v['gemm'][0]}x{v['gemm'][1]} x {v['columns']}",
                               "-" if v["dense_ms"] is None else f"{v['dense_ms']:.4f}",
                               "-" if v["sparse_ms"] is None else f"{v['sparse_ms']:.4f}",
                               ("**sparse**: " if v["sparse"] else "dense: ") + v["why"]]
                              for v in r["sparse24"]["layers"]])]
    return "\n".join(lines) + "\n"


def run(s: Settings, out: Path | None, markdown: Path | None, command: str) -> dict:
    from gemdeploy.machine import gpu_info
    from gemdeploy.run.rundir import atomic_write_bytes

    gpu = gpu_info() if not s.smoke else None
    result = {"settings": asdict(s), "tickets": {}, "rows": plan(s), "goals": [],
              "meta": {"command": command, "smoke": s.smoke, "machine": machine(), "gpu": gpu,
                       "device": gpu["name"] if gpu else f"CPU ({platform.processor() or platform.machine()})"
                       + (": smoke run, toy sizes, no figure means anything" if s.smoke else ""),
                       "torch": torch.__version__, "cuda": torch.version.cuda, "ticket_note": TICKET_NOTE}}

    def save():
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(out, json.dumps(result, indent=1).encode())

    print(f"device: {result['meta']['device']}; {TICKET_NOTE}", flush=True)
    measure_all(s, result, save)
    result["goals"] = goals(result["rows"], s)
    save()
    text = render(result)
    if markdown:
        atomic_write_bytes(markdown, text.encode())
    if gpu and not s.smoke:
        write_section(SECTION, text)
    print(text)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="toy sizes on the CPU in seconds; BENCHMARKS.md untouched")
    p.add_argument("--out", type=Path, help="the JSON of every row (written after each figure)")
    p.add_argument("--markdown", type=Path, help="also write the rendered section to this file")
    p.add_argument("--budget", type=float, default=None, help="seconds for all measurements (default 420)")
    p.add_argument("--from-json", type=Path, help="render BENCHMARKS.md's section from a GPU run's JSON")
    args = p.parse_args(argv)
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        if result["meta"]["smoke"] or not result["meta"]["gpu"]:
            print(f"{args.from_json} is not from a GPU run: BENCHMARKS.md left as it is", file=sys.stderr)
            return 2
        write_section(SECTION, render(result))
        return 0
    s = Settings.for_smoke() if args.smoke else Settings()
    if args.budget is not None:
        s.budget_s = args.budget
    if not s.smoke and not torch.cuda.is_available():
        print("no CUDA GPU visible: run with --smoke on the CPU, or on the GPU machine", file=sys.stderr)
        return 2
    run(s, args.out, args.markdown, "python -m benchmarks.gpu_inference " + " ".join(argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
