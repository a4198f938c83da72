"""Data-parallel mining: a real 2-process Gloo run through the CLI, and the rank-agreement guard."""

import pytest
import json
import os
import socket

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from conftest import assert_clean_error, run_cli
from gemdeploy.train import distributed as dist
from gemdeploy.errors import GemdeployError
from gemdeploy.sparsity.masks import Mask


@pytest.mark.slow
def test_two_process_gloo_run_writes_one_run_directory(tmp_path):
    out = tmp_path / "ddp"
    run_cli("mine", "--model", "lenet300", "--data", "mnist5k", "--sparsity", "0.95", "--epochs", "2",
                   "--finetune-epochs", "1", "--device", "cpu", "--nproc-per-node", "2", "--quiet", "--out", out,
                   check=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert abs(summary["sparsity"] - 0.95) < 1e-5
    assert summary["test_acc"] > 0.3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]  # only rank 0 wrote, into one directory
    assert not list(out.glob("checkpoint-*")) and not list(out.glob(".*tmp"))
    mask = Mask.load(out / "mask.safetensors")
    assert abs(mask.density() - 0.05) < 1e-5
    phases = [json.loads(line)["phase"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert phases == ["mine", "mine", "finetune"]  # logged once (by rank 0), not once per rank
    # The run resumes only with the same world size.
    assert_clean_error(run_cli("mine", "--out", out, "--resume", "--quiet"), "2 process(es)", "same number")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _agreement_worker(rank: int, port: int, tamper: bool, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch_dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        gen = torch.Generator().manual_seed(0)  # every rank computes the same mask...
        mask = Mask({"fc.weight": (torch.rand(30, 20, generator=gen) > 0.5).float()})
        if tamper and rank == 1:
            mask["fc.weight"][3, 4] = 1 - mask["fc.weight"][3, 4]  # ...unless one rank's was tampered with
        try:
            dist.check_agreement(mask, "ticket mask")
            results[rank] = "ok"
        except GemdeployError as exc:
            results[rank] = str(exc)
    finally:
        torch_dist.destroy_process_group()


def _run_agreement(tamper: bool) -> dict:
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_agreement_worker, args=(_free_port(), tamper, results), nprocs=2, join=True)
        return dict(results)


@pytest.mark.slow
def test_agreement_check_passes_on_identical_masks():
    assert _run_agreement(tamper=False) == {0: "ok", 1: "ok"}


@pytest.mark.slow
def test_agreement_check_stops_every_rank_when_one_mask_is_tampered():
    results = _run_agreement(tamper=True)
    for rank in (0, 1):
        assert "rank(s) 1 disagrees with rank 0" in results[rank], results
