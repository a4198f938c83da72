"""`mine --pattern 2:4 | channel` and `gemdeploy compact` through the real command line on real digits."""

from __future__ import annotations

import pytest
import hashlib
import json
import shutil

import torch

from conftest import assert_clean_error, cli
from gemdeploy.sparsity.masks import Mask
from gemdeploy.sparsity.nm import satisfies_nm

TINY = ["--epochs", "2", "--finetune-epochs", "1", "--quiet"]


def _digest(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir()) if p.is_file()}


@pytest.mark.slow
def test_mine_2_4_gives_an_exact_2_4_ticket_along_input_channels(tmp_path):
    out = tmp_path / "conv4-24"
    cli("mine", "--model", "conv4", "--data", "digits", "--sparsity", "0.8", "--pattern", "2:4", "--out", out,
            *TINY, check=True)
    mask = Mask.load(out / "mask.safetensors")
    record = json.loads((out / "compact.json").read_text())
    eligible = {r["layer"] + ".weight" for r in record["layers"] if r["nm_eligible"]}
    # The first conv (1 input channel) stays dense of the pattern; every other conv and Linear is eligible.
    assert "0.0.weight" not in eligible and "0.3.weight" in eligible and len(eligible) == len(mask) - 1
    for k in eligible:
        assert satisfies_nm(mask[k], 2, 4), k
    assert all(r["nm_holds"] for r in record["layers"] if r["nm_eligible"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pattern"] == "2:4" and abs(summary["sparsity"] - 0.8) < 0.01


@pytest.mark.slow
def test_mine_channel_pattern_gives_a_thinner_network(tmp_path):
    out = tmp_path / "lenet-ch"
    cli("mine", "--model", "lenet300", "--data", "mnist5k", "--sparsity", "0.75", "--pattern", "channel",
            "--out", out, *TINY, check=True)
    summary = json.loads((out / "summary.json").read_text())
    assert abs(summary["ticket"]["channel_sparsity"] - 0.75) < 0.01
    assert summary["test_acc"] > 0.3  # real digits, a real (tiny) network
    record = json.loads((out / "compact.json").read_text())
    hidden = [r for r in record["layers"] if r["out_before"] in (300, 100)]
    kept = sum(r["out_after"] for r in hidden)
    assert kept <= 0.25 * 400 + 16 and all(r["out_after"] % 8 == 0 or r["out_after"] == r["out_before"] for r in hidden)
    assert record["after"]["macs"] < 0.5 * record["before"]["macs"]


@pytest.mark.slow
def test_compact_projects_a_run_to_2_4_into_a_new_directory(lenet_run, tmp_path):
    before = _digest(lenet_run)
    out = tmp_path / "lenet-24"
    proc = cli("compact", lenet_run, "--pattern", "2:4", "--out", out, "--finetune-epochs", "1", "--quiet",
                   check=True)
    assert "file bytes" in proc.stdout
    assert _digest(lenet_run) == before  # the source run is only read
    mask, source = Mask.load(out / "mask.safetensors"), Mask.load(lenet_run / "mask.safetensors")
    for k in mask:
        assert satisfies_nm(mask[k], 2, 4), k
        assert torch.all(mask[k] <= source[k])  # a projection: never revives a pruned weight
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pattern"] == "2:4" and summary["ticket"]["projected_from"] == str(lenet_run.resolve())
    assert (out / "compact.safetensors").is_file()
    # It says what the projection cost and where 2:4 holds (compact.json's per-layer record).
    layers = json.loads((out / "compact.json").read_text())["layers"]
    holds = sum(1 for r in layers if r["nm_eligible"] and r["nm_holds"])
    eligible = sum(1 for r in layers if r["nm_eligible"])
    assert eligible > 0 and f"2:4 holds in {holds} of {eligible} eligible layers" in proc.stdout
    source_acc = json.loads((lenet_run / "summary.json").read_text())["test_acc"]
    assert f"new run's test accuracy: {summary['test_acc']:.2%} (source run {source_acc:.2%}" in proc.stdout
    # The new directory is never silently replaced.
    assert_clean_error(cli("compact", lenet_run, "--pattern", "2:4", "--out", out), "already exists")


def test_compact_errors_are_one_line(lenet_run, tmp_path):
    assert_clean_error(cli("compact", lenet_run, "--pattern", "2:4"), "--out")
    assert_clean_error(cli("compact", tmp_path / "nope"), "not a gemdeploy run directory")
    assert_clean_error(cli("compact", lenet_run, "--pattern", "3:4x"), "--pattern")
    assert_clean_error(cli("compact", lenet_run, "--round-to", "4"), "--overwrite")
    copy = tmp_path / "copy"
    shutil.copytree(lenet_run, copy)
    assert_clean_error(cli("compact", copy, "--round-to", "0", "--overwrite"), "--round-to")
    cli("compact", copy, "--round-to", "4", "--overwrite", check=True)
    assert json.loads((copy / "compact.json").read_text())["round_to"] == 4
    (copy / "weights.safetensors").write_bytes(b"broken")
    assert_clean_error(cli("compact", copy, "--overwrite"), "corrupt")
    assert_clean_error(cli("mine", "--model", "lenet300", "--data", "mnist5k", "--pattern", "2:4", "--nm", "4:2",
                               "--out", tmp_path / "bad"), "--nm")


@pytest.mark.slow
def test_channel_sparsity_combines_a_channel_ticket_with_unstructured_sparsity(tmp_path):
    out = tmp_path / "lenet-ch-un"
    cli("mine", "--model", "lenet300", "--data", "mnist5k", "--sparsity", "0.95", "--channel-sparsity", "0.5",
            "--out", out, *TINY, check=True)
    summary = json.loads((out / "summary.json").read_text())
    assert abs(summary["sparsity"] - 0.95) < 0.005 and abs(summary["ticket"]["channel_sparsity"] - 0.5) < 0.01
    mask = Mask.load(out / "mask.safetensors")
    channels = Mask.load(out / "channel-mask.safetensors")
    assert all(torch.all(mask[k] <= channels[k]) for k in mask)  # stage 2 stays inside the kept channels
    record = json.loads((out / "compact.json").read_text())
    assert sum(r["out_after"] for r in record["layers"][:2]) <= 0.5 * 400 + 16
    assert_clean_error(cli("mine", "--model", "lenet300", "--data", "mnist5k", "--pattern", "channel",
                               "--channel-sparsity", "0.5", "--out", tmp_path / "bad"), "--channel-sparsity")
