"""`gemdeploy tune`: the search's decisions on given figures, and a real tune on the offline digits through the CLI."""

from __future__ import annotations

import json

import pytest

from conftest import assert_clean_error, cli
from gemdeploy import stats
from gemdeploy.errors import GemdeployError
from gemdeploy.tune.config import parse_budget
from gemdeploy.tune.runner import drop_interval, resolution_note, speedless_layers
from gemdeploy.tune.search import ROUNDINGS, Candidate, Goal, coarse_grid, pareto_front, patterns_for, pick, refine


def _opt(name, val, ms, speedup=None, backend="onnxruntime-cpu"):
    return {"name": name, "backend": backend, "val_acc": val, "latency_ms": ms, "speedup": speedup}


def test_budget_durations():
    assert parse_budget("30m") == 1800 and parse_budget("2h") == 7200 and parse_budget("1h30m") == 5400
    assert parse_budget("90s") == 90 and parse_budget("45") == 45
    for bad in ("soon", "30x", "m30", ""):
        with pytest.raises(GemdeployError, match="not a duration"):
            parse_budget(bad)


def test_patterns_follow_what_the_backends_can_speed_up():
    assert patterns_for(["onnxruntime-cpu"]) == ["channel"]  # ONNX Runtime multiplies the zeros
    assert patterns_for(["onnxruntime-cpu", "sparse-cpu"]) == ["channel", "unstructured"]
    assert patterns_for(["tensorrt"]) == ["channel", "2:4"]
    assert patterns_for(["onnxruntime-cpu"], ["unstructured"]) == ["unstructured"]
    # Only what the ticket method can find: IMP prunes weights, not channels.
    assert patterns_for(["onnxruntime-cpu", "sparse-cpu"], None, ("unstructured",)) == ["unstructured"]
    assert patterns_for(["onnxruntime-cpu"], None, ("unstructured",)) == []
    grid = coarse_grid(["channel", "unstructured"], 0.01)
    assert [(c.pattern, c.sparsity) for c in grid[:4]] == [("channel", 0.5), ("unstructured", 0.9),
                                                           ("channel", 0.75), ("unstructured", 0.95)]
    assert sorted(c.sparsity for c in grid if c.pattern == "unstructured") == [0.5, 0.8, 0.9, 0.95, 0.986]


def test_refinement_bisects_the_frontier_and_stops_at_its_resolution():
    assert refine("unstructured", 0.01, {0.5: True, 0.8: True, 0.9: False}, {0.5, 0.8, 0.9}) == 0.85
    assert refine("unstructured", 0.01, {0.5: True, 0.9: True}, {0.5, 0.9}) == pytest.approx(0.9475, abs=1e-3)
    assert refine("unstructured", 0.01, {0.5: True, 0.986: True}, {0.5, 0.986}) is None  # at the sparsity cap
    assert refine("channel", 0.01, {0.25: False, 0.5: False}, {0.25, 0.5}) == 0.125  # none met: go denser
    assert refine("unstructured", 0.01, {0.8: True, 0.81: False}, {0.8, 0.81}) is None  # within MIN_GAP
    assert refine("2:4", 0.01, {0.5: False}, {0.5}) is None  # pure 2:4 missed: nothing denser keeps the pattern
    assert refine("channel", 0.01, {}, set()) is None


def test_a_rounding_variant_is_named_apart_and_shares_its_ticket():
    c = Candidate("channel", 0.5, 0.01)
    r1 = Candidate("channel", 0.5, 0.01, 1)
    assert c.round_to == ROUNDINGS[0] and c.mined_as == c and c.name == "channel-s0.500-lr0.01"
    assert r1.name == "channel-s0.500-lr0.01-r1" and r1.mined_as == c


def test_the_validation_drop_has_its_interval_and_a_small_split_says_so():
    assert drop_interval(0.9, 0.9, None) is None  # synthetic data: no accuracy, no interval
    low, high = drop_interval(0.93, 0.94, 500)
    assert low < 1.0 < high and high - low > 4  # 500 images cannot tell a 1-point drop
    narrow = drop_interval(0.935, 0.94, 100_000)
    assert 0 < narrow[0] < 0.5 < narrow[1] < 1.0  # enough images: the 0.5-point drop is within 1 point, surely
    half = drop_interval(0.935, 0.94, 500)
    note = resolution_note({"val_acc": 0.935, "val_drop_interval": half}, 0.94, 500, 1.0)
    assert "500 images" in note and "validation images could" in note
    need = int(note.split("about ")[1].split(" validation")[0].replace(",", ""))

    def verdict(n):  # the pick's drop against the 1-point budget, with n validation images each
        return stats.judge(stats.unpaired_difference(0.935 * n, n, 0.94 * n, n))

    assert need > 500 and verdict(need) == "within" and verdict(need - 1) == "too small to tell"
    on_the_line = resolution_note({"val_acc": 0.93, "val_drop_interval": [low, high]}, 0.94, 500, 1.0)
    assert "sits on that line" in on_the_line  # a drop of exactly the budget: no split size decides it
    assert resolution_note({"val_acc": 0.93, "val_drop_interval": narrow}, 0.94, 100_000, 1.0) is None


def test_channels_pruning_cannot_remove_are_named(tmp_path):
    """A channel ticket compacted with a rounding above the layers' widths keeps every pruned channel: each such
    layer is named (tune warns about it); at the default rounding none is."""
    kept = tmp_path / "kept"
    cli("mine", "--model", "lenet300", "--data", "digits", "--pattern", "channel", "--sparsity", "0.5", "--epochs",
        "1", "--finetune-epochs", "1", "--round-to", "512", "--out", kept, "--quiet", check=True)
    named = speedless_layers(kept)
    assert {(d["layer"], d["round_to"]) for d in named} == {("1", 512), ("4", 512)}
    assert all(d["pruned"] > 0 for d in named)
    cli("compact", kept, "--round-to", "8", "--overwrite", "--quiet", check=True)
    assert speedless_layers(kept) == []


def test_pareto_front_and_the_pick_under_each_kind_of_goal():
    dense = _opt("dense", 0.90, 10.0, 1.0)
    a, b, c = _opt("a", 0.895, 5.0, 2.0), _opt("b", 0.88, 2.0, 5.0), _opt("c", 0.885, 4.0, 2.5)
    options = [dense, a, b, c]
    assert [o["name"] for o in pareto_front(options)] == ["b", "c", "a", "dense"]
    assert [o["name"] for o in pareto_front(options + [_opt("d", 0.87, 4.5)])][1] == "c"  # d: slower, worse than c
    fastest = pick(options, 0.90, Goal(max_drop=1.0))  # b and c drop more than a point
    assert fastest["meets_goal"] and fastest["option"]["name"] == "a"
    assert pick(options, 0.90, Goal(max_drop=3.0))["option"]["name"] == "b"
    assert pick(options, 0.90, Goal(max_drop=1.5))["option"]["name"] == "c"
    accurate = pick(options, 0.90, Goal(max_drop=5.0, target_speedup=2.2))
    assert accurate["meets_goal"] and accurate["option"]["name"] == "c"  # most accurate of b, c
    assert pick(options, 0.90, Goal(max_drop=5.0, target_latency_ms=4.5))["option"]["name"] == "c"
    miss = pick(options, 0.90, Goal(max_drop=0.1, target_speedup=10))
    assert not miss["meets_goal"] and miss["shortfall"] > 0 and "goal >= 10x" in miss["why"]


def test_bad_tune_input_is_one_line(tmp_path):
    base = ["tune", "--model", "lenet300", "--data", "digits", "--out", tmp_path / "t"]
    assert_clean_error(cli(*base), "--backend is needed")
    assert_clean_error(cli(*base, "--backend", "warp"), "unknown backend 'warp'")
    assert_clean_error(cli(*base, "--backend", "tensorrt"), "backend tensorrt is not available here")
    assert_clean_error(cli(*base, "--backend", "onnxruntime-cpu", "--budget", "soon"), "--budget")
    assert_clean_error(cli(*base, "--backend", "onnxruntime-cpu", "--target-speedup", "2",
                           "--target-latency-ms", "1"), "two goals")
    assert_clean_error(cli(*base, "--backend", "onnxruntime-cpu", "--resume"), "no tune to resume")
    assert_clean_error(cli(*base, "--backend", "onnxruntime-cpu", "--method", "imp"), "finds unstructured tickets only")
    assert not (tmp_path / "t" / "tune.json").exists()


@pytest.mark.slow
def test_a_real_tune_picks_on_validation_stops_at_its_budget_and_resumes(tmp_path):
    out = tmp_path / "tune"
    args = ["tune", "--model", "lenet300", "--data", "digits", "--backend", "onnxruntime-cpu", "--backend",
            "sparse-cpu", "--pattern", "channel", "--max-drop", "50", "--batch-size", "16", "--epochs", "1",
            "--finetune-epochs", "1", "--finetune-lr", "0.01", "--iters", "5", "--warmup", "1", "--out", out]
    first = json.loads(cli(*args, "--budget", "1s", "--json", check=True).stdout)  # the dense reference only
    assert first["stopped"] == "budget" and len(first["untried"]) == 3
    assert first["pick"]["name"] == "dense" and first["pick"]["meets_goal"]  # the best found, said plainly
    state = json.loads((out / "tune.json").read_text())
    assert not state["candidates"] and (out / "tune.png").read_bytes().startswith(b"\x89PNG")
    second = json.loads(cli(*args, "--budget", "1s", "--resume", "--json", check=True).stdout)
    assert second["untried"] == first["untried"]  # its budget was spent: nothing more, no error
    result = json.loads(cli(*args, "--budget", "20m", "--resume", "--json", check=True).stdout)
    state = json.loads((out / "tune.json").read_text())
    assert result["stopped"] == "search complete" and not result["untried"]
    assert {c["sparsity"] for c in state["candidates"].values()} >= {0.25, 0.5, 0.75}
    # The channel search ends by compacting its best candidate at the other roundings, each measured: same ticket
    # (same validation accuracy), another compaction.
    variants = [c for c in state["candidates"].values() if c["round_to"] != ROUNDINGS[0]]
    assert sorted(c["round_to"] for c in variants) == sorted(ROUNDINGS[1:])
    for v in variants:
        source = state["candidates"][Candidate(v["pattern"], v["sparsity"], v["finetune_lr"]).name]
        assert v["val_acc"] == source["val_acc"] and v["backends"]
        assert v["measured_in"] == source["measured_in"]  # timed beside its source, in one bench call
        assert json.loads((out / "candidates" / v["name"] / "compact.json").read_text())["round_to"] == v["round_to"]
    # Every validation drop carries its interval; digits' small validation split is said to be too small.
    assert all(o["val_drop_interval"][0] <= o["val_drop_points"] <= o["val_drop_interval"][1]
               for o in result["options"])
    assert result["val_images"] > 0 and "validation split" in (result["pick"]["resolution"] or "validation split")
    assert {o["name"] for o in result["options"]} >= {"dense", *first["untried"]}
    pick_ = result["pick"]
    # Chosen on validation: with a 50-point budget the fastest option wins, whatever its test accuracy.
    eligible = [o for o in result["options"] if o["val_drop_points"] <= 50]
    assert pick_["latency_ms"] == min(o["latency_ms"] for o in eligible) and pick_["meets_goal"]
    assert 0 <= pick_["pick_test_acc"] <= 1 and 0 <= pick_["dense_test_acc"] <= 1
    front = {(o["name"], o["backend"]) for o in result["pareto_front"]}
    assert (pick_["name"], pick_["backend"]) in front
    # Every candidate is an ordinary run that bench accepts.
    cand = out / "candidates" / pick_["name"] if pick_["name"] != "dense" else out / "dense"
    bench = json.loads(cli("bench", cand, "--against", out / "dense", "--backend", "onnxruntime-cpu",
                           "--batch-size", "4", "--iters", "2", "--warmup", "0", "--out", tmp_path / "b", "--json",
                           check=True).stdout)
    assert {r["run"] for r in bench["rows"]} == {cand.name, "dense"}
    # Another batch size re-measures the finished candidates instead of mining them again.
    again = json.loads(cli(*[a if a != "16" else "4" for a in args], "--budget", "20m", "--resume", "--json",
                           check=True).stdout)
    assert {o["name"] for o in again["options"]} >= {o["name"] for o in result["options"]}
    # (the rounding variants follow the fastest channel candidate at the new batch, which may be another one)
    assert json.loads((out / "tune.json").read_text())["options"]["batch_size"] == 4
    # A resumed tune keeps its search options.
    assert_clean_error(cli(*[a if a != "1" else "2" for a in args], "--resume"), "--epochs", "same search options")


@pytest.mark.slow
def test_imp_candidates_continue_one_chain_of_levels(tmp_path):
    """With --method imp every density comes from one chain: a candidate imports the levels of the sparsest IMP
    candidate already mined (the same trajectory) and trains only the rounds past them."""
    from gemdeploy.tune.config import TuneOptions
    from gemdeploy.tune.runner import Tune

    opts = TuneOptions(model="lenet300", data="digits", method="imp", backend=["sparse-cpu"], epochs=1,
                       finetune_epochs=1, iters=2, warmup=0).resolve()
    tune_ = Tune(opts, tmp_path / "t", resume=False, progress=lambda s: None)
    first = tune_.candidate(Candidate("unstructured", 0.8, 0.01))
    second = tune_.candidate(Candidate("unstructured", 0.9, 0.01))
    assert json.loads((second / "config.json").read_text())["method_options"]["imp_from"] == str(first)
    records = [json.loads(line) for line in (second / "metrics.jsonl").read_text().splitlines()]
    reused = [r for r in records if r.get("reused_from") == str(first)]
    trained = {r["level"] for r in records if r.get("phase", "").startswith("imp-round") and "level" in r}
    assert reused and trained and min(trained) >= len(reused)  # the first rounds came from the chain
    assert json.loads((first / "summary.json").read_text())["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert json.loads((second / "summary.json").read_text())["sparsity"] == pytest.approx(0.9, abs=0.01)


@pytest.mark.slow
def test_the_tune_benchmark_smoke_run_and_its_gpu_variant(tmp_path):
    """benchmarks/tune.py's smoke run (toy budgets, the pick and the hand-found configuration measured side by
    side) works end to end; its GPU variant refuses in one line where there is no GPU and renders its section
    from a GPU run's JSON."""
    import subprocess
    import sys

    import torch

    from conftest import REPO

    smoke = subprocess.run([sys.executable, "-m", "benchmarks.tune", "--smoke", "--models", "lenet300", "--batches",
                            "8", "--work", str(tmp_path / "w")], cwd=REPO, capture_output=True, text=True)
    assert smoke.returncode == 0, smoke.stderr[-2000:]
    rows = json.loads((tmp_path / "w" / "tune-benchmark.json").read_text())
    assert [(r["model"], r["batch"]) for r in rows] == [("lenet300", 8)]
    assert rows[0]["pick_speedup"] > 0 and rows[0]["hand_speedup"] > 0 and "| lenet300 | 8 |" in smoke.stdout
    if not torch.cuda.is_available():
        gpu = subprocess.run([sys.executable, "-m", "benchmarks.tune", "--gpu"], cwd=REPO, capture_output=True,
                             text=True)
        assert gpu.returncode != 0 and "needs a CUDA GPU" in gpu.stderr and "Traceback" not in gpu.stderr
    sys.path.insert(0, str(REPO))
    from benchmarks import tune as bench_tune

    state = {"result": {"pick": {"name": "channel-s0.500-lr0.01", "backend": "pytorch-cuda-fp16", "speedup": 2.5,
                                 "latency_ms": 0.4, "pick_test_acc": 0.95, "dense_test_acc": 0.96,
                                 "val_drop_points": 0.6, "meets_goal": True, "why": "the fastest"},
                        "untried": [], "warnings": []},
             "dense": {"latency_ms": {"pytorch-cuda-fp16": 1.0}}, "seconds": 120.0, "candidates": {"a": {}}}
    row = bench_tune.gpu_row("conv4", 256, state, 120.0)
    text = bench_tune.render_gpu({"command": "c", "machine": "m", "budget": "3m", "rows": [row]})
    assert "| conv4 | 256 | channel-s0.500-lr0.01 on pytorch-cuda-fp16 | **2.50x** |" in text
