"""Every name inside a run directory, in one place.

A run directory holds everything about one run, as JSON and safetensors (never pickles):

    .gemdeploy             the marker: written first, names the tool and the run; `--overwrite` needs it
    config.json            the resolved configuration (every option, after defaults)
    model.json             architecture, input shape and class count (what rebuilds the network)
    metrics.jsonl          one JSON record per epoch of every phase
    init.safetensors       weights at initialization
    channel-mask.safetensors, channel-ticket.json   --channel-sparsity: the channel ticket of stage 1
    mask.safetensors       the ticket (1 = kept); ticket.json: how it was found, time to ticket
    scores.safetensors     the method's final scores, where it has them
    imp-levels/            IMP: rewind point and every level's mask, trained weights and accuracy
    lam-search/<lambda>/   Gem-Miner --lam auto: the short run of each lambda and its result.json
    weights.safetensors    fine-tuned weights (pruned entries exactly zero); finetune.json
    checkpoint-<phase>.safetensors   the last per-epoch checkpoint of the phase in progress (--resume)
    summary.json           the results
    compact.json, compact.safetensors   the compaction record and the compacted, sparse-encoded weights
    sanity.json, sanity/<check>/        `gemdeploy sanity`
    export/                `gemdeploy export` (its own layout: gemdeploy.exporters.layout)
    bench/                 `gemdeploy bench`
"""

from __future__ import annotations

import fnmatch

MARKER = ".gemdeploy"
CONFIG = "config.json"
MODEL = "model.json"
METRICS = "metrics.jsonl"
INIT = "init.safetensors"
CHANNEL_MASK = "channel-mask.safetensors"
CHANNEL_TICKET = "channel-ticket.json"
MASK = "mask.safetensors"
TICKET = "ticket.json"
SCORES = "scores.safetensors"
IMP_LEVELS = "imp-levels"
WEIGHTS = "weights.safetensors"
FINETUNE = "finetune.json"
SUMMARY = "summary.json"
COMPACT_RECORD = "compact.json"
COMPACT_WEIGHTS = "compact.safetensors"
SANITY = "sanity.json"
SANITY_DIR = "sanity"
SANITY_RESULT = "result.json"
LAM_SEARCH = "lam-search"  # Gem-Miner's --lam auto: one short run per lambda
EXPORT_DIR = "export"
BENCH_DIR = "bench"


def checkpoint(phase: str) -> str:
    return f"checkpoint-{phase}.safetensors"


def imp_level(n: int) -> str:
    return f"{IMP_LEVELS}/level-{n:02d}.safetensors"


IMP_REWIND = f"{IMP_LEVELS}/rewind.safetensors"

# Temporary files of an atomic write: ".<final name>.<random>.tmp" (gemdeploy.run.rundir.atomic_write_bytes).
TEMP_PATTERN = ".*.tmp"

# What gemdeploy writes at the top of a run directory: `--overwrite` removes these and nothing else.
OWNED_FILES = (MARKER, CONFIG, MODEL, METRICS, INIT, CHANNEL_MASK, CHANNEL_TICKET, MASK, TICKET, SCORES, WEIGHTS,
               FINETUNE, SUMMARY, COMPACT_RECORD, COMPACT_WEIGHTS, SANITY, "checkpoint-*.safetensors", TEMP_PATTERN)
OWNED_DIRS = (IMP_LEVELS, SANITY_DIR, LAM_SEARCH, EXPORT_DIR, BENCH_DIR, ".staging-*")


def is_owned(name: str, is_dir: bool) -> bool:
    patterns = OWNED_DIRS if is_dir else OWNED_FILES
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)
