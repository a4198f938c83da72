"""Nothing lost, never a traceback: one test per class of hostile or careless input, through the real CLI."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import QUICK, assert_clean_error, cli
from gemdeploy.cli.errors import EXIT_BUG, EXIT_IO, friendly_errors
from gemdeploy.errors import GemdeployError


def _copy(lenet_run, tmp_path, name="run"):
    run = tmp_path / name
    shutil.copytree(lenet_run, run, ignore=shutil.ignore_patterns("export", "bench", "sanity*"))
    return run


def test_overwrite_refuses_a_foreign_folder_for_compact_out(lenet_run, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"editor": "vim"}')
    (out / "thesis.tex").write_text("precious")
    proc = cli("compact", lenet_run, "--pattern", "2:4", "--out", out, "--overwrite", "--quiet")
    assert_clean_error(proc, "refusing to overwrite", "not created by gemdeploy")
    assert (out / "thesis.tex").read_text() == "precious" and (out / "config.json").read_text() == '{"editor": "vim"}'


@pytest.mark.parametrize("args,needles", [
    (["export", "{run}", "--calib-samples", "0"], ["--calib-samples", ">= 1"]),
    (["export", "{run}", "--max-int8-drop", "nan"], ["--max-int8-drop"]),
    (["export", "{run}", "--min-batch", "8", "--opt-batch", "4"], ["--min-batch <= --opt-batch"]),
    (["bench", "{run}", "--iters", "0"], ["--iters", ">= 1"]),
    (["bench", "{run}", "--threads", "-1"], ["--threads", ">= 0"]),
    (["bench", "{run}", "--batch-size", "0"], ["--batch-size", ">= 1"]),
    (["compact", "{run}", "--round-to", "0"], ["--round-to"]),
    (["sanity", "{run}", "--finetune-epochs", "0"], ["--finetune-epochs"]),
    (["mine", "--out", "{tmp}/x", "--model", "lenet300", "--lr", "inf"], ["--lr"]),
])
def test_every_numeric_option_is_checked_before_any_work(lenet_run, tmp_path, args, needles):
    argv = [a.format(run=lenet_run, tmp=tmp_path) for a in args]
    assert_clean_error(cli(*argv), *needles)
    assert not (tmp_path / "x").exists() and not (lenet_run / "bench").exists()


@pytest.mark.parametrize("name,content,command", [
    ("config.json", "[1, 2, 3]", "export"),
    ("config.json", '{"model": "lenet300", "data": "mnist5k", "seed": "zero"}', "bench"),
    ("summary.json", '["not", "an", "object"]', "bench"),
    ("summary.json", '{"method": 3}', "sanity"),
    ("model.json", '{"input_shape": "big", "num_classes": 10}', "export"),
])
def test_json_of_the_wrong_shape_is_one_line_naming_the_file(lenet_run, tmp_path, name, content, command):
    run = _copy(lenet_run, tmp_path)
    (run / name).write_text(content)
    assert_clean_error(cli(command, run), name)


def test_output_paths_are_checked_before_work(lenet_run, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert_clean_error(cli("mine", "--out", a_file / "run", "--model", "lenet300", *QUICK), "is a file")
    assert_clean_error(cli("bench", lenet_run, "--out", a_file), "is a file")
    run = _copy(lenet_run, tmp_path)
    (run / "export").write_text("not a folder")
    assert_clean_error(cli("export", run), "export", "is a file")
    if os.geteuid() != 0:  # root writes anywhere: the read-only case only means something for a normal user
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        assert_clean_error(cli("mine", "--out", ro / "run", "--model", "lenet300", *QUICK), "not writable")


def test_malformed_data_folders_are_one_line(tmp_path):
    cifar = tmp_path / "cifar" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    # A crafted batch: a huge negative shape makes numpy's reshape overflow inside the reader.
    bad = {b"data": np.zeros(10, dtype=np.uint8), b"labels": [10**30] * 10}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (cifar / name).write_bytes(pickle.dumps(bad))
    proc = cli("mine", "--out", tmp_path / "r", "--model", "lenet300", "--data", "cifar10", "--data-dir",
               tmp_path / "cifar", "--quiet")
    assert_clean_error(proc, "CIFAR batch")
    folder = tmp_path / "images"
    for split in ("train", "val"):
        (folder / split / "cat").mkdir(parents=True)  # a class folder with no image in it
    proc = cli("mine", "--out", tmp_path / "r2", "--model", "lenet300", "--data", "imagefolder", "--data-dir", folder,
               "--quiet")
    assert_clean_error(proc, "hold no images")


def test_a_mask_that_does_not_fit_the_model_is_one_line(lenet_run, tmp_path):
    run = _copy(lenet_run, tmp_path)
    from safetensors.torch import load_file, save_file

    mask = load_file(str(run / "mask.safetensors"))
    first = next(iter(mask))
    mask[first] = mask[first][:, :10].contiguous()
    save_file(mask, str(run / "mask.safetensors"))
    assert_clean_error(cli("compact", run, "--overwrite"), "mask.safetensors", "does not fit")


@pytest.mark.slow
def test_interrupted_writes_are_swept_by_the_next_run_of_the_command(lenet_run, tmp_path):
    run = _copy(lenet_run, tmp_path)
    (run / "summary.json").unlink()  # an unfinished run, as after a kill -9
    debris = run / ".checkpoint-finetune.safetensors.x1y2.tmp"
    debris.write_bytes(b"half a checkpoint")
    cli("mine", "--out", run, "--resume", "--quiet", check=True)
    assert not debris.exists() and (run / "summary.json").is_file()
    (run / "sanity" / "shuffle").mkdir(parents=True)
    stale = run / "sanity" / "shuffle" / ".weights.safetensors.zz.tmp"
    stale.write_bytes(b"x")
    cli("sanity", run, "--checks", "shuffle", "--finetune-epochs", "1", "--quiet", check=True)
    assert not stale.exists()


def test_a_refused_export_leaves_no_empty_folder(lenet_run, tmp_path):
    run = _copy(lenet_run, tmp_path)
    (run / "weights.safetensors").unlink()
    (run / "compact.json").unlink()
    assert_clean_error(cli("export", run), "no fine-tuned ticket")
    assert not (run / "export").exists()


def test_an_unexpected_error_is_one_line_with_a_hint_and_debug_shows_the_traceback(capsys):
    @friendly_errors
    def broken():
        return {}["missing"]

    with pytest.raises(SystemExit) as exit_info:
        try:
            broken()
        except Exception as exc:  # typer.Exit
            raise SystemExit(exc.exit_code) from None
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == EXIT_BUG and len(err) == 1
    assert "unexpected KeyError" in err[0] and "--debug" in err[0] and "report" in err[0]
    os.environ["GEMDEPLOY_DEBUG"] = "1"
    try:
        with pytest.raises(KeyError):
            broken()
    finally:
        os.environ.pop("GEMDEPLOY_DEBUG")
    with pytest.raises(SystemExit):
        try:
            friendly_errors(lambda: (_ for _ in ()).throw(GemdeployError("a user's mistake")))()
        except Exception as exc:
            raise SystemExit(exc.exit_code) from None
    assert capsys.readouterr().err.strip() == "error: a user's mistake"


def _small_disk(folder, kib: int, command: str) -> subprocess.CompletedProcess:
    """Run ``command`` with a tmpfs of ``kib`` KiB mounted on ``folder`` (a private mount namespace: a real full
    disk, nothing mocked); skips where this machine cannot make one."""
    if not shutil.which("unshare"):
        pytest.skip("a full disk needs `unshare` (util-linux) to mount a small tmpfs")
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size={kib}k none {folder}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs in a user namespace here: {probe.stderr.strip()}")
    return subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size={kib}k none {folder} && {command}"],
                          capture_output=True, text=True, timeout=300)


def test_a_full_disk_is_one_line_with_its_own_exit_code_and_leaves_no_partial_file(tmp_path):
    """Found by the zoo walk: safetensors words a full disk as "SafetensorError: ... (os error 28)", which was
    reported as a gemdeploy bug (exit 70). A disk that fills up while the ticket's weights are written is said in one
    line, exit 74, and no half-written file is left where a finished one belongs."""
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (f"{sys.executable} -m gemdeploy.cli mine --model lenet300 {' '.join(QUICK)} --out {disk}/run; "
              f"code=$?; ls -a {disk}/run; exit $code")
    proc = _small_disk(disk, 48, script)  # the run's JSON files fit; lenet300's 1 MB of weights do not
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == EXIT_IO, proc.stderr
    assert len(err) == 1 and "Traceback" not in proc.stderr and "no space left on the device" in err[0], proc.stderr
    left = proc.stdout.split()
    assert "config.json" in left and not any(name.endswith(".tmp") for name in left), left


def test_mining_that_cannot_fit_in_memory_is_refused_before_it_starts():
    """regnet_y_128gf (2.58 GB of weights) was killed by the kernel minutes into Gem-Miner on a 24 GB machine, with no
    message. The check compares a measured lower bound of mining's copies of the weights with the memory at hand."""
    import torch

    from gemdeploy.mine.memory import available_bytes, require_memory
    from gemdeploy.mine.methods import METHODS
    from gemdeploy.models import build_model, fp32_bytes
    from gemdeploy.run.config import MineConfig

    state = build_model("lenet300", (1, 28, 28), 10).state_dict()
    gem = METHODS.get("gem-miner")()
    copies = gem.weight_copies(MineConfig(pattern="unstructured"))
    assert copies == 9.0 and gem.weight_copies(MineConfig(pattern="channel")) is None
    need = copies * fp32_bytes(state.values()) + (1 << 30)
    with pytest.raises(GemdeployError, match=r"needs at least .* GB of CPU memory .* GB is available") as err:
        require_memory(copies, state, torch.device("cpu"), "mining lenet300 with gem-miner", available=int(need) - 1)
    assert "\n" not in str(err.value) and "--pattern channel" in str(err.value)
    require_memory(copies, state, torch.device("cpu"), "mining lenet300", available=int(need) + 1)  # fits: no error
    require_memory(None, state, torch.device("cpu"), "an unmeasured method", available=0)  # not measured: no check
    assert available_bytes(torch.device("cpu")) > need  # this machine: lenet300 mines, so the real check passes
