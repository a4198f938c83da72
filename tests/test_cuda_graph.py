"""`mine --cuda-graph`: the whole training step captured once per phase in a CUDA graph and replayed
(gemdeploy.train.graph). Its CUDA tests are marked ``cuda`` and skip without a GPU; the refusals run everywhere."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import cli

NO_GPU = "needs a CUDA GPU: torch.cuda.is_available() is False on this machine"
TOY = ["--model", "lenet300", "--data", "digits", "--sparsity", "0.9", "--quiet"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: --cuda-graph would run")
def test_cuda_graph_without_a_gpu_is_one_clear_line(tmp_path):
    result = cli("mine", *TOY, "--epochs", "1", "--finetune-epochs", "1", "--cuda-graph", "--out", tmp_path / "r")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --cuda-graph needs a CUDA device; this run is on cpu"
    assert not (tmp_path / "r").exists()  # refused before the run directory is made


def test_cuda_graph_and_compile_exclude_each_other():
    from gemdeploy.errors import GemdeployError
    from gemdeploy.train.loop import Hardware

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with pytest.raises(GemdeployError, match="--cuda-graph"):
        Hardware.resolve(device, compile=True, cuda_graph=True)


def _steps(graphed: bool, batches: list[tuple[torch.Tensor, torch.Tensor]]):
    """Gem-Miner's mining step on lenet300 over ``batches``: eager or captured; returns the scores and the step."""
    from gemdeploy.mine.methods.gem_miner import ScoredNetwork
    from gemdeploy.models import build_model
    from gemdeploy.models.init import initialize
    from gemdeploy.train.loop import Hardware, make_step, set_lr, sgd

    hw = Hardware.resolve("cuda", layout="plain", cuda_graph=graphed)
    torch.manual_seed(0)
    net = hw.prepare(initialize(build_model("lenet300", (1, 8, 8), 10), "signed-constant"))
    scored = ScoredNetwork(net, torch.Generator().manual_seed(0)).train()
    opt = sgd(scored.score_parameters(), 0.1, 0.9, 0.0)
    step = make_step(scored, opt, hw, lambda: 1e-4 * scored.l2_penalty(), scored.project_)
    for epoch, lr in enumerate((0.1, 0.05)):  # the lr changes between epochs, as the cosine schedule does
        set_lr(opt, lr)
        step.reset()
        for x, y in batches:
            step(x, y)
        if epoch == 0:
            scored.freeze_to(scored.layout.numel // 2)  # in place, between epochs, as Gem-Miner freezes
    return scored, step


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)
def test_a_captured_step_trains_as_the_eager_step():
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(32, 1, 8, 8, generator=gen).cuda(), torch.randint(0, 10, (32,), generator=gen).cuda())
               for _ in range(8)]
    batches.append((batches[0][0][:7], batches[0][1][:7]))  # another shape: runs eagerly, outside the graph
    eager, _ = _steps(False, batches)
    graphed, step = _steps(True, batches)
    assert step.graph is not None and step.replays == 2 * 8 - 3  # after 3 warm-up steps: the capture's own replay, ...
    assert step.eager_steps == 3 + 2  # the warm-up and the odd-shaped batch of each epoch
    torch.testing.assert_close(graphed.flat_scores, eager.flat_scores, rtol=1e-4, atol=1e-5)
    # the same freezing (cuBLAS may pick other kernels inside a capture: allow a near-tie to fall the other way)
    assert graphed.flat_flags.sum() == eager.flat_flags.sum()
    assert (graphed.flat_flags == eager.flat_flags).float().mean() > 0.999
    assert float(step.loss_sum) > 0 and step.count == 8 * 32 + 7


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)
@pytest.mark.parametrize("method", ["gem-miner", "imp", "magnitude"])
def test_mine_with_cuda_graph_on_the_gpu(tmp_path, method):
    out = tmp_path / method
    cli("mine", *TOY, "--method", method, "--epochs", "3", "--finetune-epochs", "3", "--device", "cuda",
        "--cuda-graph", "--out", out, check=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layout"].endswith("CUDA-graph step")
    assert json.loads((out / "config.json").read_text())["cuda_graph"] is True
    assert summary["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert summary["test_acc"] > 0.3  # ten classes: well above chance after 3 + 3 epochs
