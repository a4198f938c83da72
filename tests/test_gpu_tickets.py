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
def test_smoke_keeps_its_time_box_and_a_second_call_reuses_what_finished(tmp_path):
    first = _smoke(tmp_path, "--budget", "45")  # cut off: some runs finish, the rest are interrupted
    result = json.loads((tmp_path / "gt.json").read_text())
    finished = {f"{r['method']}|{r['density_target']:g}|{r['seed']}" for r in result["runs"]}
    call = result["calls"][-1]
    assert 0 < len(finished) < 10 and call["finished"] == len(finished), first.stdout
    assert call["interrupted"] + call["failed"] >= 0 and not call["failures"], call

    second = _smoke(tmp_path)
    started = set(re.findall(r"start (\S.*?\|[\d.]+\|\d)", second.stdout))
    assert not started & finished  # nothing the first call finished runs again
    result = json.loads((tmp_path / "gt.json").read_text())
    assert len(result["runs"]) == 10 and len(result["calls"]) == 2
    assert "(resume)" in second.stdout or result["calls"][0]["interrupted"] == 0
    for r in result["runs"]:
        assert 0 <= r["test_acc"] <= 1 and r["command"].startswith("gemdeploy mine --model lenet300 --data digits")
    imp_deep = next(r for r in result["runs"] if r["method"] == "imp, 1 per round" and r["density_target"] == 0.41)
    assert imp_deep["ticket_epochs"] >= 4  # four rounds down to 0.8^4 = 41%, whether continued or not
    text = (tmp_path / "gt.md").read_text()
    assert "**Smoke run**" in text and "Prepared, not yet run" not in text
    for label in ("gem-miner", "gem-miner, ticket lr 0.1", "imp, 1 per round", "imp-ft, 2 per round", "random"):
        assert f"| {label} |" in text
    assert re.search(r"- 50\.00%: Gem-Miner is (above|below|level with) IMP's best variant", text)
