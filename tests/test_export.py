"""`gemdeploy export`: real exports, real ONNX Runtime, NVIDIA's polygraphy checker, the real CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from conftest import assert_clean_error, cli, tanh_net
from gemdeploy.calibration import CALIB_METHODS
from gemdeploy.errors import GemdeployError
from gemdeploy.exporters import onnx_export as ox
from gemdeploy.exporters.precisions import PRECISIONS
from gemdeploy.exporters.sparsity import apply_24_magnitude_, onnx_24_report
from gemdeploy.exporters.tensorrt_build import cuda_status, tensorrt_status
from gemdeploy.models import MODELS, build_model, fp32_bytes

SHAPE = (1, 16, 16)


def _tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(name, SHAPE, 10).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, as after training
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_exports_and_verifies(name, tmp_path):
    model = _tiny(name)
    x = torch.randn(16, *SHAPE)
    # torch.export (the default) for two models; the faster TorchScript exporter for the rest keeps this quick.
    exporter = "dynamo" if name in ("lenet300", "resnet20") else "torchscript"
    proto, used = ox.torch_to_onnx(model, x, exporter=exporter)
    assert used == exporter
    ox.full_check(proto)
    proto, _ = ox.simplify(proto)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    dest = tmp_path / "m.onnx"
    check = ox.write_verified(proto, dest, lambda p: ox.verify(p, model, x, "fp32"), "fp32")
    assert check["ok"] and check["max_abs_diff"] <= 1e-4 * check["logit_scale"]
    # The dynamic batch really works: a batch size never seen at export time.
    out = ox.ort_run(ox.ort_session(dest), x[:3])
    assert out.shape == (3, 10)


def test_fp16_graph_holds_fp16_tensors_and_agrees(tmp_path):
    model = _tiny("resnet20")
    x = torch.randn(64, *SHAPE)
    proto, _ = ox.torch_to_onnx(model, x, exporter="torchscript")
    half = ox.to_fp16(proto)
    ox.full_check(half)
    conv_weights = {n.input[1] for n in half.graph.node if n.op_type == "Conv"}
    inits = {i.name: i for i in half.graph.initializer}
    assert conv_weights and all(inits[w].data_type == onnx.TensorProto.FLOAT16 for w in conv_weights)
    check = ox.write_verified(half, tmp_path / "h.onnx", lambda p: ox.verify(p, model, x, "fp16"), "fp16")
    assert check["top1_agreement"] >= 0.995


def test_failed_verification_is_an_error_and_leaves_no_file(tmp_path):
    model = _tiny("lenet300")
    x = torch.randn(32, *SHAPE)
    proto, _ = ox.torch_to_onnx(model, x, exporter="torchscript")
    # Corrupt one weight of the graph: ONNX Runtime now disagrees with PyTorch.
    init = max(proto.graph.initializer, key=lambda i: int(np.prod(i.dims)))
    arr = numpy_helper.to_array(init).copy()
    arr.flat[: arr.size // 2] += 0.5
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    dest = tmp_path / "bad.onnx"
    with pytest.raises(GemdeployError, match=r"failed verification, not written: max \|ONNX Runtime - PyTorch\|"):
        ox.write_verified(proto, dest, lambda p: ox.verify(p, model, x, "fp32"), "the fp32 ONNX")
    assert list(tmp_path.iterdir()) == []


def _a_few_rounding_steps_off(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The largest weight scaled by 1 + 4 eps: a file as faithful as rounding allows, yet surely not bit-identical."""
    init = max(proto.graph.initializer, key=lambda i: int(np.prod(i.dims)))
    arr = numpy_helper.to_array(init) * np.float32(1 + 4 * np.finfo(np.float32).eps)
    init.CopyFrom(numpy_helper.from_array(arr.astype(np.float32), init.name))
    return proto


def test_a_network_that_amplifies_its_own_rounding_fails_verification_saying_so(tmp_path):
    """A file of a chaotic network a few rounding steps off cannot be told from a wrong one by its logits: the error
    names the network's rounding; the same few steps in a tame network verify."""
    x = torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(0))
    chaotic, tame = tanh_net(depth=40), tanh_net(depth=6)
    proto, _ = ox.torch_to_onnx(chaotic, x, exporter="torchscript")
    with pytest.raises(GemdeployError, match="moves by one rounding step") as err:
        ox.write_verified(_a_few_rounding_steps_off(proto), tmp_path / "c.onnx",
                          lambda p: ox.verify(p, chaotic, x, "fp32"), "the fp32 ONNX")
    assert re.search(r"not written: max \|ONNX Runtime - PyTorch\| = \S+ > ", str(err.value))
    assert list(tmp_path.iterdir()) == []
    proto, _ = ox.torch_to_onnx(tame, x, exporter="torchscript")
    check = ox.write_verified(_a_few_rounding_steps_off(proto), tmp_path / "t.onnx",
                              lambda p: ox.verify(p, tame, x, "fp32"), "fp32")
    assert check["ok"]


def _polygraphy_sparsity(path: Path) -> tuple[set[str], set[str]]:
    # NVIDIA's own command-line tool, run as its console script does (polygraphy.tools.main)
    code = "import sys; from polygraphy.tools import main; sys.argv[0] = 'polygraphy'; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", code, "inspect", "sparsity", str(path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout + proc.stderr
    return set(re.findall(r"Found sparse tensor: (\S+)", text)), set(re.findall(r"Found non-sparse tensor: (\S+)", text))


def _small_convnet() -> torch.nn.Module:
    """Convs (4 eligible: C_in a multiple of 4), a depthwise conv (never eligible) and Linears, BN folded at export."""
    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16, affine=False), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32, affine=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32, affine=False), nn.ReLU(),
        nn.Conv2d(32, 32, 1, bias=False), nn.BatchNorm2d(32, affine=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64, bias=False), nn.BatchNorm1d(64, affine=False), nn.ReLU(),
        nn.Linear(64, 10),
    ).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_24_layout_survives_export_per_polygraphy(precision, tmp_path):
    model = _small_convnet()
    apply_24_magnitude_(model)  # TensorRT's layout: 2 zeros in every 4 input channels
    x = torch.randn(8, *SHAPE)
    proto, _ = ox.torch_to_onnx(model, x)  # the default exporter, as `gemdeploy export` uses
    proto, _ = ox.simplify(proto)
    if precision == "fp16":
        proto = ox.to_fp16(proto)
    path = tmp_path / f"m.{precision}.onnx"
    onnx.save(proto, path)
    ours = onnx_24_report(proto)
    sparse, dense = _polygraphy_sparsity(path)
    assert len(ours) == 4 and all(ours.values())  # conv 16->32, conv 1x1, two Linears (Gemm)
    assert dense == set(), dense
    assert sparse == set(ours)


@pytest.mark.slow
def test_24_run_from_the_cli_exports_in_tensorrt_layout(tmp_path):
    """A real `mine --pattern 2:4` ticket: NVIDIA's checker reports every eligible tensor of the export sparse."""
    run = tmp_path / "l24"
    cli("mine", "--model", "lenet300", "--data", "digits", "--pattern", "2:4", "--sparsity", "0.5", "--epochs", "1",
            "--finetune-epochs", "1", "--quiet", "--out", run, check=True)
    cli("export", run, "--no-sparse-storage", "--quiet", check=True)
    record = json.loads((run / "export" / "export.json").read_text())
    assert record["pattern"] == "2:4" and record["sparsity_24"]["eligible"] == 3
    sparse, dense = _polygraphy_sparsity(run / "export" / "model.fp32.onnx")
    assert dense == set() and len(sparse) == record["sparsity_24"]["sparse"] == 3


def test_24_report_leaves_grouped_convs_out_as_mine_does():
    """torchvision's ResNeXt found it: a 2:4 ticket never gives a grouped conv the pattern, so the export check must
    not count one as a tensor whose 2:4 layout was lost."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, groups=2),
                                torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 1), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 12 * 12, 10)).eval()
    masks = apply_24_magnitude_(model)
    assert "2.weight" not in masks and {"4.weight", "6.weight"} <= set(masks)  # the grouped conv is left dense
    proto, _ = ox.torch_to_onnx(model, torch.randn(2, *SHAPE), exporter="torchscript")
    report = onnx_24_report(proto)
    assert len(report) == 2 and all(report.values())  # the 1x1 conv and the Linear, both 2:4


def test_a_model_over_one_onnx_files_limit_is_refused_before_any_export_work():
    # regnet_y_128gf (645M parameters, 2.6 GB in fp32) is one: protobuf cannot serialize it, so without this check
    # its export stopped with "Failed to serialize proto" (exit 70). The meta device gives its size without memory.
    big = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(24000, 24000, device="meta"))
    assert fp32_bytes(big.state_dict().values()) == 4 * (24000 * 24000 + 24000)
    with pytest.raises(GemdeployError, match=r"2\.30 GB of fp32 weights, over the 2 GB one ONNX file"):
        ox.require_one_file(big, "the compacted model", "compact it smaller")
    ox.require_one_file(build_model("lenet300", (1, 28, 28), 10), "lenet300", "")  # a model that fits passes


def test_24_report_flags_unstructured_weights():
    model = _tiny("conv4")  # dense random weights: not 2:4
    proto, _ = ox.torch_to_onnx(model, torch.randn(2, *SHAPE), exporter="torchscript")
    report = onnx_24_report(proto)
    assert report and not any(report.values())


def test_sparse_storage_is_smaller_and_runs(tmp_path):
    model = _tiny("lenet300")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_((torch.rand_like(m.weight) < 0.02).float())
    x = torch.randn(32, *SHAPE)
    proto, _ = ox.torch_to_onnx(model, x, exporter="torchscript")
    sparse, names = ox.to_sparse_storage(proto)
    assert names and ox.sparse_constants(sparse) == len(names) and not sparse.graph.sparse_initializer
    onnx.checker.check_model(sparse, full_check=True)  # sparse weights as Constants: ONNX's type inference holds
    check = ox.write_verified(sparse, tmp_path / "s.onnx", lambda p: ox.verify(p, model, x, "fp32"), "sparse")
    assert check["ok"]
    assert (tmp_path / "s.onnx").stat().st_size < len(proto.SerializeToString()) / 5


@pytest.mark.parametrize("method", CALIB_METHODS)
def test_every_calibration_method_gives_symmetric_per_channel_qdq(method, tmp_path):
    from gemdeploy.calibration.int8 import qdq_report, quantize_int8

    model = _tiny("conv4")
    x = torch.randn(32, *SHAPE)
    proto, _ = ox.torch_to_onnx(model, x, exporter="torchscript")
    onnx.save(proto, tmp_path / "m.onnx")
    rec = quantize_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", x, method=method, cache_dir=tmp_path / "cache")
    assert rec["method"] == method and rec["cache_hit"] is False and Path(rec["cache"]).is_file()
    report = qdq_report(onnx.load(str(tmp_path / "q.onnx")))
    layers = report["layers"].values()
    assert report["symmetric"] and len(layers) == 7  # 4 convs + 3 linears
    assert all(v["weight_int8"] and v["per_channel"] and v["input_dequantized"] for v in layers), report["layers"]
    agree = ox.compare(ox.torch_logits(model, x), ox.ort_run(ox.ort_session(tmp_path / "q.onnx"), x), "int8")
    assert agree["top1_agreement"] >= 0.8


# ---------------------------------------------------------------- the real CLI on a real ticket


def onnx_precisions() -> list[str]:
    """Every registered precision whose artifact is an ONNX file."""
    from gemdeploy.exporters.precisions import PRECISIONS

    return [name for name, cls in PRECISIONS.items() if cls.file.endswith(".onnx")]


@pytest.fixture(scope="module")
def exported(lenet_run, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("export") / "lenet"
    shutil.copytree(lenet_run, run, ignore=shutil.ignore_patterns("export"))
    proc = cli("export", run, *[arg for p in onnx_precisions() for arg in ("--precision", p)], "--calib-samples", "256")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run


@pytest.mark.slow
def test_cli_export_writes_verified_artifacts(exported):
    out = exported / "export"
    record = json.loads((out / "export.json").read_text())
    for name in ("model.fp32.onnx", "model.fp16.onnx", "model.int8.onnx", "model.sparse.onnx"):
        assert (out / name).is_file(), name
        side = json.loads((out / name.replace(".onnx", ".json")).read_text())
        assert side["bytes"] == (out / name).stat().st_size and side["verification"]["ok"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging or temp files left
    assert record["source"] in ("compacted", "finetuned")
    assert record["source"] == ("compacted" if (exported / "compact.json").is_file() else "finetuned")
    fp32 = json.loads((out / "model.fp32.json").read_text())
    assert fp32["verification"]["max_abs_diff"] <= 1e-4 * fp32["verification"]["logit_scale"]
    assert fp32["graph"]["opset"] >= 17
    # fp32's accuracy matches what the run measured in PyTorch (same model, same test split).
    summary = json.loads((exported / "summary.json").read_text())
    assert abs(record["accuracy"]["fp32"] - summary["test_acc"]) <= 0.002
    sizes = record["sizes"]
    assert sizes["sparse_storage_bytes"] < sizes["dense_bytes"] / 5  # a 98.6%-sparse ticket


def test_every_onnx_file_passes_the_full_check(exported):
    """Every ONNX file export writes (one per registered ONNX precision, and the sparse-storage file) passes ONNX's
    own full check, type and shape inference included, so any tool that runs it can read the file."""
    from gemdeploy.exporters import layout
    from gemdeploy.exporters.precisions import PRECISIONS

    out = exported / "export"
    expected = {PRECISIONS.get(p).file for p in onnx_precisions()} | {layout.SPARSE_STORAGE}
    written = {p.name for p in out.glob("*.onnx")}
    assert expected <= written, expected - written
    for name in sorted(written):
        onnx.checker.check_model(onnx.load(str(out / name)), full_check=True)


def test_int8_is_symmetric_qdq_and_accurate(exported):
    from gemdeploy.calibration.int8 import qdq_report

    out = exported / "export"
    proto = onnx.load(str(out / "model.int8.onnx"))
    report = qdq_report(proto)
    assert report["quantize_linear"] > 0 and report["dequantize_linear"] > 0
    assert report["symmetric"] and report["zero_points"] > 0
    gemm = {k: v for k, v in report["layers"].items() if v["op"] in ("Gemm", "MatMul", "Conv")}
    assert gemm and all(v["weight_int8"] and v["per_channel"] and v["input_dequantized"] for v in gemm.values()), gemm
    inits = {i.name: i for i in proto.graph.initializer}
    for n in proto.graph.node:  # zero points all exactly 0
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
            assert not numpy_helper.to_array(inits[n.input[2]]).any()
    record = json.loads((out / "export.json").read_text())
    assert record["accuracy"]["int8"] >= record["accuracy"]["fp32"] - 0.01  # within 1 point on mnist5k
    side = json.loads((out / "model.int8.json").read_text())
    assert side["calibration"]["samples"] == 256 and side["calibration"]["method"] == "entropy"
    assert side["calibration"]["reduce_range"] is False and side["cpu_portability"]["weights_max_abs"] == 127


def test_each_int8_file_is_measured_twice_and_has_one_verdict(exported):
    """Q/DQ numerics (ONNX Runtime without graph optimizations: what TensorRT runs) and ONNX Runtime CPU (this
    machine's fused kernels) are both recorded; the verdict in the sidecar is the one in export.json."""
    out = exported / "export"
    record = json.loads((out / "export.json").read_text())
    fp32 = record["accuracy"]["fp32"]
    for precision in ("int8", "int8-cpu"):
        side = json.loads((out / f"model.{precision}.json").read_text())
        checks = side["verification"]
        assert checks["qdq_numerics"]["how"].endswith("graph optimizations off")
        assert checks["onnxruntime_cpu"]["how"].endswith("graph optimizations on")
        assert checks["qdq_numerics"]["test_acc"] == side["qdq_test_acc"] == record["qdq_accuracy"][precision]
        assert checks["onnxruntime_cpu"]["test_acc"] == side["test_acc"] == record["accuracy"][precision]
        assert side["verdict"] == record["verdicts"][precision] and checks["ok"] == side["verdict"]["ok"]
        assert side["verdict"]["drop_points"] == pytest.approx((fp32 - side["test_acc"]) * 100, abs=1e-3)
        assert side["verdict"]["qdq_drop_points"] == pytest.approx((fp32 - side["qdq_test_acc"]) * 100, abs=1e-3)
        assert side["qdq_test_acc"] >= fp32 - 0.01  # within 1 point on mnist5k
    assert record["int8_drop_ok"] == record["verdicts"]["int8"]["ok"]
    assert record["int8_drop_points"] == record["verdicts"]["int8"]["drop_points"]
    for name in ("fp32", "fp16"):  # the other files: verified or not written, and export.json says the same
        side = json.loads((out / f"model.{name}.json").read_text())
        assert side["verdict"]["ok"] and record["verdicts"][name] == side["verdict"]


def test_int8_cpu_has_7_bit_weights_that_cannot_saturate_x86_kernels(exported):
    from gemdeploy.calibration.int8 import qdq_report
    from gemdeploy.calibration.x86_emulation import max_abs_weight

    out = exported / "export"
    proto = onnx.load(str(out / "model.int8-cpu.onnx"))
    report = qdq_report(proto)
    assert report["symmetric"] and all(v["weight_int8"] and v["per_channel"] for v in report["layers"].values())
    assert max_abs_weight(proto) <= 64  # 2 x 255 x 64 = 32,640 <= 32,767: no int16 pair sum can saturate
    side = json.loads((out / "model.int8-cpu.json").read_text())
    assert side["calibration"]["reduce_range"] is True and side["calibration"]["scheme"] == "cpu"
    assert side["cpu_portability"]["saturation_free_on_x86"] and side["cpu_portability"]["pair_sum_bound"] <= 32767
    assert json.loads((out / "model.int8.json").read_text())["cpu_portability"]["saturation_free_on_x86"] is False
    assert json.loads((out / "export.json").read_text())["sizes"]["int8_cpu_bytes"] == side["bytes"]


def test_int8_cpu_is_exact_under_the_emulated_x86_kernels_without_vnni(exported):
    """The emulation of ONNX Runtime's u8 x s8 kernels without VNNI (saturating int16 pair sums) gives the
    7-bit file's Q/DQ numerics back: nothing saturates."""
    from gemdeploy.calibration.x86_emulation import emulate
    from gemdeploy.run.artifacts import RunArtifacts

    images = RunArtifacts.open(exported).data("cpu").sample_images(128, "test").float().numpy()
    path = exported / "export" / "model.int8-cpu.onnx"
    exact = ox.ort_run(ox.ort_session(path, optimize=False), images)
    emulated = emulate(path, images)
    assert (emulated.argmax(1) == exact.argmax(1)).mean() >= 0.99
    assert np.abs(emulated - exact).max() <= 2 * np.abs(exact).max() / 100  # requantization rounding only


def test_int8_verdict_names_the_cause_and_the_fix():
    from gemdeploy.exporters.precisions.int8 import int8_verdict

    avx2 = {"pair_sums_saturate": True, "description": "AVX2 without VNNI"}
    # The case: the Q/DQ numerics are fine, ONNX Runtime's kernels on an AVX2 CPU are not.
    v = int8_verdict("int8", 0.926, 0.927, 0.711, 1.0, avx2)
    assert not v["ok"] and v["cause"] == "cpu-kernels" and v["drop_points"] == pytest.approx(21.5)
    assert "without VNNI" in v["message"] and "AVX2 without VNNI" in v["message"]
    assert "--precision int8-cpu" in v["advice"] and "TensorRT" in v["advice"]
    assert "calib" not in v["advice"]
    # A loss in the quantized model itself: calibration advice, whatever the CPU.
    v = int8_verdict("int8", 0.926, 0.80, 0.80, 1.0, avx2)
    assert not v["ok"] and v["cause"] == "quantization" and "--calib-method" in v["advice"]
    # Within the limit both ways: ok, no advice.
    v = int8_verdict("int8-cpu", 0.926, 0.925, 0.924, 1.0, {"pair_sums_saturate": False, "description": "AVX-512 VNNI"})
    assert v["ok"] and v["cause"] is None and v["advice"] is None
    assert int8_verdict("int8", None, None, None, 1.0, avx2)["ok"]  # synthetic data: nothing to judge


@pytest.mark.slow
def test_export_reports_a_cpu_only_int8_drop_with_its_cause_and_exit_3(exported, tmp_path):
    """What export says on an AVX2 machine without VNNI (its measurements written into the sidecar, the file
    kept): the warning names the CPU kernels and int8-cpu, not calibration; sidecar and export.json agree."""
    run = tmp_path / "run"
    shutil.copytree(exported, run)
    out = run / "export"
    side = json.loads((out / "model.int8.json").read_text())
    fp32 = json.loads((out / "export.json").read_text())["accuracy"]["fp32"]
    side["verification"]["onnxruntime_cpu"]["cpu"] = {"pair_sums_saturate": True, "description": "AVX2 without VNNI"}
    side.update(qdq_test_acc=fp32, test_acc=fp32 - 0.2, verdict={**side["verdict"], "max_drop_points": None})
    (out / "model.int8.json").write_text(json.dumps(side))
    proc = cli("export", run, "--precision", "int8", "--precision", "int8-cpu")
    assert proc.returncode == 3, proc.stderr
    warning = [line for line in proc.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warning) == 1 and "model.int8.onnx" in warning[0] and "without VNNI" in warning[0]
    assert "--precision int8-cpu" in warning[0] and "--calib-method" not in warning[0]
    record = json.loads((out / "export.json").read_text())
    side = json.loads((out / "model.int8.json").read_text())
    assert side["verdict"] == record["verdicts"]["int8"] and side["verdict"]["cause"] == "cpu-kernels"
    assert record["int8_drop_ok"] is False and side["verification"]["ok"] is False
    assert record["verdicts"]["int8-cpu"]["ok"]  # the 7-bit file is judged on its own measurements


@pytest.mark.slow
def test_second_export_reuses_the_calibration_cache(exported):
    out = exported / "export"
    first = json.loads((out / "model.int8.json").read_text())["calibration"]
    assert first["cache_hit"] is False
    cache = Path(first["cache"])
    assert cache.is_file()
    before = cache.stat().st_mtime_ns
    proc = cli("export", exported, "--precision", "int8", "--calib-samples", "256", "--overwrite",
                   "--no-sparse-storage", "--quiet")
    assert proc.returncode == 0, proc.stderr
    second = json.loads((out / "model.int8.json").read_text())["calibration"]
    assert second["cache_hit"] is True and second["cache_key"] == first["cache_key"]
    assert cache.stat().st_mtime_ns == before


@pytest.mark.slow
def test_reexport_keeps_current_files_and_refuses_files_from_other_weights(exported):
    out = exported / "export"
    before = {n: ((out / n).read_bytes(), (out / n).stat().st_mtime_ns) for n in ("model.fp32.onnx", "model.int8.onnx")}
    proc = cli("export", exported, "--precision", "int8", "--precision", "int8-cpu")  # nothing to do
    assert proc.returncode == 0, proc.stderr
    assert "kept" in proc.stdout
    for n, (data, mtime) in before.items():
        assert (out / n).read_bytes() == data and (out / n).stat().st_mtime_ns == mtime, n
    # A file exported from other weights (here: its sidecar says so) is never replaced without --overwrite.
    side = json.loads((out / "model.int8.json").read_text())
    (out / "model.int8.json").write_text(json.dumps({**side, "source_sha256": "0" * 64}))
    assert_clean_error(cli("export", exported, "--precision", "int8"), "model.int8.onnx", "other weights",
                       "--overwrite")
    assert (out / "model.int8.onnx").read_bytes() == before["model.int8.onnx"][0]
    (out / "model.int8.json").write_text(json.dumps(side))


@pytest.mark.slow
def test_a_precision_is_added_next_to_the_verified_files(lenet_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(lenet_run, run, ignore=shutil.ignore_patterns("export"))
    cli("export", run, "--quiet", check=True)
    fp32 = (run / "export" / "model.fp32.onnx").read_bytes()
    cli("export", run, "--precision", "fp16", "--quiet", check=True)
    assert (run / "export" / "model.fp32.onnx").read_bytes() == fp32  # kept, not redone
    record = json.loads((run / "export" / "export.json").read_text())
    assert set(record["artifacts"]) >= {"fp32", "fp16"} and record["exported_now"] == ["fp16"]
    assert record["accuracy"]["fp16"] is not None


@pytest.mark.slow
def test_an_export_killed_between_its_renames_is_redone_by_a_plain_rerun(lenet_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(lenet_run, run, ignore=shutil.ignore_patterns("export"))
    cli("export", run, "--quiet", check=True)
    out = run / "export"
    (out / "model.fp32.json").unlink()  # the file was renamed into place, its sidecar never written
    (out / ".staging-dead").mkdir()  # and a staging folder of a killed export
    (out / ".staging-dead" / "model.fp32.onnx").write_bytes(b"unverified")
    proc = cli("export", run)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "model.fp32.json").read_text())["verification"]["ok"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
@pytest.mark.skipif(tensorrt_status()["available"] and cuda_status()["available"],
                    reason="TensorRT and a GPU are present: the build test covers --trt")
def test_export_trt_without_tensorrt_names_what_is_missing_and_keeps_onnx(lenet_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(lenet_run, run, ignore=shutil.ignore_patterns("export"))
    proc = cli("export", run, "--trt", "--quiet", "--no-sparse-storage")
    missing = "TensorRT" if not tensorrt_status()["available"] else "CUDA GPU"
    assert_clean_error(proc, "--trt needs TensorRT and a CUDA GPU", missing, "pip install tensorrt")
    assert (run / "export" / "model.fp32.onnx").is_file()
    assert json.loads((run / "export" / "export.json").read_text())["tensorrt"] == {"built": False}


def _copy_without(lenet_run, tmp_path, *drop) -> Path:
    run = tmp_path / "run"
    shutil.copytree(lenet_run, run, ignore=shutil.ignore_patterns("export", *drop))
    return run


def test_run_without_fine_tuned_ticket_is_refused(lenet_run, tmp_path):
    run = _copy_without(lenet_run, tmp_path, "weights.safetensors", "compact.*")
    assert_clean_error(cli("export", run), "no fine-tuned ticket")
    assert not (run / "export").exists() or not any((run / "export").iterdir())


def test_corrupt_weights_are_refused(lenet_run, tmp_path):
    run = _copy_without(lenet_run, tmp_path)
    (run / "weights.safetensors").write_bytes(b"\x00garbage" * 10)
    assert_clean_error(cli("export", run), "corrupt")
    assert not (run / "export").exists() or not any((run / "export").iterdir())


def test_bad_options_are_one_line_errors(lenet_run, tmp_path):
    assert_clean_error(cli("export", tmp_path / "nope"), "not a gemdeploy run directory")
    assert_clean_error(cli("export", lenet_run, "--precision", "bf16"), "unknown precision", "int8")
    assert_clean_error(cli("export", lenet_run, "--calib-method", "kl"), "unknown calibration method", "entropy")


def _trt_missing() -> str | None:
    trt, cuda = tensorrt_status(), cuda_status()
    if not trt["available"]:
        return trt["reason"]
    if not cuda["available"]:
        return f"no CUDA GPU: {cuda['reason']}"
    return None


@pytest.mark.skipif(_trt_missing() is not None, reason=f"TensorRT engine build needs it: {_trt_missing()}")
@pytest.mark.parametrize("precision", [p for p in PRECISIONS.names() if PRECISIONS.get(p).engine and p != "fp32"])
def test_tensorrt_engine_build_with_sparse_weights(lenet_run, tmp_path, precision):
    run = _copy_without(lenet_run, tmp_path)
    cache = tmp_path / "timing.cache"
    proc = cli("export", run, "--trt", "--precision", precision, "--timing-cache", cache, "--max-batch", "64")
    assert proc.returncode in (0, 3), proc.stderr
    side = json.loads((run / "export" / f"engine.{precision}.json").read_text())
    assert side["precision"] == precision and side["profile"]["max"][0] == 64 and side["tensorrt"]
    assert (run / "export" / f"engine.{precision}.plan").stat().st_size > 0 and cache.is_file()
    proc = cli("export", run, "--trt", "--precision", precision, "--timing-cache", cache, "--max-batch", "64",
                   "--overwrite")
    assert json.loads((run / "export" / f"engine.{precision}.json").read_text())["timing_cache_reused"] is True
