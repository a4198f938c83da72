"""A one-line description of the machine, stamped on every benchmark figure, and the CPU features that decide how
ONNX Runtime's INT8 kernels compute."""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path

import torch


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    cpu, flags, named = platform.processor() or "unknown CPU", frozenset(), False
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not named:
                cpu, named = line.split(":", 1)[1].strip(), True
            elif line.startswith(("flags", "Features")) and not flags:
                flags = frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return cpu, flags


def int8_cpu() -> dict:
    """How ONNX Runtime's INT8 kernels multiply on this CPU.

    x86 without VNNI (AVX2, or AVX-512 without VNNI) uses ``vpmaddubsw``, whose int16 pair sums saturate with
    full-range int8 weights; VNNI (``avx512_vnni`` / ``avx_vnni``) accumulates in int32 and does not. ARM's dot
    product kernels do not saturate either. ``vnni`` is None where it cannot be told (no /proc/cpuinfo)."""
    arch = platform.machine().lower()
    _, flags = _cpuinfo()
    x86 = arch in ("x86_64", "amd64", "i386", "i686")
    vnni = None
    if x86 and flags:
        vnni = bool({"avx512_vnni", "avx_vnni"} & flags)
    isa = []
    for flag, name in (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_vnni", "AVX-512 VNNI"),
                       ("avx_vnni", "AVX-VNNI"), ("asimddp", "dot product")):
        if flag in flags:
            isa.append(name)
    saturates = bool(x86 and vnni is False)
    return {"arch": arch, "x86": x86, "vnni": vnni, "isa": isa, "pair_sums_saturate": saturates}


def describe_int8_cpu(info: dict | None = None) -> str:
    """'AVX2 without VNNI' / 'AVX-512 VNNI' / ...: the part of the CPU that INT8 accuracy depends on."""
    info = info or int8_cpu()
    if not info["x86"]:
        return f"{info['arch']}" + (" (dot product)" if "dot product" in info["isa"] else "")
    if info["vnni"] is None:
        return "x86 (VNNI unknown)"
    if info["vnni"]:
        return ", ".join(i for i in info["isa"] if "VNNI" in i) or "VNNI"
    return ("AVX-512 without VNNI" if "AVX-512" in info["isa"] else "AVX2 without VNNI" if "AVX2" in info["isa"]
            else "x86 without VNNI")


def describe() -> str:
    cpu, _ = _cpuinfo()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu} ({describe_int8_cpu()}), {os.cpu_count()} cores, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, {gpu}, Python {platform.python_version()}")
