"""GPU inference as deployed (issue 26): which layers 2:4 kernels can run (real models' shapes), the per-layer
decision from given timings, convolutions lowered to the GEMM they are (checked against the conv on the CPU), the
fp16/bf16 CUDA-graph and 2:4 backends (CUDA tests skip without a GPU), and the benchmark's smoke run."""

from __future__ import annotations

import sys

import pytest
import torch
import torchvision
from torch import nn

from gemdeploy.bench.backends import BACKENDS
from gemdeploy.bench.semi_structured import ConvAsGemm, GemmLinear, choose_layers, lowered
from gemdeploy.sparsity import kernels24 as k24

from conftest import REPO

if str(REPO) not in sys.path:  # benchmarks/ is not installed: import it from the checkout
    sys.path.insert(0, str(REPO))
from benchmarks.gpu_inference import nm_ticket  # noqa: E402  (random 2:4 weights, as the benchmark makes them)

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU: CUDA graphs and torch's semi-structured 2:4 "
                                                 "kernels (cuSPARSELt/CUTLASS) run on CUDA only")


def meta_model(name: str) -> nn.Module:
    """A torchvision architecture with no storage: shapes only, instantly."""
    with torch.device("meta"):
        return getattr(torchvision.models, name)().eval()


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {r["layer"]: r for r in rows}


def test_resnet50_layers_that_can_ever_run_on_24_kernels():
    gemms = k24.layer_gemms(meta_model("resnet50"), (3, 224, 224))
    convs_and_linears = [n for n, m in meta_model("resnet50").named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [g.name for g in gemms] == convs_and_linears  # every layer, in execution order
    g = {x.name: x for x in gemms}
    # Conv weights are [K, R*S*C] GEMMs with one column per output position.
    assert (g["layer4.2.conv2"].rows, g["layer4.2.conv2"].inner, g["layer4.2.conv2"].positions) == (512, 4608, 49)
    assert (g["layer1.0.conv1"].inner, g["layer1.0.conv1"].positions) == (64, 56 * 56)
    assert g["layer2.0.conv2"].stride == (2, 2) and g["layer2.0.conv2"].positions == 28 * 28
    rows = by_name(k24.can_benefit(gemms))
    assert rows["conv1"]["verdict"] == "never" and "3 input channels" in rows["conv1"]["why"]
    # 1,000 classes: not a multiple of cuSPARSELt's 16 rows, nor of CUTLASS's 32.
    assert rows["fc"]["verdict"] == "never" and "[1000, 2048]" in rows["fc"]["why"]
    assert by_name(k24.can_benefit(gemms, kernels="cutlass"))["fc"]["verdict"] == "never"
    assert rows["layer1.0.conv1"]["verdict"] == "narrow"  # 64 channels: runs sparse, rarely pays
    assert rows["layer4.2.conv2"]["verdict"] == "candidate"
    wide = [n for n, r in rows.items() if r["verdict"] == "candidate"]
    assert wide and all(min(g[n].in_channels, g[n].out_channels) >= k24.WIDE_CHANNELS for n in wide)
    line = k24.benefit_line(list(rows.values()))
    assert f"{len(rows) - 2} of {len(rows)} layers can run sparse" in line and "conv1" in line and "fc" in line


def test_grouped_and_small_layers_never_run_sparse():
    rows = by_name(k24.can_benefit(k24.layer_gemms(meta_model("mobilenet_v3_small"), (3, 224, 224))))
    depthwise = rows["features.1.block.0.0"]
    assert depthwise["verdict"] == "never" and "grouped conv" in depthwise["why"]
    assert rows["features.1.block.1.fc1"]["verdict"] == "never"  # squeeze-excitation 16 -> 8: too small a GEMM
    resnext = by_name(k24.can_benefit(k24.layer_gemms(meta_model("resnext50_32x4d"), (3, 224, 224))))
    assert "groups=32" in resnext["layer1.0.conv2"]["why"]


def test_kernel_shape_tables_match_torch():
    """Our copy of the kernels' shape rules is torch's own (where this torch exposes its tables)."""
    for kernels, cls in (("cusparselt", "SparseSemiStructuredTensorCUSPARSELT"),
                         ("cutlass", "SparseSemiStructuredTensorCUTLASS")):
        table = getattr(getattr(torch.sparse, cls, None), "_DTYPE_SHAPE_CONSTRAINTS", None)
        if table is None:
            pytest.skip(f"this torch has no torch.sparse.{cls}._DTYPE_SHAPE_CONSTRAINTS")
        names = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int8: "int8"}
        theirs = {names[d]: (c.sparse_min_rows, c.sparse_min_cols) for d, c in table.items() if d in names}
        assert k24.KERNEL_SHAPES[kernels] == theirs


def test_decision_needs_a_measured_margin():
    g = k24.LayerGemm("layer4.0.conv2", "Conv2d", 512, 512, (3, 3), (1, 1), positions=49)
    fast = k24.layer_verdict(g, 256, dense_s=2e-3, sparse_s=1.5e-3)
    assert fast["sparse"] and fast["speedup"] == pytest.approx(4 / 3) and fast["columns"] == 256 * 49
    assert "faster" in fast["why"] and "1.5 ms" in fast["why"] and "2 ms" in fast["why"]
    close = k24.layer_verdict(g, 256, dense_s=1.0e-3, sparse_s=0.97e-3)
    assert not close["sparse"] and "margin" in close["why"]
    slow = k24.layer_verdict(g, 1, dense_s=1e-5, sparse_s=3e-5)
    assert not slow["sparse"] and slow["why"].startswith("slower")
    blocked = k24.layer_verdict(g, 1, blockers=["grouped conv (groups=32)"])
    assert not blocked["sparse"] and blocked["dense_ms"] is None and "groups=32" in blocked["why"]
    line = k24.verdict_line([fast, close, slow, blocked], 256)
    assert line.startswith("batch 256: 1 of 4 layers on 2:4 weights") and "2 measured no faster" in line
    assert "1 cannot run sparse" in line


@pytest.mark.parametrize("kernel,stride,padding,channels", [
    (1, 1, 0, 64),  # ResNet-50 bottleneck 1x1: a linear over channels, no copy
    (1, 2, 0, 64),  # its strided 1x1 downsample
    (3, 2, 1, 32),  # strided 3x3 (torchvision's v1.5 stride on the 3x3)
    (3, 1, 1, 16),
])
def test_conv_lowered_to_its_gemm_computes_the_conv(kernel, stride, padding, channels):
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, 24, kernel, stride=stride, padding=padding, bias=True).eval()
    x = torch.randn(2, channels, 14, 14).contiguous(memory_format=torch.channels_last)
    gemm = lowered(conv, lambda w: w.clone())  # a dense stand-in for the sparse weight
    assert isinstance(gemm, ConvAsGemm) and gemm.weight.shape == (24, kernel * kernel * channels)
    with torch.no_grad():
        torch.testing.assert_close(gemm(x), conv(x), rtol=1e-4, atol=1e-5)
    lin = nn.Linear(32, 8)
    assert isinstance(lowered(lin, lambda w: w.clone()), GemmLinear)


def test_choose_layers_swaps_exactly_the_layers_its_verdicts_name():
    """On the CPU with a dense stand-in for the sparse weight: every step but the sparse GEMM itself."""
    from gemdeploy.models import build_model

    torch.manual_seed(0)
    model = nm_ticket(build_model("resnet20", (3, 16, 16), 10)).eval()  # small images: the CPU here is shared
    x = torch.randn(2, 3, 16, 16)
    swapped, verdicts = choose_layers(model, x, lambda w: w.clone(), iters=2, warmup=0)
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [v["layer"] for v in verdicts] == names
    v = by_name(verdicts)
    assert not v["conv1"]["sparse"] and "3 input channels" in v["conv1"]["why"]
    assert not v["fc"]["sparse"] and "[10, 64]" in v["fc"]["why"]
    measured = [r for r in verdicts if r["dense_ms"] is not None]
    assert len(measured) == len(names) - 2 and all(r["sparse_ms"] > 0 for r in measured)
    modules = dict(swapped.named_modules())
    for r in verdicts:  # a layer runs lowered exactly when its verdict says sparse
        assert isinstance(modules[r["layer"]], (ConvAsGemm, GemmLinear)) == r["sparse"], r
        assert r["sparse"] == k24.decide(r["dense_ms"], r["sparse_ms"])[0] if r["dense_ms"] else not r["sparse"]
    with torch.no_grad():
        torch.testing.assert_close(swapped(x), model(x), rtol=1e-4, atol=1e-4)
    every, _ = choose_layers(model, x, lambda w: w.clone(), measure=False)
    lowered_now = [n for n, m in every.named_modules() if isinstance(m, (ConvAsGemm, GemmLinear))]
    assert lowered_now == [r["layer"] for r in measured]
    dense_model = build_model("resnet20", (3, 16, 16), 10).eval()  # weights that do not hold 2:4: nothing to swap
    _, dense_verdicts = choose_layers(dense_model, x, lambda w: w.clone(), measure=False)
    assert not any(r["sparse"] for r in dense_verdicts)
    assert by_name(dense_verdicts)["layers.0.conv1"]["why"] == "weights do not hold 2:4"


def test_cuda_backends_are_registered_and_say_what_they_need():
    """Every CUDA backend of the registry names its reason on a machine without one; the graph backends compare
    with a registered fp32 backend."""
    for name, cls in BACKENDS.items():
        backend = cls()
        if backend.fp32_baseline is not None:
            assert backend.fp32_baseline in BACKENDS and BACKENDS.get(backend.fp32_baseline)().device == backend.device
        if backend.device == "cuda" and not CUDA:
            assert backend.unavailable(), name
    assert {"pytorch-cuda-fp16", "pytorch-cuda-bf16", "pytorch-cuda-2:4"} <= set(BACKENDS.names())


def test_rows_without_fp32_compare_with_their_named_baseline():
    from gemdeploy.bench.measure import add_relative

    def row(run, backend, precision, ms, baseline=None):
        return {"run": run, "backend": backend, "precision": precision, "batch": 64, "device": "cuda",
                "test_acc": 0.9, "latency_ms": {"median": ms}, "fp32_baseline_backend": baseline}

    rows = [row("dense", "pytorch-cuda", "fp32", 8.0), row("dense", "pytorch-cuda-fp16", "fp16", 4.0, "pytorch-cuda"),
            row("ticket", "pytorch-cuda-fp16", "fp16", 1.0, "pytorch-cuda")]
    add_relative(rows, "dense")
    assert rows[2]["baseline"] == "dense fp32 on pytorch-cuda" and rows[2]["speedup_vs_dense_fp32"] == 8.0
    assert rows[2]["speedup_vs_dense_same_precision"] == 4.0


def test_gpu_description():
    from gemdeploy.machine import describe_gpu, gpu_info

    if not CUDA:
        assert gpu_info() is None and describe_gpu(None) == "no GPU"
    info = {"name": "NVIDIA H200", "capability": "9.0", "memory_gib": 139.8, "max_sm_clock_mhz": 1980,
            "max_memory_clock_mhz": 2619, "clocks_now": "unknown: pynvml is not installed"}
    text = describe_gpu(info)
    assert "NVIDIA H200" in text and "1980 MHz" in text and "unknown: pynvml" in text


@needs_cuda
def test_cuda_graph_runner_matches_eager_fp16():
    from gemdeploy.bench.backends.cuda_graph import CudaGraphRunner
    from gemdeploy.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet20", (3, 32, 32), 10).eval()
    x = torch.randn(8, 3, 32, 32)
    want = model(x).detach().numpy()
    runner = CudaGraphRunner(model, torch.float16)
    got = runner.predict(x)
    assert abs(got - want).max() <= 2e-2 * abs(want).max()
    assert runner.predict(x[:3]).shape == (3, 10) and len(runner.graphs) == 2  # one graph per batch size
    assert all(t > 0 for t in runner.time(x, 5, 2))


@needs_cuda
def test_semi_structured_runner_reports_every_layer():
    if torch.cuda.get_device_capability(0) < (8, 0):
        pytest.skip("needs 2:4 sparse tensor cores (compute capability 8.0+)")
    from gemdeploy.bench.backends.cuda_graph import SemiStructuredRunner
    from gemdeploy.models import build_model

    torch.manual_seed(0)
    model = nm_ticket(build_model("resnet20", (3, 32, 32), 10)).eval()
    x = torch.randn(64, 3, 32, 32)
    runner = SemiStructuredRunner(model)
    logits = runner.predict(x)
    want = model(x).detach().numpy()
    assert (logits.argmax(1) == want.argmax(1)).mean() >= 0.9
    assert all(t > 0 for t in runner.time(x, 5, 2))
    notes = runner.notes(64)["sparse24"]
    assert len(notes["layers"]) == 22 and notes["summary"].startswith("batch 64:")
    assert notes["max_abs_logit_diff"] <= 5e-2 * max(notes["logit_scale"], 1.0)


@pytest.mark.slow
def test_mine_and_export_say_up_front_which_layers_24_kernels_can_run(tmp_path):
    import json
    import os
    import subprocess

    from conftest import cli

    out = tmp_path / "conv4-24"
    mined = cli("mine", "--model", "conv4", "--data", "digits", "--sparsity", "0.5", "--pattern", "2:4", "--out", out,
                "--epochs", "1", "--finetune-epochs", "1", check=True)
    summary = json.loads((out / "summary.json").read_text())
    said = summary["sparse24_kernels"]
    # Said up front on stderr (rich's log wraps it), before the progress bars.
    assert mined.stderr.index(said["line"][:45]) < mined.stderr.index("mine ")
    assert "never: 0.0 (1 input channels" in said["line"]  # the first conv reads one grey channel
    assert said["can_run"] >= 1 and "2:4 GPU kernels" in mined.stdout
    exported = cli("export", out, check=True)
    record = json.loads((out / "export" / "export.json").read_text())
    kernels = record["sparse24_kernels"]
    assert kernels["line"] in " ".join(exported.stdout.split())
    layers = {r["layer"]: r for r in kernels["layers"]}
    assert layers["0.0"]["verdict"] == "never"
    # The mined 2:4 weights hold the pattern in every layer the kernels can take (the export checks the weights).
    assert kernels["can_run"] == said["can_run"]
    assert all("do not hold" not in r["why"] for r in kernels["layers"])

    # bench with the 2:4 backend's runner on the CPU (a dense stand-in for the sparse weight, registered in a
    # child process only): every row carries its per-layer verdicts into bench.json, the table and report.md.
    code = CPU_24_BACKEND + f"main(['bench', {str(out)!r}, '-b', '2', '-b', '4', '--iters', '2', '--warmup', '1', " \
                            f"'--backend', 'test-2:4-cpu', '--out', {str(tmp_path / 'bench')!r}])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    bench = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert [r["batch"] for r in bench["rows"]] == [2, 4] and bench["gpu"] is None
    for r in bench["rows"]:
        verdicts = r["sparse24"]["layers"]
        assert [v["layer"] for v in verdicts] == [x["layer"] for x in kernels["layers"]]
        assert r["sparse24"]["summary"].startswith(f"batch {r['batch']}: ")
        assert r["sparse24"]["summary"] in " ".join(proc.stdout.split())  # one line per batch under the table
        assert all(v["dense_ms"] is not None for v in verdicts if layers[v["layer"]]["verdict"] != "never")
    report = (tmp_path / "bench" / "report.md").read_text()
    assert "2:4 verdict per layer" in report and "| 0.0 |" in report and "img/s" in report


CPU_24_BACKEND = """
import torch
from gemdeploy.bench.backends import BACKENDS
from gemdeploy.bench.backends.base import Artifact
from gemdeploy.bench.backends.cuda_graph import SemiStructuredRunner
from gemdeploy.bench.backends.pytorch import TorchCpu
from gemdeploy.cli.app import main

class CpuStandIn(TorchCpu):
    name = "test-2:4-cpu"

    def artifacts(self, run, threads):
        return [Artifact("fp32", a.label + " 2:4 stand-in", a.path,
                         lambda a=a: SemiStructuredRunner(a.make().model, torch.float32, "cpu",
                                                          sparsify=lambda w: w.clone(), layer_iters=2))
                for a in super().artifacts(run, threads)]

BACKENDS.register("test-2:4-cpu")(CpuStandIn)
"""


@pytest.mark.slow
def test_gpu_inference_benchmark_smoke_runs_every_row_on_the_cpu(tmp_path):
    """benchmarks/gpu_inference.py --smoke: every planned row measured or saying why, every 2:4 row with its
    per-layer verdicts, the goals stated, and BENCHMARKS.md untouched."""
    import json
    import subprocess

    before = (REPO / "BENCHMARKS.md").read_bytes()
    out, md = tmp_path / "gi.json", tmp_path / "gi.md"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_inference", "--smoke", "--out", out, "--markdown", md],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (REPO / "BENCHMARKS.md").read_bytes() == before
    result = json.loads(out.read_text())
    assert result["meta"]["smoke"] and "not mined" in result["meta"]["ticket_note"]
    rows = result["rows"]
    assert {(r["model"], r["ticket"]) for r in rows} == {(m, t) for m in ("resnet50", "resnet20")
                                                          for t in ("dense", "channel 50%", "2:4")}
    for r in rows:
        if r["mode"] == "fp16 cuda-graph":
            assert r["status"] == "not measured" and r["reason"] == "needs CUDA"
        else:
            assert r["status"] == "measured", r
            assert r["throughput_ips"] == pytest.approx(r["batch"] / (r["latency_ms"]["median"] / 1e3))
            assert r["latency_ms"]["p10"] <= r["latency_ms"]["median"] <= r["latency_ms"]["p99"]
    sparse_rows = [r for r in rows if r["mode"].startswith("2:4")]
    assert {r["ticket"] for r in sparse_rows} == {"2:4"} and len(sparse_rows) == 4
    for r in sparse_rows:
        layers = r["sparse24"]["layers"]
        assert layers and all(v["why"] for v in layers)
        assert r["sparse24"]["max_abs_logit_diff"] <= 1e-4 * max(1.0, r["sparse24"]["logit_scale"])
    # The channel ticket is thinner; the 2:4 ticket keeps the architecture with half the weights of covered layers.
    t = result["tickets"]
    assert t["resnet50 channel 50%"]["params"] < 0.5 * t["resnet50 dense"]["params"]
    assert t["resnet50 2:4"]["params"] == t["resnet50 dense"]["params"]
    assert t["resnet50 2:4"]["nonzero_params"] < 0.6 * t["resnet50 dense"]["nonzero_params"]
    assert any(g.startswith("channel-50% ResNet-50") for g in result["goals"])
    text = md.read_text()
    assert "2:4 verdict per layer" in text and "### resnet50" in text and "### Goals (as measured)" in text


def test_benefit_of_a_model_that_cannot_run_says_so_instead_of_failing():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 16)

        def forward(self, x):
            raise RuntimeError("needs two inputs")

    said = k24.model_benefit(Broken(), (16,))
    assert said["can_run"] is None and said["layers"] == [] and "not determined" in said["line"]
    ok = k24.model_benefit(nn.Sequential(nn.Flatten(), nn.Linear(64, 32)), (64,))
    assert ok["can_run"] == 1 and ok["wide"] == 0 and ok["layers"][0]["verdict"] == "narrow"
