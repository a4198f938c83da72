"""Compaction: lossless channel removal on every registered model, sparse storage, reload from the run directory."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
from torch import nn

from conftest import tanh_net
from gemdeploy.run.artifacts import RunArtifacts
from gemdeploy.sparsity.channels import build_graph, channel_groups
from gemdeploy.compact.compaction import compact_model, compact_run, load_compacted_model
from gemdeploy.data import load_data
from gemdeploy.errors import GemdeployError
from gemdeploy.sparsity.masks import Mask, prunable_weights
from gemdeploy.models import MODELS, build_model
from gemdeploy.compact.sparse_store import load_sparse, save_sparse

SHAPE = (1, 16, 16)  # real MNIST digits, downsampled so that every model stays fast on 2 cores


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """8 real MNIST test images at 16x16."""
    x, _ = next(iter(load_data("mnist5k").test.batches(8)))
    return torch.nn.functional.interpolate(x, size=SHAPE[1:], mode="bilinear", align_corners=False)


def _kill_channels(model: nn.Module, gen: torch.Generator, frac: float = 0.4) -> list[str]:
    """Zero whole channels coherently across each coupled group (every producer row: dead), or every
    consumer column (unread), plus 50% random weights; returns the roots of the groups touched."""
    graph = build_graph(model, SHAPE)
    touched = []
    with torch.no_grad():
        for i, cg in enumerate(channel_groups(model, graph)):
            chans = torch.nonzero(torch.rand(cg.size, generator=gen) < frac).flatten()
            if len(chans) == 0:
                continue
            touched.append(cg.root)
            unread = i % 3 == 2
            for it in cg.group.items:
                mod = it.dep.target.module
                if not isinstance(mod, (nn.Conv2d, nn.Linear)):
                    continue
                is_out = "out_channels" in it.dep.handler.__name__
                roots = torch.as_tensor(it.root_idxs)
                idxs = torch.as_tensor(list(it.idxs))[torch.isin(roots, chans)]
                if is_out and not unread:
                    mod.weight[idxs] = 0
                elif not is_out and unread:
                    mod.weight[:, idxs] = 0
        for w in prunable_weights(model).values():
            w.mul_((torch.rand(w.shape, generator=gen) < 0.5).float())
    return touched


def _settle_bn(model: nn.Module, x: torch.Tensor) -> None:
    """Real BatchNorm statistics: a few training-mode passes (a dead channel keeps running mean 0)."""
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


@pytest.mark.parametrize("name", MODELS.names())
def test_compaction_is_exact_for_every_model(name, digits):
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    model = build_model(name, SHAPE, 10)
    _kill_channels(model, gen)
    _settle_bn(model, digits)
    compacted, steps = compact_model(model, SHAPE, round_to=8)
    with torch.no_grad():
        ref, out = model(digits), compacted(digits)
    assert (ref - out).abs().max() <= 1e-5 * ref.abs().max()
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in compacted.parameters())
    assert steps and after < 0.9 * before, (name, before, after)
    # Every layer whose channels changed keeps multiples of 8.
    old = dict(model.named_modules())
    for lname, mod in compacted.named_modules():
        if isinstance(mod, nn.Conv2d) and mod.out_channels != old[lname].out_channels:
            assert mod.out_channels % 8 == 0, (lname, mod.out_channels)


def test_residual_stage_channels_are_removed_only_together(digits):
    gen = torch.Generator().manual_seed(2)
    model = build_model("resnet20", SHAPE, 10)
    graph = build_graph(model, SHAPE)
    stage = next(cg for cg in channel_groups(model, graph) if cg.root == "conv1")  # stem + stage-1 residual adds
    with torch.no_grad():
        for k, rows in stage.producers:
            dict(model.named_parameters())[k][rows[:8]] = 0  # channels 0-7 dead in every producer
        model.layers[0].conv2.weight[8:16] = 0  # 8-15 dead in one producer only: the sum still carries them
    _settle_bn(model, torch.randn(8, *SHAPE, generator=gen))
    compacted, _ = compact_model(model, SHAPE, round_to=1)
    assert compacted.conv1.out_channels == 8
    assert compacted.layers[0].conv2.out_channels == 8 and compacted.layers[2].conv1.in_channels == 8
    with torch.no_grad():
        ref, out = model(digits), compacted(digits)
    assert (ref - out).abs().max() <= 1e-5 * ref.abs().max()


def test_batchnorm_shift_keeps_a_zero_channel_alive(digits):
    model = build_model("conv4", SHAPE, 10, affine_bn=True)
    conv, bn = model[0][0], model[0][1]
    with torch.no_grad():
        conv.weight[:16] = 0  # 16 zero filters ...
        bn.bias.zero_()
        bn.bias[0] = 0.5  # ... but channel 0's BatchNorm shift would output a constant 0.5
    model.eval()
    compacted, _ = compact_model(model, SHAPE, round_to=1)
    assert compacted[0][0].out_channels == 64 - 15
    with torch.no_grad():
        ref, out = model(digits), compacted(digits)
    assert (ref - out).abs().max() <= 1e-5 * ref.abs().max()
    # A nonzero running mean leaks -mean/std the same way.
    model2 = build_model("conv4", SHAPE, 10)
    with torch.no_grad():
        model2[0][0].weight[:16] = 0
        model2[0][1].running_mean[3] = 0.2
    compacted2, _ = compact_model(model2.eval(), SHAPE, round_to=1)
    assert compacted2[0][0].out_channels == 64 - 15


def test_round_to_keeps_multiples(digits):
    model = build_model("conv4", SHAPE, 10)
    with torch.no_grad():
        model[0][0].weight[:13] = 0
    model.eval()
    assert compact_model(model, SHAPE, round_to=8)[0][0][0].out_channels == 56  # 51 kept -> rounded up to 56
    assert compact_model(model, SHAPE, round_to=1)[0][0][0].out_channels == 51
    assert compact_model(model, SHAPE, round_to=64)[0][0][0].out_channels == 64
    with pytest.raises(GemdeployError, match="round-to"):
        compact_model(model, SHAPE, round_to=0)


def test_no_dead_channels_leaves_shapes_unchanged():
    torch.manual_seed(3)
    model = build_model("resnet20", SHAPE, 10)
    Mask({k: (torch.rand_like(w) < 0.5).float() for k, w in prunable_weights(model).items()}).apply_(model)
    compacted, steps = compact_model(model.eval(), SHAPE, round_to=8)
    assert steps == []
    assert {k: v.shape for k, v in compacted.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_sparse_storage_is_exact_and_tracks_nonzeros(tmp_path):
    gen = torch.Generator().manual_seed(4)
    dense = torch.randn(256, 256, 3, 3, generator=gen)
    sparse = dense * (torch.rand(dense.shape, generator=gen) < 0.014)
    half = dense * (torch.rand(dense.shape, generator=gen) < 0.5)
    tensors = {"sparse": sparse, "half": half, "dense": dense, "ints": torch.arange(10), "tiny": torch.zeros(3)}
    save_sparse(tmp_path / "w.safetensors", tensors)
    back = load_sparse(tmp_path / "w.safetensors")
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    save_sparse(tmp_path / "s.safetensors", {"w": sparse})
    size = (tmp_path / "s.safetensors").stat().st_size
    assert size <= 0.04 * dense.numel() * 4  # 1.4% density: values + int32 indices ~ 2.8% of dense bytes
    (tmp_path / "bad.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(GemdeployError, match="corrupt"):
        load_sparse(tmp_path / "bad.safetensors")


def _copy_minimal(src, dst):
    """A copy of the run holding only what loading the compacted model may need."""
    dst.mkdir()
    for name in ("config.json", "model.json", "compact.json", "compact.safetensors"):
        shutil.copy(src / name, dst / name)
    return dst


@pytest.mark.slow
def test_mine_compacts_and_the_run_reloads_from_its_directory_alone(conv_run, tmp_path):
    art = RunArtifacts.open(conv_run)
    record = art.run.read_json("compact.json")
    assert record["after"]["nonzero_params"] <= record["before"]["nonzero_params"]
    assert record["file_bytes"]["compact"] < record["file_bytes"]["dense"]
    assert {"layer", "in_before", "in_after", "out_before", "out_after", "density_after", "nm_holds"} <= set(record["layers"][0])
    summary = art.summary()
    assert summary["compaction"]["after"]["params"] == record["after"]["params"]
    ref = art.finetuned_model()
    art.mask().apply_(ref)
    loaded = load_compacted_model(RunArtifacts.open(_copy_minimal(conv_run, tmp_path / "copy")))
    assert not loaded.training
    x, _ = next(iter(art.data().test.batches(32)))  # the run's own real test images
    with torch.no_grad():
        a, b = ref(x), loaded(x)
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()


def test_load_without_compaction_or_with_corrupt_files_fails_cleanly(conv_run, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.json"):
        shutil.copy(conv_run / name, bare / name)
    with pytest.raises(GemdeployError, match="not been compacted"):
        load_compacted_model(RunArtifacts.open(bare))
    broken = _copy_minimal(conv_run, tmp_path / "broken")
    (broken / "compact.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(GemdeployError, match="corrupt"):
        load_compacted_model(RunArtifacts.open(broken))


def test_compact_run_is_deterministic(conv_run, tmp_path):
    copy = tmp_path / "again"
    shutil.copytree(conv_run, copy)
    first = RunArtifacts.open(copy).run.read_json("compact.json")
    again = compact_run(RunArtifacts.open(copy), first["round_to"])
    assert again["steps"] == first["steps"] and again["after"] == first["after"]


def test_compaction_keeps_a_2_4_pattern_aligned():
    from gemdeploy.sparsity.nm import nm_mask_from_scores, satisfies_nm

    torch.manual_seed(5)
    model = build_model("conv4", SHAPE, 10)
    with torch.no_grad():
        w = model[0][3].weight  # reads the first conv's 64 channels
        w.mul_(nm_mask_from_scores(torch.rand_like(w), 2, 4))
        model[0][0].weight[[1, 2, 3, 4, 5, 6, 7, 8, 9]] = 0  # 9 dead channels; only 4-7 form an aligned block
    model.eval()
    free, _ = compact_model(model, SHAPE, round_to=1)
    assert free[0][3].in_channels == 55 and not satisfies_nm(free[0][3].weight, 2, 4)  # shifted groups
    aligned, _ = compact_model(model, SHAPE, round_to=1, nm=(2, 4))
    assert aligned[0][3].in_channels == 60 and satisfies_nm(aligned[0][3].weight, 2, 4)


# --- layers Torch-Pruning needs help with (issue 22) --------------------------------------------------------------
class _GroupedBlock(nn.Module):
    """RegNet's layout: 1x1 conv, a 3x3 conv in 4 groups, 1x1 conv, with affine BatchNorm."""

    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(1, 16, 1), nn.BatchNorm2d(16)
        self.b, self.bn_b = nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.BatchNorm2d(16)
        self.c = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.bn_a(self.a(x)))
        x = torch.relu(self.bn_b(self.b(x)))
        return self.fc(torch.relu(self.c(x)).mean((2, 3)))


class _Shuffled(nn.Module):
    """ShuffleNet's channel shuffle (view, transpose, view) between two convs."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.a(x))
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        x = torch.relu(self.c(torch.relu(self.b(x))))
        return self.fc(x.mean((2, 3)))


def test_grouped_conv_channels_go_by_whole_columns_across_its_blocks(digits):
    from gemdeploy.sparsity.channels import analyze

    torch.manual_seed(0)
    model = _GroupedBlock()
    _, groups = analyze(model, SHAPE)
    space = next(g for g in groups if g.root == "a")
    assert space.tile == 4 and space.units == 4  # 16 channels in 4 blocks of the grouped conv
    with torch.no_grad():
        for c in (1, 5, 9, 13):  # position 1 of every block: a whole column
            model.a.weight[c] = 0
            model.a.bias[c] = 0
            model.bn_a.bias[c] = 0
        model.a.weight[2] = 0  # one channel of one block only: cannot go alone
        model.a.bias[2] = 0
        model.bn_a.bias[2] = 0
    _settle_bn(model, digits)
    compacted, steps = compact_model(model, SHAPE, round_to=1)
    assert compacted.b.groups == 4 and compacted.b.in_channels == 12 and compacted.a.out_channels == 12
    with torch.no_grad():
        ref, out = model(digits), compacted(digits)
    assert (ref - out).abs().max() <= 1e-5 * ref.abs().max()


def test_a_grouped_conv_keeps_two_outputs_per_block_while_its_blocks_read_several(digits):
    """resnext101_32x8d: when all but one output per block of a grouped conv is dead, removing them would leave
    groups == out_channels != in_channels, a conv Torch-Pruning takes for depthwise (and the next pass indexed out of
    range). Two outputs per block stay; the rest compacts, logits exact."""
    torch.manual_seed(0)
    model = _GroupedBlock()
    with torch.no_grad():
        for c in range(16):
            if c % 4:  # positions 1..3 of every block of b's output
                model.b.weight[c] = 0
                model.b.bias[c] = 0
                model.bn_b.bias[c] = 0
    _settle_bn(model, digits)
    compacted, steps = compact_model(model, SHAPE, round_to=1)
    assert steps and compacted.b.groups == 4 and compacted.b.in_channels == 16 and compacted.b.out_channels == 8
    with torch.no_grad():
        ref, out = model(digits), compacted(digits)
    assert (ref - out).abs().max() <= 1e-5 * ref.abs().max()


def test_a_grouped_conv_whose_inputs_go_to_one_per_block_does_not_become_depthwise(digits):
    """Its inputs compact to one per block in one pass; were its outputs also allowed down to one per block, it
    would become depthwise after Torch-Pruning's graph was built as an ordinary conv, and the next pass would prune
    it wrongly (a model that cannot run)."""
    torch.manual_seed(0)
    model = _GroupedBlock()
    with torch.no_grad():
        for c in range(16):
            if c % 4:  # positions 1..3 of every block of a's output and of b's output
                for conv, bn in ((model.a, model.bn_a), (model.b, model.bn_b)):
                    conv.weight[c] = 0
                    conv.bias[c] = 0
                    bn.bias[c] = 0
        model.b.weight[0] = 0  # and one more output of b
        model.b.bias[0] = 0
        model.bn_b.bias[0] = 0
    _settle_bn(model, digits)
    compacted, _ = compact_model(model, SHAPE, round_to=1)
    assert (compacted.b.in_channels, compacted.b.out_channels, compacted.b.groups) == (4, 8, 4)
    with torch.no_grad():
        ref, out = model(digits), compacted(digits)
    assert (ref - out).abs().max() <= 1e-5 * ref.abs().max()


class _OneOutputPerGroup(nn.Module):
    """A conv with groups == out_channels != in_channels from the start (4 inputs per output)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 4, 3, padding=1, groups=4)
        self.c = nn.Conv2d(4, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.b(torch.relu(self.a(x))))
        return self.fc(torch.relu(self.c(x)).mean((2, 3)))


def test_a_conv_torch_pruning_would_take_for_depthwise_is_left_whole_and_the_rest_compacts(digits):
    from gemdeploy.sparsity.channels import analyze

    torch.manual_seed(0)
    model = _OneOutputPerGroup()
    _, groups = analyze(model, SHAPE)
    assert {g.root for g in groups} == {"c"}  # a's and b's channel spaces both touch b: left whole
    with torch.no_grad():
        model.a.weight[:4] = 0
        model.a.bias[:4] = 0
        model.c.weight[:3] = 0
        model.c.bias[:3] = 0
    compacted, _ = compact_model(model, SHAPE, round_to=1)
    assert compacted.a.out_channels == 16 and compacted.b.out_channels == 4 and compacted.c.out_channels == 5
    with torch.no_grad():
        ref, out = model(digits), compacted(digits)
    assert (ref - out).abs().max() <= 1e-5 * ref.abs().max()


def test_a_channel_shuffle_leaves_its_groups_whole_and_the_rest_compacts(digits):
    from gemdeploy.sparsity.channels import analyze

    torch.manual_seed(0)
    model = _Shuffled()
    _, groups = analyze(model, SHAPE)
    roots = {g.root for g in groups}
    assert "a" not in roots and "b" in roots  # a's channels pass through the shuffle; b -> c does not
    with torch.no_grad():
        model.a.weight[:3] = 0
        model.a.bias[:3] = 0
        model.b.weight[:4] = 0
        model.b.bias[:4] = 0
    compacted, steps = compact_model(model.eval(), SHAPE, round_to=1)
    assert compacted.a.out_channels == 8 and compacted.b.out_channels == 4
    with torch.no_grad():
        ref, out = model(digits), compacted(digits)
    assert (ref - out).abs().max() <= 1e-5 * ref.abs().max()


def test_channel_analysis_over_budget_is_refused_or_left_whole(monkeypatch, digits):
    import time

    from gemdeploy.sparsity import channels

    with pytest.raises(channels.ChannelAnalysisError, match="CPU seconds"):
        with channels.analysis_budget(seconds=0.3):
            end = time.process_time() + 30
            while time.process_time() < end:  # a stand-in for Torch-Pruning recursing without end
                pass
    with pytest.raises(channels.ChannelAnalysisError, match="GiB"):
        with channels.analysis_budget(memory_bytes=64 << 20):
            import mmap

            # A fresh mapping whose pages are each written: heap allocations can be served from memory the process
            # already holds (after earlier tests freed theirs), and then resident memory does not grow.
            hoard = mmap.mmap(-1, 160 << 20)
            try:
                for i in range(0, len(hoard), 4096):
                    hoard[i] = 1
                for _ in range(100):  # up to 10 s for the 0.1 s check to run, however loaded the machine
                    time.sleep(0.1)
            finally:
                hoard.close()
    monkeypatch.setattr(channels, "ANALYSIS_SECONDS", 0.0)
    model = _GroupedBlock()
    with pytest.raises(channels.ChannelAnalysisError):
        compact_model(model, SHAPE, round_to=1)
    mask = Mask({k: torch.zeros_like(w) for k, w in prunable_weights(model).items()})
    assert channels.killed_channel_params(model, SHAPE, mask) == {}  # no channel removable: nothing to hold at zero


class _UntraceableOnZeros(nn.Module):
    """Traced on an all-zero image (as the channel analysis traces), it fails; it counts its traces."""

    traces = 0

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        type(self).traces += 1
        if not x.any():
            raise ValueError("needs a real image")
        return self.conv(x).mean((2, 3))


def test_an_architecture_the_analysis_failed_on_is_not_analyzed_again_in_the_process():
    """A run asks for the analysis twice (the ticket's killed channels, then compaction): a failure, which may have
    spent the whole budget, is remembered for the architecture, and the second ask fails at once, as the first."""
    from gemdeploy.sparsity import channels

    with pytest.raises(channels.ChannelAnalysisError, match="cannot trace it: ValueError") as first:
        channels.build_graph(_UntraceableOnZeros(), (1, 8, 8))
    traced = _UntraceableOnZeros.traces
    with pytest.raises(channels.ChannelAnalysisError) as again:
        compact_model(_UntraceableOnZeros(), (1, 8, 8), round_to=1)  # another instance, the same architecture
    assert str(again.value) == str(first.value) and _UntraceableOnZeros.traces == traced
    with pytest.raises(channels.ChannelAnalysisError):  # another input shape is another question: traced anew
        channels.build_graph(_UntraceableOnZeros(), (1, 9, 9))
    assert _UntraceableOnZeros.traces > traced


def test_weights_saved_without_version_metadata_load_into_mnasnet(tmp_path):
    from gemdeploy.models import build_model, load_weights

    model = build_model("torchvision:mnasnet0_5", (3, 32, 32), 10)
    save_sparse(tmp_path / "w.safetensors", model.state_dict())  # safetensors keeps no per-module versions
    state = load_sparse(tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="version"):
        build_model("torchvision:mnasnet0_5", (3, 32, 32), 10).load_state_dict(state)  # what torch alone does
    fresh = build_model("torchvision:mnasnet0_5", (3, 32, 32), 10)
    load_weights(fresh, state)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


def test_the_logit_check_tells_a_wrong_compaction_from_a_network_that_amplifies_rounding():
    from gemdeploy.compact.compaction import check_same_logits
    from gemdeploy.numerics import rounding_sensitivity

    tame, chaotic = tanh_net(depth=6), tanh_net(depth=40)
    x = torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        scale = float(chaotic(x).abs().max())
    assert rounding_sensitivity(tame, x) < 1e-4 * scale < rounding_sensitivity(chaotic, x)
    wrong = copy.deepcopy(tame)
    with torch.no_grad():
        wrong[1].weight[0] = 0  # a channel that was not dead, removed
    with pytest.raises(GemdeployError, match="does not map a zero channel to zero"):
        check_same_logits(tame, wrong, SHAPE, "compacting it")
    rounded = copy.deepcopy(chaotic)
    with torch.no_grad():  # a few rounding steps: only a network that amplifies them notices
        rounded[1].weight.mul_(1 + 4 * torch.finfo(torch.float32).eps)
    with pytest.raises(GemdeployError, match="moves by one rounding step"):
        check_same_logits(chaotic, rounded, SHAPE, "compacting it")
    assert check_same_logits(chaotic, copy.deepcopy(chaotic), SHAPE, "copying it")[0] == 0.0


def test_rounding_sensitivity_is_measured_in_eval_mode_and_leaves_the_mode_alone():
    """With dropout active two forwards would differ by far more than rounding; in eval mode a tame network moves by
    rounding only (more than nothing, far less than 1e-4)."""
    from gemdeploy.numerics import rounding_sensitivity

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(256, 64, bias=False), nn.ReLU(), nn.Linear(64, 10, bias=False),
                        nn.Dropout(0.5)).train()
    x = torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(0))
    assert 0.0 < rounding_sensitivity(net, x) < 1e-4 and net.training
