"""The CUDA tier's prepared command without a GPU: its CPU dry run collects every ``cuda`` test and runs what can
run here, so the command cannot rot between the rare GPU runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO, method_pattern_cases


def tier(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.cuda_tier", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run's skips are what a machine without a GPU sees")
def test_the_dry_run_collects_the_whole_tier_and_records_why_it_skipped(tmp_path):
    record = tmp_path / "tier.md"
    proc = tier("--smoke", "--record", record)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    saved = json.loads(record.with_suffix(".json").read_text())
    assert saved["smoke"] and saved["environment"]["torch"] == torch.__version__
    names = [r["test"] for r in saved["results"]]
    mined = [n for n in names if "mines_and_compacts_on_cuda[" in n]
    assert len(mined) == len(method_pattern_cases())  # every method x pattern, from the registry
    for part in ("resumes", "sanity", "nm_projection", "exported_onnx", "bench", "nccl"):
        assert any(part in n for n in names), part
    assert all(r["outcome"] == "skipped" and "CUDA GPU" in r["message"] for r in saved["results"])
    text = record.read_text()
    assert "Device: no CUDA GPU" in text and f"torch {torch.__version__}" in text and text in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the tier runs for real")
def test_the_real_tier_refuses_in_one_line_without_a_gpu(tmp_path):
    proc = tier("--record", tmp_path / "tier.md")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no CUDA GPU" in proc.stderr
    assert not (tmp_path / "tier.md").exists()
    proc = tier("--smoke")  # never over the committed GPU record
    assert proc.returncode == 2 and "--record PATH" in proc.stderr
