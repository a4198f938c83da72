"""Data-parallel mining on PyTorch's own engine (torchrun + DistributedDataParallel).

Thin helpers over torch.distributed so single-process code paths stay unchanged: every helper is a
no-op without an initialized process group.
"""

from __future__ import annotations

import datetime
import hashlib
import os

import torch
import torch.distributed as dist

from gemdeploy.errors import GemdeployError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup_from_env(device: str, timeout_minutes: float = 10.0) -> None:
    """Join the process group torchrun describes in the environment: NCCL on GPUs, Gloo on CPU.

    The timeout bounds how long the surviving ranks wait when one rank dies, so a crash ends the run
    on every rank instead of hanging it.
    """
    if not launched_by_torchrun() or is_distributed():
        return
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GemdeployError("--device cuda asked for, but no CUDA GPU is visible to PyTorch (see `gemdeploy doctor`)")
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=timeout_minutes))


def teardown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].detach().to("cpu", torch.uint8 if tensors[k].dtype == torch.bool else None)
                 .contiguous().numpy().tobytes())
    return h.hexdigest()


def check_agreement(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Stop the run on every rank, with a clear error, if any rank computed a different ``what``."""
    if not is_distributed():
        return
    mine = fingerprint(tensors)
    everyone: list[str] = [""] * world_size()
    dist.all_gather_object(everyone, mine)
    bad = [r for r, fp in enumerate(everyone) if fp != everyone[0]]
    if bad:
        raise GemdeployError(f"the {what} on rank(s) {', '.join(map(str, bad))} disagrees with rank 0's; "
                             "the ranks diverged (non-deterministic kernels or a tampered process), stopping")
