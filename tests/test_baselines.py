"""The baseline methods, IMP's levels, SynFlow's data-freeness and the sanity checks, on real data."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import assert_clean_error, cli
from gemdeploy.run.config import MineConfig
from gemdeploy.mine.context import RunContext
from gemdeploy.data import load_data
from gemdeploy.data.splits import DataBundle
from gemdeploy.models.init import initialize
from gemdeploy.sparsity.masks import Mask, keep_count, prunable_weights
from gemdeploy.mine.methods import METHODS
from gemdeploy.mine.methods.imp import level_counts
from gemdeploy.models import build_model
from gemdeploy.progress import Reporter
from gemdeploy.run.rundir import RunDir
from gemdeploy.mine.sanity import invert_mask, shuffle_mask
from gemdeploy.train.loop import Hardware

EXTREME = 0.9941  # 0.59% density
CONV_CHECKED = ("magnitude", "snip", "grasp", "smart-ratio")  # synflow on conv4: ~2 min on a busy box; lenet300 covers it
# Every method in the registry but Gem-Miner (its own tests: the CLI tickets of conftest, test_training) and dense
# (no pruning): a new method is checked here the moment it is registered.
BASELINES = [m for m in METHODS.names() if m not in ("gem-miner", "dense")]


def context(tmp_path, method: str, model: str, sparsity: float, data: DataBundle | None = None, **cfg) -> RunContext:
    data = data if data is not None else load_data("digits")
    config = MineConfig(model=model, data="digits", method=method, sparsity=sparsity, epochs=1, finetune_epochs=1,
                        device="cpu", **cfg).resolve()
    torch.manual_seed(config.seed)
    net = initialize(build_model(model, data.input_shape, data.num_classes), config.init)
    run = RunDir.create(tmp_path / f"{method}-{model}")
    return RunContext(config, data, Hardware.resolve("cpu"), run, Reporter(enabled=False),
                      {k: v.clone() for k, v in net.state_dict().items()})


# conv4 adds conv layers: checked for the methods whose scores depend on the layer type.
@pytest.mark.parametrize("method,model", [(m, "lenet300") for m in BASELINES] + [(m, "conv4") for m in CONV_CHECKED])
def test_mask_has_the_density_and_keeps_every_layer_alive(tmp_path, method, model):
    # open_lth leaves LeNet's output layer dense; on the 8x8 digits its 1,000 weights exceed a 0.59% budget.
    extra = {"imp_prune_output": True} if method.startswith("imp") else {}
    ctx = context(tmp_path, method, model, EXTREME, **extra)
    ticket = METHODS.get(method)().find_ticket(ctx)
    mask = ticket.mask
    total = sum(w.numel() for w in prunable_weights(ctx.fresh_model()).values())
    assert mask.num_total() == total
    assert mask.num_kept() == keep_count(total, 1 - EXTREME)  # exactly the requested density
    assert set(torch.unique(torch.cat([m.flatten() for m in mask.values()])).tolist()) <= {0.0, 1.0}
    for name, m in mask.items():
        assert int(m.count_nonzero()) >= 1, f"{method} collapsed layer {name}"
    if method in ("random", "edge-popup"):  # the same density in every layer, up to rounding
        for name, d in mask.layer_densities().items():
            assert abs(d - (1 - EXTREME)) * mask[name].numel() <= 1.0, (name, d)


@pytest.mark.slow
def test_imp_levels_follow_powers_of_0_8_and_reuse_is_exact(tmp_path):
    assert level_counts(1000, 0.5) == [1000, 800, 640, 512, 500]
    total = 100_000
    counts = level_counts(total, 0.0144)  # 0.8^19 = 1.441%: lands there, no extra round for a few weights
    assert len(counts) == 20 and counts[-1] == keep_count(total, 0.0144)
    assert counts[:-1] == [keep_count(total, 0.8**n) for n in range(19)]

    deep = tmp_path / "imp-95"
    base = ["mine", "--model", "lenet300", "--data", "digits", "--method", "imp", "--epochs", "1",
            "--finetune-epochs", "1", "--quiet"]
    cli(*base, "--sparsity", "0.95", "--out", deep, check=True)
    summary = json.loads((deep / "summary.json").read_text())
    records = [json.loads(line) for line in (deep / "metrics.jsonl").read_text().splitlines()]
    levels = [r for r in records if r["phase"] == "imp"]
    total = summary["prunable_weights"]
    assert [r["level"] for r in levels] == list(range(14))  # 0.8^13 = 5.5% > 5% >= 0.8^14
    for r in levels:
        assert r["kept_weights"] == keep_count(total, 0.8 ** r["level"])
        assert 0.0 <= r["val_acc"] <= 1.0
    times = [r["cumulative_time_s"] for r in levels]
    assert times == sorted(times) and times[0] > 0
    assert summary["time_to_ticket_s"] == pytest.approx(times[-1])
    assert summary["kept_weights"] == keep_count(total, 0.05)
    # Every round's training is in the metrics too, as its own phase.
    assert {r["phase"] for r in records} >= {f"imp-round-{n}" for n in range(14)}

    # A shallower target reusing those levels gives exactly the mask a fresh IMP run finds, without retraining.
    reused, fresh = tmp_path / "imp-80-reused", tmp_path / "imp-80-fresh"
    cli(*base, "--sparsity", "0.8", "--imp-from", deep, "--out", reused, check=True)
    cli(*base, "--sparsity", "0.8", "--out", fresh, check=True)
    a, b = Mask.load(reused / "mask.safetensors"), Mask.load(fresh / "mask.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a.num_kept() == keep_count(total, 0.2)
    reused_records = [json.loads(line) for line in (reused / "metrics.jsonl").read_text().splitlines()]
    assert not any(r["phase"].startswith("imp-round") for r in reused_records)  # nothing retrained
    assert json.loads((reused / "summary.json").read_text())["ticket"]["rounds"] == 8

    bad = cli(*base, "--sparsity", "0.8", "--seed", "3", "--imp-from", deep, "--out", tmp_path / "bad")
    assert_clean_error(bad, "seed")


class ForbiddenSplit:
    """A data split that fails the test if anything reads it."""

    def __len__(self):
        raise AssertionError("SynFlow asked for the size of a data split")

    def batches(self, *args, **kwargs):
        raise AssertionError("SynFlow read a data split")

    def to(self, device, channels_last=False):
        return self


@pytest.mark.slow
def test_synflow_needs_no_data(tmp_path):
    real = load_data("mnist5k")
    no_data = DataBundle("no-data", real.input_shape, real.num_classes, ForbiddenSplit(), ForbiddenSplit(),
                         ForbiddenSplit())
    ctx = context(tmp_path, "synflow", "lenet300", 0.986, data=no_data)
    ticket = METHODS.get("synflow")().find_ticket(ctx)
    total = ticket.mask.num_total()
    assert ticket.mask.num_kept() == keep_count(total, 0.014)
    # The same ticket from a context holding the real data: the data played no part.
    again = METHODS.get("synflow")().find_ticket(context(tmp_path / "b", "synflow", "lenet300", 0.986, data=real))
    assert all(torch.equal(ticket.mask[k], again.mask[k]) for k in ticket.mask)
    # And the scores are not trivial: SynFlow keeps a balanced share of every layer (no collapse), unlike
    # magnitude at init, which on a signed-constant init starves the widest layer.
    assert min(int(m.count_nonzero()) for m in ticket.mask.values()) > 50


def test_sanity_transforms_preserve_each_layer_density(tmp_path):
    ctx = context(tmp_path, "snip", "conv4", 0.95)
    ticket = METHODS.get("snip")().find_ticket(ctx)
    mask, scores = ticket.mask, ticket.scores
    shuffled = shuffle_mask(mask, torch.Generator().manual_seed(0))
    inverted = invert_mask(mask, scores)
    for k, m in mask.items():
        assert int(shuffled[k].count_nonzero()) == int(m.count_nonzero())
        assert int(inverted[k].count_nonzero()) == int(m.count_nonzero())
        if 0 < int(m.count_nonzero()) < m.numel() // 2:
            assert not torch.equal(shuffled[k], m)  # the positions really move
            assert int((inverted[k] * m).sum()) == 0  # the lowest scores are not the highest ones
            assert scores[k][inverted[k] > 0].max() <= scores[k][m > 0].min()


@pytest.mark.slow
@pytest.mark.parametrize("method", [m for m in BASELINES if m != "imp"])  # imp's levels: test_bench's imp_run
def test_every_method_through_the_cli_on_mnist(tmp_path, method):
    sparsity = 0.5 if method == "imp-ft" else EXTREME  # IMP-FT: 4 rounds here; 0.59% is checked in-process above
    out = tmp_path / method
    cli("mine", "--model", "lenet300", "--data", "mnist5k", "--method", method, "--sparsity", str(sparsity),
            "--epochs", "1", "--finetune-epochs", "2", "--quiet", "--out", out, check=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method
    assert summary["kept_weights"] == keep_count(summary["prunable_weights"], 1 - sparsity)
    assert 0.1 < summary["test_acc"] <= 1.0  # above chance after two fine-tuning epochs
    assert summary["time_to_ticket_s"] >= 0 and summary["total_time_s"] >= summary["finetune_time_s"]
    assert (out / "scores.safetensors").is_file() == METHODS.get(method).has_scores


@pytest.mark.slow
def test_sanity_through_the_cli(lenet_run, tmp_path):
    run = tmp_path / "ticket"
    shutil.copytree(lenet_run, run)
    proc = cli("sanity", run, "--quiet", check=True)
    for word in ("original", "shuffle", "reinit", "invert"):
        assert word in proc.stdout
    result = json.loads((run / "sanity.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert result["original"]["test_acc"] == summary["test_acc"]
    original = Mask.load(run / "mask.safetensors").layer_densities()
    assert set(result["checks"]) == {"shuffle", "reinit", "invert"}
    for name, check in result["checks"].items():
        assert check["layer_densities"] == pytest.approx(original, abs=0), name
        assert 0.0 <= check["test_acc"] <= 1.0
        assert check["delta_test_acc"] == pytest.approx(check["test_acc"] - summary["test_acc"])
        assert (run / "sanity" / name / "metrics.jsonl").is_file()
    assert not list(run.glob("sanity/*/checkpoint-*"))
    # A second call reuses the finished checks instead of training again.
    again = cli("sanity", run, "--quiet", "--json", check=True)
    assert json.loads(again.stdout)["checks"]["shuffle"]["test_acc"] == result["checks"]["shuffle"]["test_acc"]


def test_sanity_bad_input_is_one_clean_line(lenet_run, tmp_path):
    assert_clean_error(cli("sanity", tmp_path / "nope"), "not a gemdeploy run directory")
    assert_clean_error(cli("sanity", lenet_run, "--checks", "shuffle,bogus"), "unknown sanity check")
    dense = tmp_path / "dense"
    dense.mkdir()
    (dense / "config.json").write_text(json.dumps({"method": "dense", "model": "lenet300", "data": "mnist5k"}))
    (dense / "model.json").write_text(json.dumps({"model": "lenet300", "input_shape": [1, 28, 28], "num_classes": 10}))
    assert_clean_error(cli("sanity", dense), "summary.json")


def test_each_method_resolves_to_its_references_recipe():
    lenet = MineConfig(model="lenet300", data="mnist5k", method="imp").resolve(train_size=3500)
    assert lenet.init == "kaiming-normal"  # open_lth, not Gem-Miner's signed constant
    assert (lenet.imp_lr, lenet.imp_momentum, lenet.imp_weight_decay, lenet.imp_schedule) == (0.1, 0.0, 0.0, "constant")
    assert lenet.imp_rewind_iter == 0 and lenet.imp_prune_output is False  # open_lth: rewind to 0, fc unpruned
    r20 = MineConfig(model="resnet20", data="cifar10", method="imp", epochs=160).resolve(train_size=50_000)
    assert (r20.imp_lr, r20.imp_momentum, r20.imp_weight_decay, r20.imp_schedule) == (0.1, 0.9, 1e-4, "step")
    assert r20.imp_rewind_iter == 1000 and r20.imp_prune_output is True  # the authors' resnet20.yml
    short = MineConfig(model="resnet20", data="mnist5k", method="imp", epochs=5).resolve(train_size=3500)
    assert short.imp_rewind_iter == round(1000 * 5 * 27 / 62_400)  # the same 1.6% of a shorter round
    signed = [m for m in METHODS.names() if MineConfig(method=m).resolve().init == "signed-constant"]
    assert signed == ["gem-miner", "edge-popup"]  # the two references that mine scores over signed constants
    for method in METHODS.names():
        assert MineConfig(method=method).resolve().init == ("signed-constant" if method in signed else "kaiming-normal")
    assert MineConfig(method="imp", init="signed-constant", imp_lr=0.05).resolve().imp_lr == 0.05  # flags override


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_imp_ticket_trains_from_the_rewind_point_which_may_span_epochs(tmp_path):
    out = tmp_path / "imp"
    # 1,200 digits at batch 128: 9 iterations an epoch, so rewinding to iteration 50 spans six epochs.
    cli("mine", "--model", "lenet300", "--data", "digits", "--method", "imp", "--sparsity", "0.5", "--epochs", "1",
        "--finetune-epochs", "0", "--imp-rewind-iter", "50", "--quiet", "--out", out, check=True)
    from gemdeploy.files import load_metadata

    rewind_path = out / "imp-levels" / "rewind.safetensors"
    assert load_metadata(rewind_path)["iterations"] == "50"
    rewind, init = _tensors(rewind_path), _tensors(out / "init.safetensors")
    assert not torch.equal(rewind["1.weight"], init["1.weight"])  # really trained for 50 iterations
    mask, weights = Mask.load(out / "mask.safetensors"), _tensors(out / "weights.safetensors")
    for k, m in mask.items():  # zero fine-tuning epochs: the ticket is exactly the rewind weights times the mask
        assert torch.equal(weights[k], rewind[k] * m), k
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ticket_training"]["starts_from"] == "rewind point"
    assert "lr 0.1" in summary["ticket_training"]["recipe"] and summary["init"] == "kaiming-normal"
    assert summary["ticket_epochs"] == pytest.approx(summary["ticket"]["rounds"] * 1 + 50 / 9)


def test_imp_ft_ticket_trains_from_the_last_rounds_weights(tmp_path):
    out = tmp_path / "impft"
    cli("mine", "--model", "lenet300", "--data", "digits", "--method", "imp-ft", "--sparsity", "0.5", "--epochs", "1",
        "--finetune-epochs", "0", "--quiet", "--out", out, check=True)
    levels = sorted((out / "imp-levels").glob("level-*.safetensors"))
    last = {k[8:]: v for k, v in _tensors(levels[-1]).items() if k.startswith("trained.")}
    mask, weights = Mask.load(out / "mask.safetensors"), _tensors(out / "weights.safetensors")
    for k, m in mask.items():
        assert torch.equal(weights[k], last[k] * m), k
    assert json.loads((out / "summary.json").read_text())["ticket_training"]["starts_from"] == "last round"


@pytest.mark.slow
def test_imp_on_its_reference_recipe_stays_far_above_chance_at_extreme_sparsity(tmp_path):
    out = tmp_path / "imp"
    cli("mine", "--model", "lenet300", "--data", "mnist5k", "--method", "imp", "--sparsity", "0.986", "--epochs", "2",
        "--finetune-epochs", "2", "--quiet", "--out", out, check=True)
    summary = json.loads((out / "summary.json").read_text())
    # 19 steps of 20% reach 1.44%; a partial 20th lands on 1.4%
    assert summary["ticket"]["rounds"] == 20 and summary["ticket"]["unpruned_layers"] == ["7.weight"]
    assert summary["test_acc"] > 0.7, summary["test_acc"]  # the handicapped IMP of 0.1 ended near 0.45
    mask = Mask.load(out / "mask.safetensors")
    assert min(int(m.count_nonzero()) for m in mask.values()) > 10  # no layer starved by the init's scale


@pytest.mark.slow
def test_lam_auto_picks_the_best_lambda_on_the_validation_split(tmp_path):
    out = tmp_path / "auto"
    cli("mine", "--model", "lenet300", "--data", "digits", "--sparsity", "0.95", "--epochs", "4", "--finetune-epochs",
        "2", "--lam", "auto", "--quiet", "--out", out, check=True)
    summary = json.loads((out / "summary.json").read_text())
    search = summary["ticket"]["lam_search"]
    assert json.loads((out / "config.json").read_text())["method_options"]["lam"] == "auto"  # what the user asked for
    assert [r["lam"] for r in search["results"]] == search["grid"]
    best = max(r["val_acc"] for r in search["results"])
    chosen = next(r for r in search["results"] if r["lam"] == search["chosen"])
    assert chosen["val_acc"] == best and summary["ticket"]["lam"] == search["chosen"]
    # the search is part of finding the ticket: its epochs count
    assert summary["ticket_epochs"] == 4 + sum(r["epochs"] for r in search["results"])
    assert all((out / "lam-search" / f"{lam:g}" / "result.json").is_file() for lam in search["grid"])
