"""Every method, with every pattern it supports, in the layout CUDA trains in (channels_last weights and
activations, bf16 autocast), run on the CPU: the code path a GPU runs, checked on every change.

On CUDA, Hardware switches that layout on; here GEMDEPLOY_LAYOUT=cuda does the same on the CPU. A mask made
``zeros_like`` a channels_last weight once broke 5 of the 10 methods on an H200 while every CPU test passed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import case_id, cli, method_pattern_cases
from gemdeploy.compact.compaction import EXACT_REL_TOL
from gemdeploy.sparsity.masks import Mask, set_flat_
from gemdeploy.sparsity.topk import global_topk
from gemdeploy.train.loop import LAYOUT_ENV, Hardware

SPARSITY = 0.5
CUDA_LAYOUT = "channels_last, bf16 autocast"


@pytest.fixture(scope="module")
def cuda_layout_runs(tmp_path_factory) -> dict[tuple[str, str], Path]:
    """A toy-budget run of each (method, pattern) mined in the CUDA layout: resnet20 (convs, residual adds,
    BatchNorm) on scikit-learn's 8x8 digits, one epoch of each phase; `mine` compacts it too."""
    root = tmp_path_factory.mktemp("cuda-layout")
    previous = os.environ.get(LAYOUT_ENV)
    os.environ[LAYOUT_ENV] = "cuda"
    try:
        runs = {}
        for method, pattern in method_pattern_cases():
            out = root / case_id(method, pattern)
            cli("mine", "--model", "resnet20", "--data", "digits", "--sparsity", SPARSITY, "--method", method,
                "--pattern", pattern, "--epochs", "1", "--finetune-epochs", "1", "--seed", "3", "--quiet",
                "--out", out, check=True)
            runs[(method, pattern)] = out
        yield runs
    finally:
        if previous is None:
            os.environ.pop(LAYOUT_ENV, None)
        else:
            os.environ[LAYOUT_ENV] = previous


def test_the_cuda_layout_is_a_setting_of_the_hardware_profile(monkeypatch):
    hw = Hardware.resolve("cpu", layout="cuda")
    assert hw.device.type == "cpu" and hw.channels_last and hw.amp_dtype == torch.bfloat16
    model = hw.prepare(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()))
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not model[0].weight.is_contiguous()
    with hw.autocast():
        y = model(torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last))
    assert y.dtype == torch.bfloat16
    monkeypatch.setenv(LAYOUT_ENV, "cuda")
    assert Hardware.resolve("cpu").describe() == CUDA_LAYOUT
    monkeypatch.setenv(LAYOUT_ENV, "plain")
    plain = Hardware.resolve("cpu")
    assert not plain.channels_last and plain.amp_dtype is None
    monkeypatch.setenv(LAYOUT_ENV, "sideways")
    with pytest.raises(Exception, match="unknown layout 'sideways'"):
        Hardware.resolve("cpu")


def test_flat_positions_land_in_the_same_logical_places_whatever_the_layout():
    weight = torch.randn(8, 4, 3, 3)
    index = torch.tensor([0, 5, 17, 100, 287])
    plain = set_flat_(torch.zeros_like(weight), index)
    last = set_flat_(torch.zeros_like(weight.contiguous(memory_format=torch.channels_last)), index)
    assert last.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(plain, last) and int(last.sum()) == len(index)
    assert torch.equal(torch.nonzero(last.flatten()).flatten(), index)


def test_global_topk_keeps_the_same_weights_of_a_channels_last_tensor():
    gen = torch.Generator().manual_seed(0)
    scores = {"a.weight": torch.rand(16, 8, 3, 3, generator=gen), "b.weight": torch.rand(10, 16, generator=gen)}
    last = {"a.weight": scores["a.weight"].contiguous(memory_format=torch.channels_last), "b.weight": scores["b.weight"]}
    keep = 300
    plain_mask, last_mask = global_topk(scores, keep), global_topk(last, keep)
    assert isinstance(last_mask, Mask) and last_mask.num_kept() == keep
    for k in scores:
        assert torch.equal(plain_mask[k], last_mask[k])


@pytest.mark.parametrize("method,pattern", method_pattern_cases(), ids=[case_id(*c) for c in method_pattern_cases()])
def test_every_method_and_pattern_mines_and_compacts_in_the_cuda_layout(cuda_layout_runs, method, pattern):
    out = cuda_layout_runs[(method, pattern)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layout"] == CUDA_LAYOUT and summary["device"] == "cpu"
    assert summary["method"] == method and summary["pattern"] == pattern
    if method != "dense" and pattern != "channel":  # channel sparsity counts channels, not weights
        assert summary["sparsity"] == pytest.approx(SPARSITY, abs=0.02)
    record = json.loads((out / "compact.json").read_text())
    check = record["check"]
    assert check["max_abs_logit_diff"] <= EXACT_REL_TOL * max(1.0, check["logit_scale"])


@pytest.mark.slow
@pytest.mark.parametrize("method,pattern", method_pattern_cases(), ids=[case_id(*c) for c in method_pattern_cases()])
def test_every_cuda_layout_ticket_exports_verified(cuda_layout_runs, method, pattern):
    """fp32 ONNX, verified by ONNX Runtime against PyTorch on real test images (export refuses otherwise)."""
    out = cuda_layout_runs[(method, pattern)]
    cli("export", out, "--quiet", "--no-sparse-storage", "--verify-samples", "64", check=True)
    record = json.loads((out / "export" / "export.json").read_text())
    assert record["source"] in ("compacted", "masked")
    assert (out / "export" / "model.fp32.onnx").stat().st_size > 0


@pytest.mark.slow
def test_sanity_and_nm_projection_run_in_the_cuda_layout(cuda_layout_runs, tmp_path, monkeypatch):
    monkeypatch.setenv(LAYOUT_ENV, "cuda")
    ticket = cuda_layout_runs[("magnitude", "unstructured")]
    result = cli("sanity", ticket, "--checks", "shuffle,invert", "--json", check=True)
    checks = json.loads(result.stdout)["checks"]
    assert set(checks) == {"shuffle", "invert"}
    projected = tmp_path / "nm"
    cli("compact", ticket, "--pattern", "2:4", "--out", projected, "--finetune-epochs", "1", "--quiet", check=True)
    record = json.loads((projected / "compact.json").read_text())
    layers = [layer for layer in record["layers"] if layer.get("nm_eligible")]
    assert layers and all(layer["nm_holds"] for layer in layers)
