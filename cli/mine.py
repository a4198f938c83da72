"""`gemdeploy mine`: find a ticket, fine-tune it, compact it, into a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from gemdeploy.cli.errors import friendly_errors
from gemdeploy.config import MineConfig
from gemdeploy.errors import GemdeployError

DEFAULTS = MineConfig()


@friendly_errors
def mine(
    out: Path = typer.Option(..., "--out", "-o", help="Run directory to create (refused if it exists)."),
    model: str = typer.Option(DEFAULTS.model, help="Architecture: lenet300, conv4, resnet20/32/56, vgg16, mobilenetv2, resnet18, resnet50, mobilenet_v2."),
    data: str = typer.Option(DEFAULTS.data, help="Data set: mnist5k, digits, cifar10, cifar100, imagefolder, synthetic, synthetic-imagenet."),
    sparsity: float = typer.Option(DEFAULTS.sparsity, help="Fraction of prunable weights removed, in [0, 1): 0.986 keeps 1.4%."),
    method: str = typer.Option(DEFAULTS.method, help="gem-miner, dense, ... (see `gemdeploy methods`)."),
    pattern: str = typer.Option(DEFAULTS.pattern, help="Sparsity pattern: unstructured, 2:4 (N:M from --nm, along input "
                                                       "channels) or channel (--sparsity = fraction of channels removed)."),
    channel_sparsity: Optional[float] = typer.Option(None, help="Gem-Miner: first remove this fraction of the channels "
                                                                "(a channel ticket), then mine --pattern (unstructured or 2:4) "
                                                                "to --sparsity inside the kept channels."),
    nm: str = typer.Option(DEFAULTS.nm, help="N:M for --pattern 2:4: keep at most N of every M consecutive input channels."),
    epochs: int = typer.Option(DEFAULTS.epochs, help="Mining epochs (per round for IMP)."),
    finetune_epochs: int = typer.Option(DEFAULTS.finetune_epochs, help="Fine-tuning epochs with the mask fixed."),
    batch_size: int = typer.Option(DEFAULTS.batch_size, help="Global batch size."),
    lr: float = typer.Option(DEFAULTS.lr, help="Mining learning rate (cosine schedule)."),
    finetune_lr: float = typer.Option(DEFAULTS.finetune_lr, help="Fine-tuning learning rate (x0.1 at 53% and 80%)."),
    lam: Optional[float] = typer.Option(None, help="Gem-Miner L2 score penalty; default: the paper's value for the density."),
    freeze_period: Optional[int] = typer.Option(None, help="Gem-Miner: epochs between freezing rounds (default: 5 per 150 epochs)."),
    init: str = typer.Option(DEFAULTS.init, help="Weight init: signed-constant or kaiming-normal."),
    seed: int = typer.Option(DEFAULTS.seed, help="Random seed (runs are deterministic on CPU)."),
    device: str = typer.Option(DEFAULTS.device, help="auto, cpu or cuda."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the training step."),
    data_dir: Optional[Path] = typer.Option(None, help="Where cifar10/cifar100/imagefolder data lives."),
    download: bool = typer.Option(False, "--download", help="Let torchvision download CIFAR into --data-dir."),
    imp_rewind_iter: int = typer.Option(DEFAULTS.imp_rewind_iter, help="IMP: rewind to this iteration (at most one epoch)."),
    imp_from: Optional[Path] = typer.Option(None, help="IMP: reuse the levels of an earlier IMP run (same model, data, seed, recipe)."),
    round_to: int = typer.Option(DEFAULTS.round_to, help="Compaction keeps channel counts multiples of this."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
    nproc_per_node: int = typer.Option(1, "--nproc-per-node", help="Data-parallel processes on this machine (launches torchrun; GPUs: one each)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of a table."),
) -> None:
    """Mine a lottery ticket at initialization, fine-tune it and write a run directory."""
    from gemdeploy import distributed as dist

    if nproc_per_node > 1 and not dist.launched_by_torchrun():
        return launch_torchrun(nproc_per_node)
    dist.setup_from_env(device)
    try:
        _mine(out, resume, overwrite, quiet, json_out, dict(
            model=model, data=data, sparsity=sparsity, method=method, pattern=pattern, nm=nm, channel_sparsity=channel_sparsity, epochs=epochs,
            finetune_epochs=finetune_epochs, batch_size=batch_size, lr=lr, finetune_lr=finetune_lr, lam=lam,
            freeze_period=freeze_period, init=init, seed=seed, device=device, compile=compile,
            data_dir=str(data_dir) if data_dir else None, download=download, round_to=round_to,
                         imp_rewind_iter=imp_rewind_iter, imp_from=str(imp_from) if imp_from else None))
    finally:
        dist.teardown()


def _mine(out: Path, resume: bool, overwrite: bool, quiet: bool, json_out: bool, options: dict) -> None:
    from gemdeploy import distributed as dist
    from gemdeploy.pipeline import prepare, run_mine
    from gemdeploy.progress import Reporter
    from gemdeploy.rundir import RunDir

    if resume:
        run = RunDir.create(out, resume=True, overwrite=overwrite)
        cfg = MineConfig.from_json(run.read_json("config.json"))
    else:
        cfg = MineConfig(**options)
    if not resume and dist.is_main():
        RunDir.check_new(out, overwrite=overwrite)  # before any slow work
    prepared = prepare(cfg)  # bad input fails here, before the run directory is touched
    if not resume:
        run = RunDir.create(out, overwrite=overwrite) if dist.is_main() else RunDir(out)
        dist.barrier()  # the other ranks start once rank 0 has made the directory
    summary = run_mine(cfg, run, resume=resume, reporter=Reporter(enabled=not quiet and dist.is_main()),
                       prepared=prepared)
    if dist.is_main():
        print_summary(summary, run.path, json_out)
    # Leave together: a rank that tears down its process group while another still works (rank 0 compacts
    # and writes) can abort inside Gloo at exit.
    dist.barrier()


def launch_torchrun(nproc: int) -> None:
    """Re-run this very command under torchrun with ``nproc`` processes (single node, local rendezvous)."""
    import sys

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc-per-node":
            skip = True
        elif not arg.startswith("--nproc-per-node="):
            argv.append(arg)
    try:
        torchrun_main(["--standalone", "--nproc-per-node", str(nproc), "-m", "gemdeploy.cli", *argv])
    except ChildFailedError as exc:
        failed = ", ".join(str(r) for r in sorted(exc.failures))
        raise GemdeployError(f"the data-parallel run failed on rank(s) {failed} (their error is printed above)") from None
    except SignalException:  # Ctrl-C or SIGTERM reached torchrun, which has already stopped every rank
        raise KeyboardInterrupt from None


def print_summary(summary: dict, path: Path, json_out: bool) -> None:
    import json

    if json_out:
        print(json.dumps(summary, indent=2))
        return
    table = Table(title=f"gemdeploy mine -> {path}")
    table.add_column("field")
    table.add_column("value", justify="right")
    acc = summary["test_acc"]
    rows = [
        ("method", summary["method"]), ("model / data", f"{summary['model']} / {summary['data']}"),
        ("pattern", summary["pattern"]),
        ("sparsity (target)", f"{summary['sparsity']:.4%} ({summary['target_sparsity']:.4%})"),
        ("kept weights", f"{summary['kept_weights']:,} of {summary['prunable_weights']:,}"),
        ("test accuracy", "n/a (synthetic data)" if acc is None else f"{acc:.2%}"),
        ("time to ticket", f"{summary['time_to_ticket_s']:.1f} s"),
        ("total time", f"{summary['total_time_s']:.1f} s"), ("device", summary["device"]),
    ]
    compaction = summary.get("compaction")
    if compaction:
        before, after, files = compaction["before"], compaction["after"], compaction["file_bytes"]
        rows += [("compacted params", f"{before['params']:,} -> {after['params']:,} ({after['nonzero_params']:,} nonzero)"),
                 ("compacted file", f"{files['dense']:,} -> {files['compact']:,} bytes")]
    for k, v in rows:
        table.add_row(k, str(v))
    Console().print(table)


