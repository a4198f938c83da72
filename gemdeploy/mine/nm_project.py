"""Turn an existing (unstructured or dense) run into an N:M run: a new run directory whose ticket method is the
N:M projection of the source (gemdeploy.mine.methods.nm_projection), then mine's own steps (train, evaluate,
summarize); gemdeploy.stages.project compacts it next. The source run is only read.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gemdeploy.errors import GemdeployError
from gemdeploy.mine.pipeline import prepare, run_mine
from gemdeploy.progress import Reporter
from gemdeploy.run import layout
from gemdeploy.run.artifacts import RunArtifacts
from gemdeploy.run.rundir import RunDir
from gemdeploy.sparsity.nm import parse_nm
from gemdeploy.sparsity.patterns import NM


def project_run(source: str | Path, out: str | Path, *, nm: str, finetune_epochs: int, round_to: int,
                overwrite: bool = False, device: str | None = None, quiet: bool = True) -> dict:
    """Write a new run in ``out`` holding ``source`` projected to N:M and fine-tuned; returns its summary."""
    src = RunArtifacts.open(source)
    RunDir.check_new(out, overwrite=overwrite)  # before any slow work
    n, m = parse_nm(nm)
    if finetune_epochs < 0:
        raise GemdeployError(f"--finetune-epochs must be >= 0, got {finetune_epochs}")
    src.mask(), src.finetuned_model()  # a source without its ticket is refused before the new directory exists
    cfg = dataclasses.replace(src.config, pattern=NM.name, nm=f"{n}:{m}", finetune_epochs=finetune_epochs,
                              round_to=round_to, device=device or src.config.device,
                              projected_from=str(Path(source).resolve())).resolve(src.config.world_size)
    prepared = prepare(cfg, init_needed=False)  # the source run's initial weights are copied
    run = RunDir.create(out, overwrite=overwrite, description="run (projected to N:M)")
    run.save_tensors(layout.INIT, src.run.load_tensors(layout.INIT))
    return run_mine(cfg, run, reporter=Reporter(enabled=not quiet), prepared=prepared)
