"""benchmarks/gpu.py without a GPU: the --smoke run exercises every part at toy size on the CPU, so the prepared GPU
command cannot rot between the rare GPU runs; a machine without a GPU writes every figure as not measured."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import REPO

if str(REPO) not in sys.path:  # benchmarks/ is not installed: import it from the checkout, however pytest is started
    sys.path.insert(0, str(REPO))
from benchmarks import gpu  # noqa: E402

PARTS = ("mining", "tickets", "inference")


def run_gpu_script(*args, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def assert_every_figure_accounted_for(result: dict) -> None:
    """Every planned row either carries its figures or says why not."""
    for name in PARTS:
        part = result["parts"][name]
        assert part["rows"], name
        for row in part["rows"]:
            assert row["status"] in ("measured", "not measured"), (name, row)
            if row["status"] == "not measured":
                assert row["reason"] and row["reason"] != gpu.PENDING, (name, row)


@pytest.mark.slow
def test_smoke_run_measures_every_part_and_renders_the_section(tmp_path):
    out, md = tmp_path / "gpu.json", tmp_path / "gpu.md"
    proc = run_gpu_script("--smoke", "--out", out, "--markdown", md, "--work", tmp_path / "work")
    assert "done in" in proc.stdout
    result = json.loads(out.read_text())
    meta = result["meta"]
    assert meta["smoke"] and meta["finished"] and meta["torch"] == torch.__version__
    assert_every_figure_accounted_for(result)

    mining = {(r["epoch"], r["mode"]): r for r in result["parts"]["mining"]["rows"]}
    assert set(mining) == set(gpu.MINING_ROWS)
    for (kind, mode), row in mining.items():  # every epoch in every mode but the CUDA graph's: timed
        if mode == "cuda-graph":
            assert row["status"] == "not measured" and row["reason"] == "needs CUDA", row
            continue
        assert row["status"] == "measured", row
        assert row["epoch_s"] > 0 and row["images_per_s"] > 0 and row["images_per_epoch"] == 64
    assert set(result["parts"]["mining"]["ratios"]) == {"eager", "compile", "per-layer"}
    assert set(result["parts"]["mining"]["speedup_over_eager"]) == {"gem-miner|per-layer", "gem-miner|compile",
                                                                     "dense|compile"}
    profile = result["parts"]["mining"]["profile"]
    assert profile["status"] == "measured" and profile["top"] and profile["top"][0]["self_cpu_ms"] > 0

    tickets = {r["method"]: r for r in result["parts"]["tickets"]["rows"]}
    assert set(tickets) == set(gpu.TICKET_METHODS)
    for method, row in tickets.items():
        assert row["status"] == "measured", row
        assert 0.0 <= row["test_acc"] <= 1.0 and abs(row["density"] - 0.64) < 0.01, row
        assert row["command"].startswith(f"gemdeploy mine --model resnet20 --data digits --method {method}")
    assert tickets["gem-miner"]["ticket_epochs"] == 2 and tickets["random"]["ticket_epochs"] == 0
    assert tickets["imp"]["rounds"] == 2 and tickets["imp"]["epochs"] == 1  # 0.8^2 = 64%, epochs per round capped

    inference = result["parts"]["inference"]
    for key, info in inference["tickets"].items():
        assert "error" not in info, (key, info)
    for row in inference["rows"]:
        if row["mode"] == "cuda-graph":
            assert row["status"] == "not measured" and row["reason"] == "needs CUDA"
        else:
            assert row["status"] == "measured" and row["median_ms"] > 0, row
            assert row["speedup_vs_dense"] > 0
    channel = inference["tickets"]["vgg16|channel 75%"]
    assert channel["params"] < inference["tickets"]["vgg16|dense"]["params"] / 4  # really compacted
    for model in ("resnet20", "vgg16"):
        semi = inference["tickets"][f"{model}|2:4 semi-structured"]
        assert semi["swapped"], semi  # the CPU stand-in accepts every 2:4 layer
        assert semi["max_abs_logit_diff"] <= 1e-4 * semi["logit_scale"] + 1e-6

    text = md.read_text()
    assert text.startswith("## GPU") and meta["device"] in text and "Smoke run" in text
    for heading in ("### 1. Mining throughput", "### 2. Tickets", "### 3. Inference latency"):
        assert heading in text
    # --from-json renders the same section from the JSON alone (what happens back here after a GPU run)
    again = tmp_path / "again.md"
    run_gpu_script("--from-json", out, "--markdown", again, "--no-write-benchmarks")
    assert again.read_text() == text


def test_without_a_gpu_every_figure_is_not_measured(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the benchmark would run")
    out, md = tmp_path / "gpu.json", tmp_path / "gpu.md"
    run_gpu_script("--out", out, "--markdown", md, timeout=120)
    result = json.loads(out.read_text())
    assert_every_figure_accounted_for(result)
    for name in PARTS:
        assert result["parts"][name]["status"] == "not measured"
        assert {r["reason"] for r in result["parts"][name]["rows"]} == {"no CUDA GPU visible to PyTorch on this machine"}
    assert "**Not measured: no CUDA GPU visible to PyTorch on this machine.**" in md.read_text()


def test_not_measured_placeholder_names_the_reason(tmp_path):
    out, md = tmp_path / "gpu.json", tmp_path / "gpu.md"
    run_gpu_script("--not-measured", "no GPU lent to this session", "--out", out, "--markdown", md,
                   "--no-write-benchmarks", timeout=120)
    result = json.loads(out.read_text())
    assert_every_figure_accounted_for(result)
    text = md.read_text()
    assert text.count("**Not measured: no GPU lent to this session.**") == 3
    assert "bash benchmarks/gpu_run.sh" in text and "**Not run yet (no GPU lent to this session)**" in text


@pytest.mark.parametrize("stride,padding,kernel", [(1, 1, 3), (2, 1, 3), (2, 0, 1), (1, 0, 1)])
def test_conv_as_gemm_matches_the_convolution(stride, padding, kernel):
    """The semi-structured path's convolution (one GEMM over channels-last patches, 2:4 groups along input
    channels) computes what nn.Conv2d computes."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, kernel, stride=stride, padding=padding, bias=True).eval()
    with torch.no_grad():  # 2:4 along input channels at every kernel position, as gemdeploy's N:M tickets hold it
        keep = torch.zeros_like(conv.weight)
        keep[:, 0::4] = keep[:, 2::4] = 1
        conv.weight.mul_(keep)
    w2d = gpu.conv_weight_2d(conv.weight)
    assert gpu.holds_2of4(w2d) and not gpu.holds_2of4(gpu.conv_weight_2d(torch.ones_like(conv.weight)))
    x = torch.randn(3, 8, 9, 9)
    with torch.no_grad():
        assert torch.allclose(gpu.ConvAsGemm(conv, w2d)(x), conv(x), atol=1e-5)


def test_semi_structured_swaps_only_layers_that_hold_2_of_4():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    with torch.no_grad():
        net[2].weight[:, 1::2] = 0  # 2 of every 4 input channels kept: 2:4
    semi, layers = gpu.semi_structured(net, lambda w: w.clone())
    assert [s["layer"] for s in layers["swapped"]] == ["2"]
    assert set(layers["kept"]) == {"0", "5"}  # the first conv and the dense Linear are not 2:4
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        assert torch.allclose(semi(x), net(x), atol=1e-5)
    _, refused = gpu.semi_structured(net, lambda w: (_ for _ in ()).throw(RuntimeError("shape not supported")))
    assert refused["swapped"] == [] and "refused" in refused["kept"]["2"]


def test_a_part_past_its_deadline_stops_the_mine_run_between_epochs(tmp_path):
    """The tickets part's time box: the reporter raises after the epoch in which the deadline passed, with that
    epoch's checkpoint and metrics on disk."""
    from gemdeploy.mine.pipeline import prepare, run_mine
    from gemdeploy.run.config import MineConfig
    from gemdeploy.run.rundir import RunDir

    cfg = MineConfig(model="lenet300", data="digits", sparsity=0.9, epochs=3, finetune_epochs=2, device="cpu")
    prepared = prepare(cfg)
    clock = gpu.Clock(budget_s=0.0)
    clock.deadline = clock.started  # already over
    with pytest.raises(gpu.BudgetExceeded, match="mine epoch 1/3"):
        run_mine(cfg.resolve(train_size=len(prepared[1].train)), RunDir.create(tmp_path / "run"),
                 reporter=gpu.DeadlineReporter(clock, "gem-miner"), prepared=prepared)
    records = RunDir(tmp_path / "run").metrics()
    assert [(r["phase"], r["epoch"]) for r in records] == [("mine", 1)]
