"""`gemdeploy doctor`: what this machine can run, and what is missing for the rest."""

from __future__ import annotations

import json
import platform

import typer

from gemdeploy.cli.errors import friendly_errors


def collect() -> dict:
    import torch

    from gemdeploy.exporters.tensorrt_build import cuda_status, tensorrt_status

    cuda = cuda_status()
    info: dict = {
        "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": cuda["available"],
        "gpu": cuda.get("gpu"), "compute_capability": cuda.get("capability"), "cuda_reason": cuda["reason"],
    }
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["onnxruntime_providers"] = ort.get_available_providers()
        info["onnxruntime_reason"] = None
    except Exception as exc:  # noqa: BLE001 - a broken install (both ORT packages) raises oddly
        info["onnxruntime"], info["onnxruntime_providers"] = None, []
        info["onnxruntime_reason"] = (f"onnxruntime does not import ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                                      "install exactly one of `pip install -e .[cpu]` or `.[gpu]`")
    from gemdeploy.bench.backends import BACKENDS

    backends = {}
    for name in BACKENDS.names():
        why = BACKENDS.get(name)().unavailable()
        backends[name] = {"available": why is None, "reason": why, "summary": BACKENDS.summary(name)}
    info["backends"] = backends
    trt = tensorrt_status()
    info["tensorrt"], info["tensorrt_reason"] = trt["version"] if trt["available"] else None, trt["reason"]
    ort_ok = info["onnxruntime"] is not None
    trt_ok = trt["available"] and cuda["available"]
    cap = float(cuda.get("capability") or 0)
    missing_trt = "; ".join(r for r in (trt["reason"], None if cuda["available"] else f"no CUDA GPU: {cuda['reason']}") if r)
    info["commands"] = {
        "mine": {"available": True, "device": "cuda" if cuda["available"] else "cpu",
                 "note": None if cuda["available"] else "runs on CPU (slow beyond the small data sets)"},
        "export": {"available": ort_ok, "note": info["onnxruntime_reason"]},
        "export --trt": {"available": trt_ok, "note": None if trt_ok else missing_trt},
        "bench": {"available": True, "backends": [n for n, b in backends.items() if b["available"]]},
        "sanity": {"available": True, "note": None},
    }
    from gemdeploy.exporters.precisions import PRECISIONS

    info["precisions"] = {
        # every export precision is verified through ONNX Runtime's fp32 reference (sparse-cpu through its runtime)
        "export": PRECISIONS.names() if ort_ok else [],
        # ORT CPU runs fp16 graphs and Q/DQ INT8
        "onnx": [p for p in ("fp32", "fp16", "int8", "int8-cpu") if p in PRECISIONS] if ort_ok else [],
        "tensorrt": ([p for p, need in (("fp32", 0), ("fp16", 5.3), ("int8", 6.1)) if cap >= need] if trt_ok else []),
        "sparse_tensor_cores": bool(trt_ok and cap >= 8.0),
    }
    from gemdeploy.machine import describe_int8_cpu, int8_cpu

    info["cpu_int8"] = {**int8_cpu(), "description": describe_int8_cpu()}
    return info


@friendly_errors
def doctor(json_out: bool = typer.Option(False, "--json", metavar="", help="Machine-readable JSON instead of a table.")) -> None:
    """What this machine can do: torch/CUDA/GPU, ONNX Runtime, TensorRT, and what each command needs."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    info = collect()
    if json_out:
        print(json.dumps(info, indent=2))
        return
    ok, no = "[green]yes[/green]", "[red]no[/red]"
    env = Table(title="gemdeploy doctor")
    env.add_column("component")
    env.add_column("status")
    env.add_row("python", info["python"])
    env.add_row("torch", f"{info['torch']} (CUDA build {info['torch_cuda'] or 'none'})")
    env.add_row("CUDA GPU", f"{info['gpu']} (compute {info['compute_capability']})" if info["cuda_available"]
                else f"[red]none[/red]: {info['cuda_reason']}")
    env.add_row("ONNX Runtime", f"{info['onnxruntime']}: {', '.join(info['onnxruntime_providers'])}"
                if info["onnxruntime"] else f"[red]missing[/red]: {escape(info['onnxruntime_reason'])}")
    env.add_row("TensorRT", info["tensorrt"] or f"[red]missing[/red]: {escape(info['tensorrt_reason'])}")
    cpu8 = info["cpu_int8"]
    env.add_row("CPU INT8", cpu8["description"] + (": ONNX Runtime's INT8 kernels can saturate with full-range "
                                                    "weights, use --precision int8-cpu" if cpu8["pair_sums_saturate"]
                                                    else ""))
    cmds = Table(title="commands")
    cmds.add_column("command")
    cmds.add_column("available")
    cmds.add_column("note")
    for name, c in info["commands"].items():
        note = c.get("note") or (", ".join(c["backends"]) if "backends" in c else "")
        cmds.add_row(name, ok if c["available"] else no, escape(note or ""))
    prec = info["precisions"]
    back = Table(title="bench backends")
    back.add_column("backend")
    back.add_column("available")
    back.add_column("why not")
    for name, b in info["backends"].items():
        back.add_row(name, ok if b["available"] else no, escape(b["reason"] or ""))
    console = Console()
    console.print(env)
    console.print(cmds)
    console.print(back)
    console.print(f"export precisions: {', '.join(prec['export']) or 'none'}; TensorRT {', '.join(prec['tensorrt']) or 'none'}; "
                  f"sparse tensor cores: {'yes' if prec['sparse_tensor_cores'] else 'no'}")
