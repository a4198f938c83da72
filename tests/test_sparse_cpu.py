"""The sparse CPU runtime (gemdeploy.sparse_cpu): every registered model against PyTorch on real digits, the export
through the real CLI on real Gem-Miner tickets, the bench backend, and the guarantees of the file and the module."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_clean_error, cli
from gemdeploy.data import load_data
from gemdeploy.errors import GemdeployError
from gemdeploy.models import MODELS, build_model
from gemdeploy.sparse_cpu import SparseModel, load
from gemdeploy.sparse_cpu.build import trace
from gemdeploy.sparse_cpu.runtime import read, save
from gemdeploy.sparse_cpu.tune import force, tune

DENSITY = 0.014  # Gem-Miner's 98.6% sparsity


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def _ticket(name: str, data, density: float = DENSITY) -> torch.nn.Module:
    """A registered model at the ticket's density (largest |w| per layer kept) with BatchNorm statistics as after
    training: the structure and arithmetic of a real ticket, built in milliseconds."""
    torch.manual_seed(0)
    model = build_model(name, data.input_shape, data.num_classes).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                w = m.weight
                k = max(1, int(round(density * w.numel())))
                cut = w.abs().flatten().kthvalue(w.numel() - k + 1).values
                w.mul_((w.abs() >= cut).float())
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


def _test_split(data) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in data.test.batches(256)])
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


def _assert_exact(model: torch.nn.Module, runtime, images: np.ndarray, labels: np.ndarray) -> None:
    with torch.no_grad():
        ref = model(torch.from_numpy(images)).numpy()
    got = runtime(images)
    assert got.shape == ref.shape and got.dtype == np.float32
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() <= 1e-4 * scale, (np.abs(got - ref).max(), scale)
    assert (got.argmax(1) == labels).mean() == (ref.argmax(1) == labels).mean()  # identical test accuracy


# ---------------------------------------------------------------- every registered model, every kernel


IMAGENET_SIZED = ("resnet18", "resnet50", "mobilenet_v2")  # torchvision's: seconds each on 2 cores


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in IMAGENET_SIZED else n
                                  for n in MODELS.names()])
def test_every_registered_model_runs_exactly_on_the_test_split(name, digits):
    model = _ticket(name, digits)
    images, labels = _test_split(digits)
    graph, tensors = trace(model, digits.input_shape, name)
    graph = tune(graph, tensors, images, batches=(1, 16), budget_s=0.0, min_reps=1)
    _assert_exact(model, SparseModel(graph, tensors), images, labels)
    # no BatchNorm left: every one folded into the conv/linear before it (these models have no other kind)
    assert not [op for op in graph["ops"] if op["op"] == "affine"]
    # each layer's weights are exactly the ticket's nonzeros, in CSR
    nnz = sum(int((m.weight != 0).sum()) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    assert sum(op["nnz"] for op in graph["ops"] if op["op"] in ("conv2d", "linear")) == nnz


@pytest.mark.parametrize("kernel", ["csr", "unrolled", "dense"])
@pytest.mark.parametrize("name", ["conv4", "resnet20", "vgg16"])
def test_each_kernel_alone_is_exact(name, kernel, digits):
    model = _ticket(name, digits)
    images, labels = _test_split(digits)
    graph, tensors = trace(model, digits.input_shape, name)
    forced = force(graph, kernel)
    for op in forced["ops"]:  # linear layers have no unrolled form: they read their input in place already
        if op["op"] == "linear" and kernel == "unrolled":
            op["kernel"] = {"1": "csr"}
    _assert_exact(model, SparseModel(forced, tensors), images, labels)


def test_kernels_are_timed_per_layer_and_batch_and_the_faster_one_is_kept(digits):
    model = _ticket("resnet20", digits)
    images, _ = _test_split(digits)
    graph, tensors = trace(model, digits.input_shape, "resnet20")
    tuned = tune(graph, tensors, images, batches=(1, 32), budget_s=0.0, min_reps=2)
    assert tuned["tuned_batches"] == [1, 32]
    layers = [op for op in tuned["ops"] if op["op"] in ("conv2d", "linear")]
    assert len(layers) == 19 + 2 + 1  # 19 convs + 2 projection shortcuts + fc
    for op in layers:
        assert set(op["timings_ms"]) == {"1", "32"}
        for b, times in op["timings_ms"].items():
            expected = {"csr", "unrolled", "dense"} if op["op"] == "conv2d" else {"csr", "dense"}
            assert set(times) == expected and all(t > 0 for t in times.values())
            assert op["kernel"][b] == min(times, key=times.get)


def test_threads_and_batch_sizes_do_not_change_the_logits(digits):
    model = _ticket("resnet20", digits)
    images, _ = _test_split(digits)
    graph, tensors = trace(model, digits.input_shape, "resnet20")
    tuned = tune(graph, tensors, images, batches=(1, 16), budget_s=0.0, min_reps=1)
    ref = SparseModel(tuned, tensors, threads=1)(images[:64])
    # an untuned graph has no timings to say a chunk is too small to hand over: it always splits the batch
    for g in (graph, tuned):
        for threads in (2, 3):
            many = SparseModel(g, tensors, threads=threads)
            if g is graph:
                assert many.chunks(64) == threads and many.chunks(1) == 1
            np.testing.assert_allclose(many(images[:64]), ref, rtol=0, atol=1e-5 * np.abs(ref).max())
            for b in (1, 5):  # batch 1 and an odd batch (the batch-1 kernels; an uneven split)
                np.testing.assert_allclose(many(images[:b]), ref[:b], rtol=0, atol=1e-5 * np.abs(ref).max())
            many.close()


def test_torch_engine_matches_the_default_engine(digits):
    model = _ticket("resnet20", digits)
    images, labels = _test_split(digits)
    images, labels = images[:96], labels[:96]
    graph, tensors = trace(model, digits.input_shape, "resnet20")
    for kernel in ("csr", "unrolled", "dense"):
        forced = force(graph, kernel)
        for op in forced["ops"]:
            if op["op"] == "linear" and kernel == "unrolled":
                op["kernel"] = {"1": "csr"}
        _assert_exact(model, SparseModel(forced, tensors, engine="torch", threads=2), images, labels)


def test_a_grouped_conv_a_standalone_batchnorm_and_relu6_run_exactly(digits):
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 8, 3, padding=1)
            self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)
            self.bn = nn.BatchNorm2d(8)
            self.act = nn.ReLU6()
            self.pool = nn.AvgPool2d(2)
            self.fc = nn.Linear(8 * 2 * 2, 10)

        def forward(self, x):
            y = self.a(x)
            z = self.bn(y)  # y is read twice: this BatchNorm cannot be folded into self.a
            return self.fc(torch.flatten(self.pool(self.act(self.dw(z) + z[:, :, ::2, ::2] * 0 + self.dw(y))), 1))

    with pytest.raises(GemdeployError, match="getitem"):  # slicing is not an op the runtime has
        trace(Net().eval(), digits.input_shape, "net")

    class Net2(Net):
        def forward(self, x):
            y = self.a(x)
            z = self.bn(y)
            return self.fc(torch.flatten(self.pool(self.act(self.dw(z) + self.dw(y))), 1))

    torch.manual_seed(1)
    model = Net2().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.3, 0.3)
        model.bn.running_var.uniform_(0.5, 2.0)
    graph, tensors = trace(model, digits.input_shape, "net")
    kinds = [op["op"] for op in graph["ops"]]
    assert "affine" in kinds and any(op.get("activation") == ["clip", 0.0, 6.0] for op in graph["ops"])
    images, labels = _test_split(digits)
    _assert_exact(model, SparseModel(graph, tensors), images, labels)


@pytest.mark.parametrize("layer, named", [(torch.nn.GELU(), "GELU"), (torch.nn.LayerNorm([1, 8, 8]), "LayerNorm"),
                                          (torch.nn.Upsample(scale_factor=2), "Upsample")])
def test_an_unsupported_layer_is_refused_in_one_line_naming_it(layer, named, digits):
    model = torch.nn.Sequential(layer, torch.nn.Flatten(), torch.nn.LazyLinear(10))
    model(torch.zeros(1, *digits.input_shape))  # materialize the lazy layer
    with pytest.raises(GemdeployError) as err:
        trace(model.eval(), digits.input_shape, "custom")
    msg = str(err.value)
    assert "\n" not in msg and f"no {named}" in msg and "runs Conv2d" in msg


# ---------------------------------------------------------------- the file and the module


def test_file_roundtrip_is_safetensors_with_a_json_graph_and_bad_files_are_refused(digits, tmp_path):
    model = _ticket("conv4", digits)
    images, labels = _test_split(digits)
    graph, tensors = trace(model, digits.input_shape, "conv4")
    path = tmp_path / "m.safetensors"
    save(path, graph, tensors)
    raw = path.read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])  # the safetensors header: JSON, no pickle
    assert json.loads(header["__metadata__"]["gemdeploy.sparse_cpu"])["format"] == "gemdeploy-sparse-cpu"
    _assert_exact(model, load(path), images, labels)

    (tmp_path / "junk.safetensors").write_bytes(b"\x00garbage" * 10)
    for bad, needle in ((tmp_path / "junk.safetensors", "not a readable safetensors"),
                        (tmp_path / "missing.safetensors", "does not exist")):
        with pytest.raises(GemdeployError, match=needle):
            load(bad)
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(3, np.float32)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(GemdeployError, match="no sparse CPU graph"):
        load(tmp_path / "plain.safetensors")
    g, t = read(path)
    broken = dict(t)
    first = next(op for op in g["ops"] if op["op"] == "conv2d")["weight"]["indices"]
    broken[first] = broken[first] + 10_000  # a column index past the weight matrix
    with pytest.raises(GemdeployError, match="out of range"):
        SparseModel(g, broken)
    g2 = {**g, "ops": [{**g["ops"][0], "op": "exec"}]}
    with pytest.raises(GemdeployError, match="unknown op"):
        SparseModel(g2, t)
    with pytest.raises(GemdeployError, match=r"expected images of shape \(batch, 1, 8, 8\)"):
        load(path)(np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(GemdeployError, match="unknown sparse CPU engine"):
        load(path, engine="tensorflow")


# ---------------------------------------------------------------- the real CLI on real tickets


@pytest.fixture(scope="module")
def exported(lenet_run, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("sparse") / "lenet"
    shutil.copytree(lenet_run, run, ignore=shutil.ignore_patterns("export"))
    cli("export", run, "--precision", "sparse-cpu", "--sparse-cpu-batch", "32", "--quiet", check=True)
    return run


def test_cli_export_writes_a_verified_sparse_cpu_file(exported):
    from gemdeploy.compact.compaction import load_compacted_model
    from gemdeploy.files import file_sha256
    from gemdeploy.run.artifacts import RunArtifacts

    out = exported / "export"
    path = out / "model.sparse-cpu.safetensors"
    side = json.loads((out / "model.sparse-cpu.json").read_text())
    assert side["bytes"] == path.stat().st_size and side["sha256"] == file_sha256(path)
    assert side["source"] == "compacted" and side["source_sha256"] == json.loads((out / "model.fp32.json").read_text())["source_sha256"]
    assert side["verification"]["ok"] and side["test_split"]["ok"] and side["test_split"]["samples"] == 1000
    assert side["test_acc"] == side["pytorch_test_acc"] is not None
    assert side["tuned_batches"] == [1, 32]
    record = json.loads((out / "export.json").read_text())
    assert record["artifacts"]["sparse-cpu"] == path.name and record["accuracy"]["sparse-cpu"] == side["test_acc"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    # Built on the compacted model: its layer shapes, not the 784-300-100-10 of the dense architecture.
    art = RunArtifacts.open(exported)
    compacted = load_compacted_model(art)
    linears = [m for m in compacted.modules() if isinstance(m, torch.nn.Linear)]
    layers = load(path).layers()
    assert [(lay["rows"], lay["cols"]) for lay in layers] == [tuple(m.weight.shape) for m in linears]
    assert sum(lay["nnz"] for lay in layers) == sum(int((m.weight != 0).sum()) for m in linears)
    # A user's own check: the file against PyTorch's eval-mode logits on the whole test split.
    data = art.data("cpu")
    images, labels = _test_split(data)
    _assert_exact(compacted, load(path, threads=2), images, labels)
    assert (load(path)(images).argmax(1) == labels).mean() == side["test_acc"]


def test_reexport_keeps_the_current_file(exported):
    path = exported / "export" / "model.sparse-cpu.safetensors"
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    proc = cli("export", exported, "--precision", "sparse-cpu")
    assert proc.returncode == 0, proc.stderr
    assert "model.sparse-cpu.safetensors is current" in proc.stdout
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


def test_the_runtime_needs_neither_torch_nor_onnxruntime(exported, digits):
    """Run the exported file in a fresh interpreter where importing torch or onnxruntime fails."""
    path = exported / "export" / "model.sparse-cpu.safetensors"
    images = np.asarray(load_data("mnist5k").sample_images(16, "test").float().numpy())
    np.save(exported / "x.npy", images)
    code = (
        "import sys, numpy as np\n"
        "for blocked in ('torch', 'onnxruntime', 'onnx'): sys.modules[blocked] = None  # any import of them fails\n"
        "from gemdeploy.sparse_cpu import load\n"
        f"m = load({str(path)!r}, threads=2)\n"
        f"np.save({str(exported / 'y.npy')!r}, m(np.load({str(exported / 'x.npy')!r})))\n"
        "assert not [k for k in sys.modules if k.split('.')[0] in ('torch', 'onnxruntime') and sys.modules[k] is not None]\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(exported / "y.npy"), load(path)(images))


def test_bench_times_the_sparse_cpu_backend_next_to_onnxruntime(exported, tmp_path):
    proc = cli("bench", exported, "--backend", "sparse-cpu", "--backend", "onnxruntime-cpu", "--backend",
               "sparse-cpu-torch", "--batch-size", "1", "--batch-size", "8", "--iters", "2", "--warmup", "1",
               "--threads", "1", "--out", tmp_path / "r", "--json", check=True)
    rows = json.loads(proc.stdout)["rows"]
    sparse = [r for r in rows if r["backend"] == "sparse-cpu"]
    assert sorted(r["batch"] for r in sparse) == [1, 8] and {r["artifact"] for r in sparse} == {"sparse-cpu numpy"}
    assert {r["artifact"] for r in rows if r["backend"] == "sparse-cpu-torch"} == {"sparse-cpu torch"}
    onnx_acc = next(r["test_acc"] for r in rows if r["backend"] == "onnxruntime-cpu" and r["precision"] == "fp32")
    assert all(r["test_acc"] == onnx_acc for r in rows if r["backend"].startswith("sparse-cpu"))
    assert all(r["file_bytes"] == (exported / "export" / "model.sparse-cpu.safetensors").stat().st_size
               for r in sparse)


def test_bench_names_the_export_command_when_the_file_is_missing(lenet_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(lenet_run, run, ignore=shutil.ignore_patterns("export"))
    proc = cli("bench", run, "--backend", "sparse-cpu", "--iters", "1", "--out", tmp_path / "r")
    assert_clean_error(proc, "no sparse CPU export", f"gemdeploy export {run} --precision sparse-cpu")


@pytest.mark.slow
def test_cli_export_of_a_real_resnet20_ticket(conv_run, tmp_path):
    """A Gem-Miner ResNet-20 ticket (residual adds, projection shortcuts, global pooling) through the CLI."""
    run = tmp_path / "r20"
    shutil.copytree(conv_run, run, ignore=shutil.ignore_patterns("export"))
    cli("export", run, "--precision", "sparse-cpu", "--no-sparse-storage", "--sparse-cpu-batch", "16", "--quiet",
        check=True)
    side = json.loads((run / "export" / "model.sparse-cpu.json").read_text())
    assert side["test_split"]["ok"] and side["test_acc"] == side["pytorch_test_acc"]
    assert side["test_split"]["max_abs_diff"] <= 1e-4 * side["test_split"]["logit_scale"]
    assert len(side["layers"]) == 22 and all(lay["kernel"].keys() == {"1", "16"} for lay in side["layers"])
