"""Training-core throughput: images/s of a Gem-Miner mining epoch and of a fine-tuning epoch,
plus the README's main job end to end.

    .venv/bin/python -m benchmarks.throughput            # CPU figures + README job -> BENCHMARKS.md
    .venv/bin/python -m benchmarks.throughput --device cuda --cifar-images 50000   # the GPU target

On CUDA the CIFAR-shaped run uses 50,000 synthetic 32x32 images with bf16 autocast and channels_last,
the setting of the "50k-image mining epoch in at most 1 s on an H100" target.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import torch
import typer

from benchmarks.report import machine, markdown_table, write_section
from gemdeploy.data import load_data
from gemdeploy.data.sets import synthetic_bundle
from gemdeploy.train.masked import MaskedModel
from gemdeploy.models.init import initialize
from gemdeploy.sparsity.masks import Mask
from gemdeploy.mine.methods.gem_miner import ScoredNetwork
from gemdeploy.models import build_model
from gemdeploy.train.loop import Hardware, maybe_compile, sgd, train_epoch

README_JOB = ["mine", "--model", "lenet300", "--data", "mnist5k", "--sparsity", "0.986", "--epochs", "30",
              "--finetune-epochs", "30", "--quiet", "--json"]


def epoch_rates(model_name: str, data, hw: Hardware, epochs: int, batch_size: int = 128) -> dict[str, float]:
    """Median images/s over ``epochs`` timed epochs (after one warm-up) for mining and for fine-tuning."""
    torch.manual_seed(0)
    net = hw.prepare(initialize(build_model(model_name, data.input_shape, data.num_classes), "signed-constant"))
    scored = ScoredNetwork(net, torch.Generator().manual_seed(0)).train()
    opt = sgd(scored.score_parameters(), 0.1, 0.9, 0.0)
    forward = maybe_compile(scored, hw)
    mine = [train_epoch(forward, opt, data.train, hw, epoch=e, seed=0, batch_size=batch_size,
                        penalty=lambda: 1e-4 * scored.l2_penalty(), after_step=scored.project_).images_per_s
            for e in range(epochs + 1)][1:]

    model = hw.prepare(initialize(build_model(model_name, data.input_shape, data.num_classes), "signed-constant"))
    masked = MaskedModel(model, Mask({k: (torch.rand_like(m) < 0.014).float() for k, m in Mask.ones_like(model).items()}))
    opt = sgd(model.parameters(), 0.01, 0.9, 1e-4)
    forward = maybe_compile(model.train(), hw)
    tune = [train_epoch(forward, opt, data.train, hw, epoch=e, seed=0, batch_size=batch_size,
                        after_step=masked.enforce).images_per_s for e in range(epochs + 1)][1:]
    return {"mine": statistics.median(mine), "finetune": statistics.median(tune), "images": len(data.train)}


def readme_job() -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "gemdeploy.cli", *README_JOB, "--out", f"{tmp}/run"],
                              capture_output=True, text=True, check=True)
        wall = time.perf_counter() - start
    summary = json.loads(proc.stdout)
    return {"wall_s": wall, "test_acc": summary["test_acc"], "sparsity": summary["sparsity"]}


def main(device: str = "cpu", epochs: int = 3, cifar_images: int = 2048, compile: bool = False,
         write: bool = typer.Option(True, help="Write the figures into BENCHMARKS.md.")) -> None:
    hw = Hardware.resolve(device, compile)
    rows, results = [], {}
    mnist = load_data("mnist5k").to(hw.device, hw.channels_last)
    cifar = synthetic_bundle("synthetic", (3, 32, 32), 10, cifar_images).to(hw.device, hw.channels_last)
    for model_name, data, label in (("lenet300", mnist, "mnist5k (3,500 train images)"),
                                    ("resnet20", cifar, f"CIFAR-shaped synthetic, {cifar_images:,} images")):
        r = epoch_rates(model_name, data, hw, epochs)
        results[model_name] = r
        rows.append([model_name, label, f"{r['mine']:,.0f}", f"{r['finetune']:,.0f}",
                     f"{len(data.train) / r['mine']:.2f} s"])
        print(model_name, r)
    body = [f"## Training-core throughput\n\nCommand: `.venv/bin/python -m benchmarks.throughput --device {device}"
            f"{' --compile' if compile else ''}`  \nMachine: {machine()}  \nDevice: {hw.device}"
            f"{', bf16 autocast, channels_last' if hw.device.type == 'cuda' else ', fp32'}; batch 128; "
            f"median of {epochs} epochs after a warm-up.\n",
            markdown_table(["model", "data", "mining images/s", "fine-tuning images/s", "mining epoch"], rows)]
    if device == "cpu":
        job = readme_job()
        results["readme_job"] = job
        body.append(f"\nREADME main job (`gemdeploy {' '.join(README_JOB)}`): wall time **{job['wall_s']:.1f} s** "
                    f"including start-up, test accuracy **{job['test_acc']:.1%}** at {job['sparsity']:.2%} sparsity.")
        print(job)
    if write:
        write_section(f"throughput-{hw.device.type}", "\n".join(body))


if __name__ == "__main__":
    typer.run(main)
