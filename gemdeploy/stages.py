"""The stages chained in one place: `mine` finds and trains a ticket, `compact` removes its dead channels; the CLI,
gemdeploy.api and tune all run a mine through here, so a mined run is always a compacted run. Each stage reads the
run and writes its own part, and skips what it finds done (mine's steps resume from their files; compaction keeps
a record made with the same --round-to). Export and bench are their own commands (exporters.pipeline.export_run,
bench.stage.bench_runs) on a run this chain has finished.

Stages never call each other: mine does not compact, compact does not mine (`compact --pattern 2:4` starts an
N:M projection, a ticket method, through `project` here)."""

from __future__ import annotations

from pathlib import Path

from gemdeploy.compact.compaction import compact_stage, summary_totals
from gemdeploy.mine.nm_project import project_run
from gemdeploy.mine.pipeline import mine_run, run_mine
from gemdeploy.progress import Reporter
from gemdeploy.run import layout
from gemdeploy.run.artifacts import RunArtifacts
from gemdeploy.run.config import MineConfig
from gemdeploy.run.rundir import RunDir
from gemdeploy.train import distributed as dist


def compact(path: str | Path, summary: dict | None = None) -> dict:
    """The compact stage of a mined run (at its configured --round-to; skipped when done), its totals added to
    summary.json (``summary``: the one mine just wrote, else read). Returns the summary."""
    art = RunArtifacts.open(path)
    record = compact_stage(art, art.config.round_to)
    summary = dict(summary if summary is not None else art.summary())
    totals = summary_totals(record)
    if summary.get("compaction") != totals:  # a finished run's summary already holds them: nothing to write
        summary["compaction"] = totals
        art.run.write_json(layout.SUMMARY, summary)
    return summary


def _then_compact(run: RunDir, summary: dict) -> dict:
    # Rank 0 compacts and writes (the others would race on the same files); the caller meets them at a barrier.
    return compact(run.path, summary) if dist.is_main() else summary


def mine(out: str | Path, cfg: MineConfig | None, *, resume: bool = False, overwrite: bool = False,
         reporter: Reporter | None = None, keep_finished: bool = False) -> tuple[RunDir, dict]:
    """`gemdeploy mine`: a new run of ``cfg`` in ``out`` (or the run there resumed), mined, trained and compacted;
    returns (run directory, summary). ``keep_finished``: a resumed run that already has its summary is not
    re-evaluated (the mine stage is done), only compacted when it is not yet."""
    if resume and keep_finished and (Path(out) / layout.SUMMARY).is_file():
        run = RunDir.create(out, resume=True)
        return run, _then_compact(run, run.read_json(layout.SUMMARY))
    run, summary = mine_run(out, cfg, resume=resume, overwrite=overwrite, reporter=reporter)
    return run, _then_compact(run, summary)


def mine_in(cfg: MineConfig, run: RunDir, *, resume: bool = False, reporter: Reporter | None = None,
            prepared=None) -> dict:
    """`mine` in a run directory already made, with the resolved ``cfg`` (and data already ``prepared``): for
    scripts that time or share those steps (benchmarks/)."""
    return _then_compact(run, run_mine(cfg, run, resume=resume, reporter=reporter, prepared=prepared))


def project(source: str | Path, out: str | Path, **options) -> dict:
    """`compact RUN --pattern 2:4 --out NEW`: a new run holding ``source`` projected to N:M and fine-tuned (the mine
    stage with the N:M projection as its ticket method), then compacted; returns its summary. ``options``: those
    of gemdeploy.mine.nm_project.project_run."""
    summary = project_run(source, out, **options)
    return compact(out, summary)
