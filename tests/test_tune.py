"""`gemdeploy tune`: the search's decisions on given figures, and a real tune on the offline digits through the CLI."""

from __future__ import annotations

import json

import pytest

from conftest import assert_clean_error, cli
from gemdeploy.errors import GemdeployError
from gemdeploy.tune.config import parse_budget
from gemdeploy.tune.search import Goal, coarse_grid, pareto_front, patterns_for, pick, refine


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
    assert {o["name"] for o in again["options"]} == {o["name"] for o in result["options"]}
    assert json.loads((out / "tune.json").read_text())["options"]["batch_size"] == 4
    # A resumed tune keeps its search options.
    assert_clean_error(cli(*[a if a != "1" else "2" for a in args], "--resume"), "--epochs", "same search options")
