"""`gemdeploy mine` through the real command line."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import QUICK, assert_clean_error, cli, interrupt_when, run_cli
from gemdeploy.sparsity.masks import Mask


def test_mine_end_to_end_on_mnist(lenet_run):
    summary = json.loads((lenet_run / "summary.json").read_text())
    for key in ("method", "model", "data", "target_sparsity", "sparsity", "test_acc", "time_to_ticket_s", "total_time_s"):
        assert key in summary
    assert summary["method"] == "gem-miner" and summary["target_sparsity"] == 0.986
    assert abs(summary["sparsity"] - 0.986) < 1e-5  # the freezing schedule lands on the target
    assert 0.3 < summary["test_acc"] <= 1.0  # far above chance (0.1) even after a few epochs
    for name in ("config.json", "metrics.jsonl", "init.safetensors", "mask.safetensors", "weights.safetensors",
                 "scores.safetensors"):
        assert (lenet_run / name).is_file(), name
    assert not list(lenet_run.glob("checkpoint-*")), "finished runs keep no checkpoints"
    mask = Mask.load(lenet_run / "mask.safetensors")
    weights = load_file(str(lenet_run / "weights.safetensors"))
    for k, m in mask.items():
        assert torch.all(weights[k][m == 0] == 0)
    phases = [json.loads(line)["phase"] for line in (lenet_run / "metrics.jsonl").read_text().splitlines()]
    assert phases == ["mine"] * 3 + ["finetune"] * 2


@pytest.mark.slow
def test_dense_method_trains_the_unpruned_model(tmp_path):
    out = tmp_path / "dense"
    cli("mine", "--model", "lenet300", "--method", "dense", "--out", out, *QUICK, check=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sparsity"] == 0.0 and summary["target_sparsity"] == 0.0
    assert summary["test_acc"] > 0.8
    assert summary["warnings"] == []  # a healthy run raises no warning


@pytest.mark.slow
def test_resume_after_interrupt_gives_the_same_mask(tmp_path):
    args = ["mine", "--model", "lenet300", "--sparsity", "0.95", "--epochs", "15", "--finetune-epochs", "2",
            "--data", "digits", "--quiet"]
    full = tmp_path / "full"
    run_cli(*args, "--out", full, check=True)
    part = tmp_path / "part"
    # A real Ctrl-C in the middle of mining, once the first epoch has been checkpointed.
    interrupted = interrupt_when([*args, "--out", part], part, "checkpoint-mine.safetensors")
    assert interrupted.returncode == 130 and "--resume" in interrupted.stderr, interrupted.stderr
    assert_clean_error(interrupted)
    assert (part / "checkpoint-mine.safetensors").is_file() and not (part / "mask.safetensors").exists()
    run_cli("mine", "--out", part, "--resume", "--quiet", check=True)
    a, b = Mask.load(full / "mask.safetensors"), Mask.load(part / "mask.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    wa, wb = load_file(str(full / "weights.safetensors")), load_file(str(part / "weights.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    epochs = [(r["phase"], r["epoch"]) for r in map(json.loads, (part / "metrics.jsonl").read_text().splitlines())]
    assert epochs == [("mine", e) for e in range(1, 16)] + [("finetune", 1), ("finetune", 2)]


@pytest.mark.parametrize("args,needles", [
    (["--model", "alexnet"], ["unknown model 'alexnet'", "lenet300", "resnet20"]),
    (["--data", "imagenet21k"], ["unknown data set", "mnist5k", "cifar10"]),
    (["--method", "magic"], ["unknown method 'magic'", "gem-miner", "dense"]),
    (["--sparsity", "1.0"], ["--sparsity must be in [0, 1)"]),
    (["--sparsity", "-0.1"], ["--sparsity must be in [0, 1)"]),
    (["--data", "cifar10", "--data-dir", "/nonexistent/cifar"], ["/nonexistent/cifar", "does not exist"]),
    (["--data", "cifar10"], ["needs --data-dir"]),
    (["--pattern", "3:7"], ["unknown pattern"]),
    (["--lr", "-0.1"], ["--lr", "> 0"]),
    (["--finetune-lr", "0"], ["--finetune-lr", "> 0"]),
    (["--lam", "nan"], ["--lam", ">= 0"]),
    (["--epochs", "0"], ["--epochs", ">= 1"]),
    (["--batch-size", "-4"], ["--batch-size", ">= 1"]),
    (["--momentum", "1.5"], ["--momentum", "[0, 1)"]),
    (["--imp-schedule", "linear"], ["unknown IMP schedule"]),
    (["--device", "tpu"], ["--device"]),
    (["--nm", "4:2"], ["--nm", "0 < N < M"]),
])
def test_bad_input_gets_one_clear_line(tmp_path, args, needles):
    proc = cli("mine", "--out", tmp_path / "never", "--model", "lenet300", *QUICK, *args)
    assert_clean_error(proc, *needles)
    assert not (tmp_path / "never").exists()


def test_existing_run_directory_is_never_overwritten_by_default(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    proc = cli("mine", "--out", out, "--model", "lenet300", *QUICK)
    assert_clean_error(proc, "already exists", "--resume", "--overwrite")
    proc = cli("mine", "--out", out, "--model", "lenet300", "--overwrite", *QUICK)
    assert_clean_error(proc, "not created by gemdeploy")
    assert (out / "precious.txt").read_text() == "keep me"


@pytest.mark.slow
def test_corrupt_checkpoint_on_resume_is_reported(tmp_path):
    out = tmp_path / "run"
    proc = interrupt_when(["mine", "--model", "lenet300", "--out", out, "--data", "digits", "--epochs", "40",
                           "--finetune-epochs", "1", "--quiet"], out, "checkpoint-mine.safetensors")
    assert proc.returncode == 130
    ckpt = out / "checkpoint-mine.safetensors"
    ckpt.write_bytes(b"\x00garbage" * 10)
    assert_clean_error(cli("mine", "--out", out, "--resume", "--quiet"), "corrupt", "checkpoint-mine")
    assert ckpt.read_bytes() == b"\x00garbage" * 10  # nothing overwritten


def test_resume_of_a_directory_that_is_not_a_run(tmp_path):
    assert_clean_error(cli("mine", "--out", tmp_path, "--resume"), "nothing to resume")


def test_overwrite_never_deletes_a_folder_gemdeploy_did_not_create(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"editor": "vim"}')  # a user's own config.json: not a gemdeploy run
    (out / "precious.txt").write_text("keep me")
    proc = cli("mine", "--out", out, "--model", "lenet300", "--overwrite", *QUICK)
    assert_clean_error(proc, "refusing to overwrite", "not created by gemdeploy")
    assert (out / "config.json").read_text() == '{"editor": "vim"}' and (out / "precious.txt").read_text() == "keep me"


@pytest.mark.slow
def test_overwrite_of_a_run_removes_only_what_gemdeploy_wrote(tmp_path):
    out = tmp_path / "run"
    cli("mine", "--out", out, "--model", "lenet300", "--sparsity", "0.9", *QUICK, check=True)
    first = json.loads((out / "summary.json").read_text())
    (out / "notes.md").write_text("my notes about this run")
    (out / "export").mkdir()  # gemdeploy's own subfolder: goes with the run
    cli("mine", "--out", out, "--model", "lenet300", "--sparsity", "0.5", "--overwrite", *QUICK, check=True)
    second = json.loads((out / "summary.json").read_text())
    assert first["kept_weights"] != second["kept_weights"]  # really replaced
    assert (out / "notes.md").read_text() == "my notes about this run"
    assert not (out / "export").exists()
    assert json.loads((out / ".gemdeploy").read_text())["tool"] == "gemdeploy"


def test_a_broken_ticket_ends_with_a_visible_warning(tmp_path):
    """A random ticket at 0.1% density trained for one epoch on the 8x8 digits: unusable, and the run says so."""
    out = tmp_path / "broken"
    proc = cli("mine", "--model", "lenet300", "--data", "digits", "--method", "random", "--sparsity", "0.999",
               "--epochs", "1", "--finetune-epochs", "1", "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["warnings"] and any("near chance" in w for w in summary["warnings"]), summary["warnings"]
    assert "WARNING:" in proc.stderr and "near chance" in proc.stderr


def test_a_run_of_gemdeploy_before_method_option_groups_still_loads_and_resumes(tmp_path, lenet_run):
    """config.json of gemdeploy < 0.3 held every method's options flat (a Gem-Miner run recorded IMP's reference
    recipe too): it loads, resumes, and is rewritten with the run's own method's options as its group."""
    import shutil

    out = tmp_path / "old"
    shutil.copytree(lenet_run, out)
    new = json.loads((out / "config.json").read_text())
    old = {k: v for k, v in new.items() if k != "method_options"}
    old.update(new["method_options"])
    old.update({"imp_lr": 0.1, "imp_momentum": 0.0, "imp_weight_decay": 0.0, "imp_schedule": "constant",
                "imp_rewind_iter": 0, "imp_prune_output": False, "imp_from": None})
    (out / "config.json").write_text(json.dumps(old))
    (out / "summary.json").unlink()
    cli("mine", "--out", out, "--resume", "--quiet", check=True)
    assert json.loads((out / "config.json").read_text()) == new
    assert (json.loads((out / "summary.json").read_text())["test_acc"]
            == json.loads((lenet_run / "summary.json").read_text())["test_acc"])


def test_a_method_option_given_to_another_method_is_refused_in_one_line(tmp_path):
    assert_clean_error(cli("mine", "--model", "lenet300", "--method", "imp", "--lam", "1e-4", "--out", tmp_path / "x",
                           *QUICK), "--lam is an option of --method gem-miner; --method imp does not take it")
    assert not (tmp_path / "x").exists()


def test_the_stage_chain_redoes_only_the_stage_whose_output_is_missing(tmp_path, lenet_run):
    """gemdeploy.stages (what mine, api and tune run): on a mined run without its compaction, the mine stage is
    skipped (no epoch trained again, summary kept) and the compact stage writes compact.json and its totals."""
    import shutil

    from gemdeploy import stages
    from gemdeploy.progress import Reporter

    out = tmp_path / "run"
    shutil.copytree(lenet_run, out)
    for name in ("compact.json", "compact.safetensors"):
        (out / name).unlink()
    metrics = (out / "metrics.jsonl").read_text()
    _, summary = stages.mine(out, None, resume=True, reporter=Reporter(enabled=False), keep_finished=True)
    assert (out / "compact.json").is_file() and (out / "metrics.jsonl").read_text() == metrics
    assert summary == json.loads((out / "summary.json").read_text()) == json.loads((lenet_run / "summary.json").read_text())
    written = (out / "summary.json").stat().st_mtime_ns
    stages.mine(out, None, resume=True, reporter=Reporter(enabled=False), keep_finished=True)  # all done: no write
    assert (out / "summary.json").stat().st_mtime_ns == written
