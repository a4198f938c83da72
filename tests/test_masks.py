import torch

from gemdeploy.sparsity.masks import Mask, keep_count, prunable_weights
from gemdeploy.sparsity.topk import _kth_highest_key, global_topk
from gemdeploy.mine.methods.gem_miner import ScoredNetwork, freeze_schedule, straight_through_mask
from gemdeploy.models import build_model


def test_straight_through_mask_forward_is_threshold_and_gradient_is_identity():
    p = torch.tensor([0.1, 0.5, 0.51, 0.9], requires_grad=True)
    m = straight_through_mask(p)
    assert m.tolist() == [0.0, 0.0, 1.0, 1.0]
    (m * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert p.grad.tolist() == [1.0, 2.0, 3.0, 4.0]


def test_scored_network_gradient_reaches_scores_through_frozen_weights():
    torch.manual_seed(0)
    net = build_model("lenet300", (1, 8, 8), 10)
    scored = ScoredNetwork(net, torch.Generator().manual_seed(0))
    scored.train()
    loss = scored(torch.randn(16, 1, 8, 8)).square().mean()
    loss.backward()
    # every layer's segment of the flat score buffer gets a gradient
    assert all(g.abs().sum() > 0 for g in scored.layout.views(scored.flat_scores.grad))
    assert all(p.grad is None for p in net.parameters())


def test_scored_network_equals_masked_network():
    torch.manual_seed(0)
    net = build_model("resnet20", (3, 16, 16), 10).eval()
    scored = ScoredNetwork(net, torch.Generator().manual_seed(1)).eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        got = scored(x)
        mask = Mask({k: (s > 0.5).float() for k, s in zip(scored.names, scored.scores)})
        mask.apply_(net)
        want = net(x)
    torch.testing.assert_close(got, want)


def test_global_topk_exact_count_and_no_layer_collapse():
    scores = {"a": torch.arange(100.0), "b": torch.zeros(50) - 1.0, "c": torch.rand(10, 10)}
    mask = global_topk(scores, keep=30, min_per_layer=2)
    assert mask.num_kept() == 30
    assert int(mask["b"].sum()) == 2  # the worst layer keeps its floor
    eligible = {k: torch.ones_like(v) for k, v in scores.items()}
    eligible["a"][90:] = 0
    mask = global_topk(scores, keep=20, eligible=eligible)
    assert mask["a"][90:].sum() == 0 and mask.num_kept() == 20


def test_freeze_schedule_is_geometric_and_ends_on_the_target():
    total, density = 266_200, 0.014
    sched = freeze_schedule(150, 5, total, density)
    assert sorted(sched) == list(range(5, 150, 5))  # floor(149 / 5) = 29 rounds
    counts = [sched[e] for e in sorted(sched)]
    assert counts == sorted(counts, reverse=True)
    assert counts[-1] == keep_count(total, density)
    ratios = [b / a for a, b in zip(counts, counts[1:])]
    assert max(ratios) - min(ratios) < 1e-3  # the same fraction q each round
    assert freeze_schedule(3, 5, 1000, 0.1) == {3: 100}  # shorter than one period: freeze once, at the end


def test_mask_roundtrip_through_safetensors(tmp_path):
    net = build_model("conv4", (1, 28, 28), 10)
    mask = Mask({k: (torch.rand(w.shape) > 0.7).float() for k, w in prunable_weights(net).items()})
    mask.save(tmp_path / "m.safetensors")
    back = Mask.load(tmp_path / "m.safetensors")
    assert set(back) == set(mask)
    assert all(torch.equal(back[k], mask[k]) for k in mask)
    assert abs(back.density() - mask.density()) < 1e-12


def test_global_topk_keeps_exactly_the_highest_eligible_scores_in_any_layout():
    """The bisection over int32 keys against a sort of the same scores: negative and positive values, exact ties,
    ineligible entries, a channels_last layer (CUDA's layout) and a layer with nothing eligible."""
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        scores = {"conv": torch.randn(8, 4, 3, 3, generator=gen).contiguous(memory_format=torch.channels_last),
                  "fc": torch.randn(10, 32, generator=gen).round(decimals=1),  # many exact ties
                  "dead": torch.randn(5, generator=gen)}
        eligible = {k: (torch.rand(v.shape, generator=gen) > 0.3).float() for k, v in scores.items()}
        eligible["dead"].zero_()
        total = sum(int(e.sum()) for e in eligible.values())
        keep = int(torch.randint(1, total + 5, (1,), generator=gen))
        mask = global_topk(scores, keep, eligible=eligible, min_per_layer=0)
        kept = torch.cat([mask[k].flatten() for k in scores])
        flat = torch.cat([scores[k].flatten() for k in scores])
        ok = torch.cat([eligible[k].flatten() for k in scores]) > 0
        assert int(kept.sum()) == min(keep, total), trial
        assert not (kept.bool() & ~ok).any()  # nothing ineligible is revived
        if 0 < int(kept.sum()) < total:  # every kept eligible score >= every dropped eligible one
            assert flat[kept.bool()].min() >= flat[~kept.bool() & ok].max(), trial
        assert mask["conv"].is_contiguous(memory_format=torch.channels_last)
        reference = torch.zeros_like(flat)
        reference[torch.sort(torch.where(ok, flat, -torch.inf), descending=True, stable=True).indices[:min(keep, total)]] = 1
        assert torch.equal((flat * kept)[kept.bool()].sort().values, (flat * reference)[reference.bool()].sort().values)


def test_kth_highest_key_through_the_sample_and_through_its_fallback():
    gen = torch.Generator().manual_seed(1)
    keys = [torch.randint(-1000, 1000, (300_000,), generator=gen, dtype=torch.int32),  # many ties
            torch.randint(-5, 5, (64, 32, 3, 3), generator=gen, dtype=torch.int32).contiguous(
                memory_format=torch.channels_last)]
    pooled = torch.cat([k.flatten() for k in keys]).sort(descending=True).values
    for k in (1, 7, 1000, 150_000, pooled.numel()):
        assert _kth_highest_key(keys, k, sample_size=4096) == int(pooled[k - 1]), k
    # A sample that sees only zeros while every other entry is 1: the bracket misses and bisection answers.
    blind = [(torch.arange(100_000) % 100 != 0).to(torch.int32)]  # the strided sample takes every 100th
    assert _kth_highest_key(blind, 50_000, sample_size=1000) == 1
    assert _kth_highest_key(blind, 99_500, sample_size=1000) == 0


def test_selection_benchmark_smoke_keeps_the_same_scores_as_the_pooled_topk():
    import subprocess
    import sys

    from conftest import REPO

    proc = subprocess.run([sys.executable, "-m", "benchmarks.selection", "--smoke"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "same scores kept: True" in proc.stdout, proc.stdout + proc.stderr
