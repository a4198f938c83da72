"""`gemdeploy doctor` through the real CLI."""

from __future__ import annotations

import pytest
import json

import onnxruntime
import torch

from conftest import cli, run_cli
from gemdeploy.exporters.tensorrt_build import tensorrt_status


def test_doctor_json_describes_this_machine():
    proc = run_cli("doctor", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["torch"] == torch.__version__
    assert info["cuda_available"] == torch.cuda.is_available()
    assert info["onnxruntime"] == onnxruntime.__version__
    assert "CPUExecutionProvider" in info["onnxruntime_providers"]
    assert info["commands"]["export"]["available"] is True
    assert info["precisions"]["onnx"] == ["fp32", "fp16", "int8", "int8-cpu"]
    assert isinstance(info["cpu_int8"]["description"], str)
    assert info["cpu_int8"]["pair_sums_saturate"] == (info["cpu_int8"]["x86"] and info["cpu_int8"]["vnni"] is False)
    trt = tensorrt_status()
    if not trt["available"]:
        assert info["tensorrt"] is None and "pip install tensorrt" in info["tensorrt_reason"]
        assert info["commands"]["export --trt"]["available"] is False
        assert "TensorRT" in info["commands"]["export --trt"]["note"]
        assert info["precisions"]["tensorrt"] == []
    if not torch.cuda.is_available():
        assert info["gpu"] is None and info["cuda_reason"]
        assert info["commands"]["export --trt"]["available"] is False


@pytest.mark.slow
def test_doctor_table_for_people():
    proc = run_cli("doctor")
    assert proc.returncode == 0, proc.stderr
    for needle in ("torch", "ONNX Runtime", "TensorRT", "export --trt", "precisions"):
        assert needle in proc.stdout
    if not tensorrt_status()["available"]:
        assert "[gpu]" in proc.stdout  # the install hint survives rich's markup
