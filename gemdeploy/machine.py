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


def gpu_info(index: int = 0) -> dict | None:
    """The CUDA GPU a benchmark ran on: name, compute capability, memory, and clocks (the maximum ones from
    PyTorch's device properties where it has them; the current ones through pynvml when that imports); None
    without a GPU."""
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(index)

    def mhz(value):
        return None if value is None else round(value / 1000)  # the properties give kHz

    info = {"name": props.name, "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1), "multiprocessors": props.multi_processor_count,
            "max_sm_clock_mhz": mhz(getattr(props, "clock_rate", None)),
            "max_memory_clock_mhz": mhz(getattr(props, "memory_clock_rate", None)),
            "cuda": torch.version.cuda, "clocks_now": None}
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            h = pynvml.nvmlDeviceGetHandleByIndex(index)
            info["clocks_now"] = {"sm_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
                                  "memory_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM),
                                  "max_sm_mhz": pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM)}
            driver = pynvml.nvmlSystemGetDriverVersion()
            info["driver"] = driver.decode() if isinstance(driver, bytes) else driver
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # noqa: BLE001 - not installed, or NVML missing/refusing on this host
        info["clocks_now"] = "unknown: " + ("pynvml is not installed" if isinstance(exc, ImportError)
                                            else f"NVML: {str(exc)[:80]}")
    return info


def describe_gpu(info: dict | None) -> str:
    """'NVIDIA H200 (9.0, 139.8 GiB, SM up to 1980 MHz, memory 2619 MHz; clocks now unknown: ...)'."""
    if not info:
        return "no GPU"
    now = info.get("clocks_now")
    now = (f"SM {now['sm_mhz']} MHz, memory {now['memory_mhz']} MHz now" if isinstance(now, dict)
           else f"clocks now {now}")
    peak = ", ".join(f"{what} {v} MHz" for what, v in (("SM up to", info.get("max_sm_clock_mhz")),
                                                       ("memory", info.get("max_memory_clock_mhz"))) if v)
    return f"{info['name']} (compute {info['capability']}, {info['memory_gib']} GiB{', ' + peak if peak else ''}; {now})"
