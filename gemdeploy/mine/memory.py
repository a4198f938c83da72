"""Refuse in one line, before any mining, a network whose mining cannot fit in the memory at hand: the kernel's
out-of-memory killer would otherwise end the process minutes later with no message (torchvision's regnet_y_128gf,
645M parameters, on a 24 GB machine)."""

from __future__ import annotations

import torch

from gemdeploy.errors import GemdeployError
from gemdeploy.models import fp32_bytes

BASE_BYTES = 1 << 30  # the interpreter, torch and the data, before any weight


def available_bytes(device: torch.device) -> int | None:
    """Memory a new allocation can still get: CUDA's free memory on that GPU; on the CPU, the kernel's MemAvailable
    plus free swap. None where it cannot be read."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        info = dict(line.split(":", 1) for line in open("/proc/meminfo").read().splitlines() if ":" in line)
        return sum(int(info[k].split()[0]) * 1024 for k in ("MemAvailable", "SwapFree") if k in info) or None
    except (OSError, ValueError):
        return None


def require_memory(copies: float | None, state: dict[str, torch.Tensor], device: torch.device, what: str,
                   available: int | None = None) -> None:
    """Refuse when ``copies`` (a lower bound) of the weights in ``state`` exceed the memory ``device`` has free."""
    if copies is None:
        return
    available = available_bytes(device) if available is None else available
    if available is None:
        return
    weights = fp32_bytes(state.values())
    need = copies * weights + (BASE_BYTES if device.type == "cpu" else 0)
    if need > available:
        raise GemdeployError(
            f"{what} needs at least {need / 1e9:.1f} GB of {device.type.upper()} memory (about {copies:g} copies of "
            f"its {weights / 1e9:.2f} GB of fp32 weights: scores, their gradient and momentum, flags, the masked "
            f"weights) and {available / 1e9:.1f} GB is available: mine on a machine or GPU with more memory, use "
            "--pattern channel (one score per channel), or a smaller model")
