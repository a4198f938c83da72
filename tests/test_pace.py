"""Gem-Miner's flat score buffers (the pace work of issue 25) change no result: the flat ScoredNetwork trains to
exactly the scores and flags of the one-tensor-per-layer code it replaced (benchmarks.pace's reference), in both
layouts and with 2:4; and benchmarks/pace.py runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO

if str(REPO) not in sys.path:  # benchmarks/ is not installed: import it from the checkout
    sys.path.insert(0, str(REPO))
from benchmarks.pace import PerLayerScoredNetwork  # noqa: E402


def _mine_steps(kind: str, layout: str, batches) -> torch.nn.Module:
    from gemdeploy.mine.methods.gem_miner import ScoredNetwork
    from gemdeploy.models import build_model
    from gemdeploy.models.init import initialize
    from gemdeploy.train.loop import Hardware, make_step, sgd

    hw = Hardware.resolve("cpu", layout=layout)
    torch.manual_seed(0)
    net = hw.prepare(initialize(build_model("resnet20", (3, 8, 8), 10), "signed-constant"))
    cls = PerLayerScoredNetwork if kind == "per-layer" else ScoredNetwork
    scored = cls(net, torch.Generator().manual_seed(0)).train()
    opt = sgd(scored.score_parameters(), 0.1, 0.9, 0.0)
    step = make_step(scored, opt, hw, lambda: 1e-4 * scored.l2_penalty(), scored.project_)
    for x, y in batches:
        step(x.contiguous(memory_format=torch.channels_last) if hw.channels_last else x, y)
    return scored


@pytest.mark.parametrize("layout", ["plain", "cuda"])
def test_flat_scores_train_bit_for_bit_like_one_tensor_per_layer(layout):
    gen = torch.Generator().manual_seed(0)
    # two steps: the second runs SGD's momentum path
    batches = [(torch.randn(16, 3, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)) for _ in range(2)]
    before, flat = _mine_steps("per-layer", layout, batches), _mine_steps("flat", layout, batches)
    assert len(flat.scores) == len(before.scores) > 20
    for a, b in zip(before.scores, flat.scores):
        assert a.shape == b.shape and torch.equal(a.detach(), b)
    gen = torch.Generator().manual_seed(0)
    initial = [torch.rand(s.shape, generator=gen) for s in flat.scores]
    assert all(not torch.equal(s, i) for s, i in zip(flat.scores, initial))  # every layer's scores trained


def test_flat_buffers_back_the_network_and_follow_its_layout():
    """The network's weights are views of the flat weight buffer (a state dict loads into what the forward reads);
    each layer's scores and flags sit in its weight's memory layout; .to() keeps them linked."""
    from gemdeploy.mine.methods.gem_miner import ScoredNetwork
    from gemdeploy.models import build_model
    from gemdeploy.sparsity.masks import prunable_weights
    from gemdeploy.train.loop import Hardware

    hw = Hardware.resolve("cpu", layout="cuda")
    net = hw.prepare(build_model("resnet20", (3, 8, 8), 10))
    scored = ScoredNetwork(net, torch.Generator().manual_seed(0))
    conv = prunable_weights(net)["conv1.weight"]
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert scored.scores[0].stride() == conv.stride() and scored.flags()[0].stride() == conv.stride()
    state = {k: v.clone() for k, v in scored.state_dict().items()}
    state["net.conv1.weight"].fill_(0.25)
    scored.load_state_dict(state)
    assert float(scored._weights[: conv.numel()].unique()) == 0.25  # loaded into the buffer the forward reads
    scored.to(torch.float32)  # a move re-links every weight to the (moved) buffer
    prunable_weights(net)[scored.names[-1]].data.fill_(0.5)
    assert float(scored._weights[-1]) == 0.5


@pytest.mark.slow
def test_pace_benchmark_smoke(tmp_path):
    out = tmp_path / "pace.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.pace", "--smoke", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["identical_scores"] is True
    assert set(result["median_s"]) == {"per-layer", "flat"} and all(len(v) == 2 for v in result["epoch_s"].values())
