"""The pace of a Gem-Miner epoch on the CPU: gemdeploy's flat score buffers (gemdeploy.train.flat) against the
one-tensor-per-layer code they replaced, side by side in one process, and whether both reach the same scores.

    .venv/bin/python -m benchmarks.pace                 # resnet20, 2,048 CIFAR-shaped images -> BENCHMARKS.md "pace-cpu"
    .venv/bin/python -m benchmarks.pace --smoke         # toy sizes, nothing written (tests/test_pace.py runs it)

The machine is shared and noisy, so the two are interleaved epoch by epoch (the order alternating every round) and
the medians are compared. The GPU figures (flat buffers, fused SGD, a CUDA-graph step, against a dense epoch) are
part 1 of benchmarks/gpu.py, which reuses `PerLayerScoredNetwork` below as its "before".
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
import typer
from torch import nn
from torch.func import functional_call

from benchmarks.report import ROOT, machine, markdown_table, write_section
from gemdeploy.mine.methods.gem_miner import PerLayerScores, ScoredNetwork, straight_through_mask
from gemdeploy.sparsity.masks import prunable_weights

SECTION = "pace-cpu"
KINDS = ("per-layer", "flat")
LAM = 1e-4


class PerLayerScoredNetwork(PerLayerScores):
    """Gem-Miner's scored network as gemdeploy had it before the flat buffers: one score Parameter and one flag per
    layer, so the forward mask, the L2 penalty and the projection take a few operations per layer. The reference
    the flat code must match bit for bit (same draws, same operations per element)."""

    def __init__(self, net: nn.Module, generator: torch.Generator):
        super().__init__()
        self.net = net
        for p in net.parameters():
            p.requires_grad_(False)
        weights = prunable_weights(net)
        self.names = list(weights)
        self.scores = nn.ParameterList(
            [nn.Parameter(torch.rand(weights[k].shape, generator=generator).to(weights[k].device)) for k in self.names])
        self.flags = [torch.ones_like(weights[k]) for k in self.names]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = prunable_weights(self.net)
        effective = {k: weights[k] * straight_through_mask(s) * f for k, s, f in zip(self.names, self.scores, self.flags)}
        return functional_call(self.net, effective, (x,))


def scored_network(kind: str, model: str, shape: tuple[int, int, int], hw, seed: int = 0) -> nn.Module:
    """A signed-constant ``model`` under Gem-Miner's scores, per layer (the code before) or flat (gemdeploy's)."""
    from gemdeploy.models import build_model
    from gemdeploy.models.init import initialize

    torch.manual_seed(seed)
    net = hw.prepare(initialize(build_model(model, shape, 10), "signed-constant"))
    cls = PerLayerScoredNetwork if kind == "per-layer" else ScoredNetwork
    return cls(net, torch.Generator().manual_seed(seed)).train()


def mining_epochs(kind: str, model: str, split, shape, hw, batch: int, optimizer=None):
    """A function epoch -> EpochStats running Gem-Miner's mining epoch (SGD lr 0.1, momentum 0.9, L2 penalty,
    projection after every step) through gemdeploy's loop; and the scored network it trains."""
    from gemdeploy.train.loop import make_step, sgd, train_epoch

    scored = scored_network(kind, model, shape, hw)
    opt = (optimizer or sgd)(scored.score_parameters(), 0.1, 0.9, 0.0)
    step = make_step(scored, opt, hw, lambda: LAM * scored.l2_penalty(), scored.project_)
    return (lambda epoch: train_epoch(scored, opt, split, hw, epoch=epoch, seed=0, batch_size=batch, step=step)), scored


def measure(model: str, images: int, image: int, batch: int, rounds: int, threads: int) -> dict:
    from gemdeploy.data.sets import synthetic_bundle
    from gemdeploy.train.loop import Hardware

    if threads:
        torch.set_num_threads(threads)
    hw = Hardware.resolve("cpu")
    shape = (3, image, image)
    split = synthetic_bundle("synthetic", shape, 10, images).to(hw.device, hw.channels_last).train
    runners = {k: mining_epochs(k, model, split, shape, hw, batch) for k in KINDS}
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    cpu: dict[str, list[float]] = {k: [] for k in KINDS}  # process CPU time: what other work on the machine inflates least
    for kind in KINDS:  # warm-up epoch 0 of each (allocator, oneDNN primitives)
        runners[kind][0](0)
    for r in range(rounds):
        for kind in (KINDS if r % 2 == 0 else KINDS[::-1]):
            c0 = time.process_time()
            times[kind].append(runners[kind][0](r + 1).seconds)
            cpu[kind].append(time.process_time() - c0)
    per_layer, flat = runners["per-layer"][1], runners["flat"][1]
    identical = all(torch.equal(a, b) for a, b in zip(per_layer.scores, flat.scores))
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    paired = [f / p for f, p in zip(times["flat"], times["per-layer"])]  # same round: the same load, roughly
    return {"model": model, "images": len(split), "image": image, "batch": batch, "rounds": rounds,
            "threads": torch.get_num_threads(), "epoch_s": {k: [round(t, 4) for t in v] for k, v in times.items()},
            "cpu_s": {k: [round(t, 4) for t in v] for k, v in cpu.items()}, "median_s": med, "median_cpu_s": med_cpu,
            "flat_over_per_layer": med["flat"] / med["per-layer"],
            "flat_over_per_layer_cpu": med_cpu["flat"] / med_cpu["per-layer"],
            "flat_over_per_layer_paired": statistics.median(paired), "identical_scores": identical,
            "machine": machine()}


def render(result: dict, command: str) -> str:
    med, med_cpu = result["median_s"], result["median_cpu_s"]
    rows = [[kind, f"{med[kind]:.3f} s", f"{med_cpu[kind]:.3f} s", f"{result['images'] / med[kind]:,.0f}",
             ", ".join(f"{t:.2f}" for t in result["epoch_s"][kind])] for kind in KINDS]
    return "\n".join([
        "## Pace of a Gem-Miner epoch on the CPU: flat score buffers vs one tensor per layer", "",
        f"Command: `{command}`  ",
        f"Machine: {result['machine']}  ",
        f"{result['model']} on {result['images']:,} CIFAR-shaped synthetic {result['image']}x{result['image']} images, "
        f"batch {result['batch']}, fp32, {result['threads']} torch thread(s), Gem-Miner's mining step (SGD lr 0.1 "
        f"momentum 0.9, L2 penalty, projection) through gemdeploy.train.loop; {result['rounds']} epochs of each after a "
        "warm-up epoch, interleaved (order alternating every round) on a machine shared with other work: medians "
        "compared, of wall time and of the process's CPU time (which other work on the machine inflates least).", "",
        markdown_table(["scores", "median epoch (wall)", "median epoch (CPU)", "images/s", "every epoch, wall (s)"],
                       rows), "",
        f"Flat / per-layer epoch time: **{result['flat_over_per_layer_cpu']:.3f}x** in CPU time, "
        f"{result['flat_over_per_layer']:.3f}x in wall time (median of the rounds' own ratios: "
        f"{result['flat_over_per_layer_paired']:.3f}x); below 1 the flat buffers are faster. Same scores after the "
        f"same epochs, bit for bit: **{'yes' if result['identical_scores'] else 'NO'}**. "
        "On the CPU the step is bound by the convolutions, not by the per-layer operations; the flat buffers are "
        "for the GPU, where launches bound the step (BENCHMARKS.md, GPU, part 1).",
    ])


def main(model: str = typer.Option("resnet20", help="Architecture."),
         images: int = typer.Option(2048, help="Synthetic training images."),
         image: int = typer.Option(32, help="Image side."),
         batch: int = typer.Option(128, help="Batch size."),
         rounds: int = typer.Option(5, help="Timed epochs of each kind, interleaved."),
         threads: int = typer.Option(0, help="torch CPU threads (0: torch's default)."),
         smoke: bool = typer.Option(False, "--smoke", help="Toy sizes; writes nothing into BENCHMARKS.md."),
         out: Path | None = typer.Option(None, help="Also write the result as JSON here."),
         from_json: Path | None = typer.Option(None, "--from-json", help="Measure nothing: render this JSON (an "
                                               "earlier --out) into BENCHMARKS.md."),
         write: bool = typer.Option(True, help="Write the section into BENCHMARKS.md (never with --smoke).")) -> None:
    command = "nice .venv/bin/python -m benchmarks.pace" + "".join(
        f" --{name} {value}" for name, value, default in (("model", model, "resnet20"), ("images", images, 2048),
                                                          ("rounds", rounds, 5), ("threads", threads, 0))
        if value != default)
    if from_json is not None:
        result = json.loads(from_json.read_text())
        write_section(SECTION, render(result, result.get("command", command)))
        return
    if smoke:
        images, image, batch, rounds = 64, 8, 32, 2
    result = {**measure(model, images, image, batch, rounds, threads), "command": command}
    print(json.dumps(result, indent=1))
    if out is not None:
        out.write_text(json.dumps(result, indent=1))
    if write and not smoke:
        write_section(SECTION, render(result, command))
        print(f"wrote the '{SECTION}' section of {ROOT / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    typer.run(main)
