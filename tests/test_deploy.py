"""Which model a run deploys is decided once (gemdeploy.compact.deploy): export, bench's PyTorch backends and
gemdeploy.api agree, also on a 2:4 run whose compaction would break the 2:4 layout."""

from __future__ import annotations

import json

import pytest

from conftest import cli

UNREAD = (0, 101, 202, 299)  # hidden units of LeNet's first layer that the second stops reading: off the 2:4 groups


@pytest.fixture(scope="module")
def broken_24(tmp_path_factory):
    """A real `mine --pattern 2:4` LeNet whose compaction (written here, channel removal that ignores the 2:4
    groups) removes 4 hidden units out of step with the groups of 4, so the compacted weights are not 2:4."""
    from gemdeploy.compact.compaction import compact_model
    from gemdeploy.compact.sparse_store import save_sparse
    from gemdeploy.run.artifacts import RunArtifacts
    from gemdeploy.files import load_tensors, save_tensors

    run = tmp_path_factory.mktemp("deploy") / "l24"
    cli("mine", "--model", "lenet300", "--data", "digits", "--pattern", "2:4", "--sparsity", "0.5", "--epochs", "1",
        "--finetune-epochs", "1", "--quiet", "--out", run, check=True)
    weights = load_tensors(run / "weights.safetensors")
    weights["4.weight"][:, list(UNREAD)] = 0  # more zeros: the masked model stays 2:4
    save_tensors(run / "weights.safetensors", weights)
    art = RunArtifacts.open(run)
    compacted, steps = compact_model(art.finetuned_model(), art.input_shape, 1, None)
    save_sparse(run / "compact.safetensors", compacted.state_dict())
    record = json.loads((run / "compact.json").read_text())
    (run / "compact.json").write_text(json.dumps({**record, "steps": steps, "round_to": 1}))
    return run


def test_a_compaction_that_breaks_2_4_is_not_deployed(broken_24, lenet_run):
    import gemdeploy.api as gd
    from gemdeploy.compact.compaction import load_compacted_model
    from gemdeploy.compact.deploy import deployed_model
    from gemdeploy.run.artifacts import RunArtifacts
    from gemdeploy.sparsity.nm import nm_layout

    art = RunArtifacts.open(broken_24)
    compacted = load_compacted_model(art)
    assert compacted[4].in_features == 300 - len(UNREAD)
    assert not all(nm_layout(compacted, 2, 4).values())  # the precondition: this compaction broke 2:4
    deployed = deployed_model(art)
    assert deployed.source == "finetuned" and "2:4" in deployed.note
    assert deployed.weights == broken_24 / "weights.safetensors"
    assert deployed.model[4].in_features == 300 and all(nm_layout(deployed.model, 2, 4).values())
    assert gd.open_run(broken_24).model()[4].in_features == 300  # the Python API deploys the same model
    # An unstructured run deploys its compacted model, through every door.
    plain = deployed_model(RunArtifacts.open(lenet_run))
    assert plain.source == "compacted" and plain.weights == lenet_run / "compact.safetensors" and plain.note is None
    assert sum(p.numel() for p in gd.open_run(lenet_run).model().parameters()) == \
        sum(p.numel() for p in plain.model.parameters()) < sum(p.numel() for p in plain.masked.parameters())


@pytest.mark.slow
def test_bench_times_the_model_export_exported_on_such_a_run(broken_24, tmp_path):
    cli("export", broken_24, "--no-sparse-storage", "--quiet", check=True)
    record = json.loads((broken_24 / "export" / "export.json").read_text())
    assert record["source"] == "finetuned"
    proc = cli("bench", broken_24, "--backend", "pytorch-cpu", "--backend", "onnxruntime-cpu", "--batch-size", "2",
               "--iters", "1", "--warmup", "0", "--out", tmp_path / "r", "--json", check=True)
    rows = {r["backend"]: r for r in json.loads(proc.stdout)["rows"] if r["precision"] == "fp32"}
    torch_row, onnx_row = rows["pytorch-cpu"], rows["onnxruntime-cpu"]
    assert torch_row["source"] == onnx_row["source"] == "finetuned"  # both time the 2:4 masked model
    assert torch_row["artifact"] == "torch masked"
    assert torch_row["file_bytes"] == (broken_24 / "weights.safetensors").stat().st_size
    assert torch_row["test_acc"] == onnx_row["test_acc"]
    assert torch_row["params"] == onnx_row["params"] and torch_row["macs"] == onnx_row["macs"]
