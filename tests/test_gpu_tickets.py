"""benchmarks/gpu_tickets.py without a GPU: the job plan of the paper-budget table, and the --smoke run of the whole
machinery (processes side by side, calibration, time box, reuse on a second call, rendering) on the CPU."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import REPO

if str(REPO) not in sys.path:  # benchmarks/ is not installed: import it from the checkout
    sys.path.insert(0, str(REPO))
from benchmarks import gpu_tickets as gt  # noqa: E402


def test_the_plan_is_the_issues_table(tmp_path):
    s = gt.Settings()
    jobs = gt.plan(s, tmp_path)
    labels = {j.variant.label for j in jobs}
    assert len(jobs) == len(gt.VARIANTS) * 2 * 3 and len(labels) == 12
    assert {(j.density, j.seed) for j in jobs} == {(d, seed) for d in (0.0144, 0.0059) for seed in range(3)}
    by = {j.key: j for j in jobs}
    for j in jobs:
        command = j.command(s)
        assert command.startswith(f"gemdeploy mine --model resnet20 --data mnist5k --method {j.variant.method} ")
        assert "--finetune-epochs 150" in command and "--device cuda" in command
        if j.variant.method in ("imp", "imp-ft"):
            assert f"--epochs {j.variant.round_epochs}" in command and j.variant.round_epochs in (10, 30)
            # the lower density continues the same variant and seed's levels at 1.44%
            assert (j.source is None) == (j.density == 0.0144)
            if j.source is not None:
                assert (j.source.variant, j.source.seed, j.source.density) == (j.variant, j.seed, 0.0144)
        else:
            assert "--epochs 150" in command and j.source is None
    assert "--finetune-lr 0.1" in by["gem-miner, ticket lr 0.1|0.0144|0"].command(s)
    assert "--finetune-lr" not in by["gem-miner|0.0144|0"].command(s)
    # 0.8^19 = 1.44%: 19 rounds of 30 epochs, then 150 training the ticket
    assert by["imp, 30 per round|0.0144|1"].expected_epochs(s) == 19 * 30 + 150
    assert by["gem-miner|0.0059|2"].expected_epochs(s) == 300 and by["snip|0.0059|2"].expected_epochs(s) == 150


def test_nothing_measured_says_prepared_not_yet_run(tmp_path):
    out = tmp_path / "gt.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_tickets", "--report-only", "--state", tmp_path / "none",
                           "--out", out, "--markdown", tmp_path / "gt.md", "--no-write-benchmarks"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (tmp_path / "gt.md").read_text()
    assert "**Prepared, not yet run on a GPU**" in text and text.count("| not measured |") == 24
    assert "- 1.44%: not measured yet." in text


def _smoke(tmp_path, *extra) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_tickets", "--smoke", "--runs", tmp_path / "runs",
                           "--out", tmp_path / "gt.json", "--markdown", tmp_path / "gt.md", *map(str, extra)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_smoke_keeps_its_time_box_and_a_later_call_reuses_what_finished(tmp_path):
    # 1. a time box shorter than a process's start-up: both runs are interrupted, none fails, nothing is recorded
    first = _smoke(tmp_path, "--procs", "2", "--budget", "1")
    result = json.loads((tmp_path / "gt.json").read_text())
    call = result["calls"][-1]
    assert result["runs"] == [] and call["interrupted"] == 2 and call["failed"] == 0, first.stdout
    assert call["elapsed_s"] < 1 + gt.SIGINT_GRACE_S + 5

    # 2. a full call: measures the concurrency on its first jobs, finishes every run
    second = _smoke(tmp_path)
    result = json.loads((tmp_path / "gt.json").read_text())
    assert len(result["runs"]) == 10 and len(result["calls"]) == 2 and not result["calls"][-1]["failures"]
    assert "calibration: 1 processes" in second.stdout and result["calls"][-1]["epoch_s"] > 0
    for r in result["runs"]:
        assert 0 <= r["test_acc"] <= 1 and r["command"].startswith("gemdeploy mine --model lenet300 --data digits")
    imp_deep = next(r for r in result["runs"] if r["method"] == "imp, 1 per round" and r["density_target"] == 0.41)
    assert imp_deep["ticket_epochs"] >= 4  # four rounds down to 0.8^4 = 41%, continued from 50% or not
    text = (tmp_path / "gt.md").read_text()
    assert "**Smoke run**" in text and "Prepared, not yet run" not in text
    for label in ("gem-miner", "gem-miner, ticket lr 0.1", "imp, 1 per round", "imp-ft, 2 per round", "random"):
        assert f"| {label} |" in text
    assert re.search(r"- 50\.00%: Gem-Miner is (above|below|level with) IMP's best variant", text)

    # 3. again: every run is reused, nothing starts
    third = _smoke(tmp_path)
    assert "10 already finished" in third.stdout and " start " not in third.stdout
    assert json.loads((tmp_path / "gt.json").read_text())["runs"] == result["runs"]
