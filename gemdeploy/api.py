"""gemdeploy from Python, for people who do not want a command line: mine a ticket of your own network on your
own data, then compact, export and benchmark it, every step on the same run directory the CLI writes.

    import gemdeploy.api as gd

    run = gd.mine(MyNet(), {"train": (x, y), "val": (xv, yv), "test": (xt, yt)}, out="runs/mynet",
                  sparsity=0.9, epochs=10, finetune_epochs=10)
    print(run.summary["test_acc"], run.compact()["after"])
    run.export(precision=["fp32", "int8"])
    run.bench(batch_size=[1, 32])

``model`` is a built-in name, a spec string (``path/to/file.py:make_model``, ``package.module:make_model``,
``torchvision:resnet18``), a factory (a function or class called with ``input_shape`` and ``num_classes``) or an
``nn.Module`` instance (copied; its weights are the start only with ``init_from="model"``). ``data`` is a built-in
name, a spec string, a DataBundle, or splits as gemdeploy.data.user describes (a dict or tuple of (images,
labels) tensors or Datasets). ``**options`` are `gemdeploy mine`'s options by field name (gemdeploy.run.config),
the method's own ones included (e.g. ``lam=3e-5`` for gem-miner, ``imp_lr=0.05`` for imp).

A run mined from a Python object (an instance, a lambda, a function defined in ``__main__``) records it as
``python:NAME``: the CLI cannot rebuild it in another process and says so; reopen it here with
``open_run(path, model=..., data=...)``. A factory importable from a module or file is recorded as a spec, so
`gemdeploy export RUN` and friends work on that run as on any other.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Iterable

from gemdeploy import user_code
from gemdeploy.errors import GemdeployError

__all__ = ["Run", "mine", "open_run", "tune"]


def _model_source(model: Any) -> tuple[str, Any]:
    """(what config.json records, the object ``python:`` resolves to in this process or None)."""
    from torch import nn

    if isinstance(model, str):
        return model, None
    if isinstance(model, nn.Module):
        instance = model

        def copy_of_instance() -> nn.Module:
            return copy.deepcopy(instance)

        return user_code.label(type(model)), copy_of_instance
    if callable(model):
        spec = user_code.importable_spec(model)
        return (spec, None) if spec else (user_code.label(model), model)
    raise GemdeployError(f"model must be a name, a spec string, a factory or an nn.Module, not a {type(model).__name__}")


def _data_source(data: Any) -> tuple[str, Any]:
    from gemdeploy.data.splits import DataBundle
    from gemdeploy.data.user import to_bundle

    if isinstance(data, str):
        return data, None
    if isinstance(data, DataBundle):
        return "python:" + "".join(c if c.isalnum() or c in "_.-" else "_" for c in data.name), data
    if callable(data) and not hasattr(data, "__getitem__"):
        spec = user_code.importable_spec(data)
        if spec:
            return spec, None
        label = user_code.label(data)
        return label, to_bundle(user_code.call_factory(data, label, "data"), label)
    return "python:data", to_bundle(data, "python:data")  # splits given directly: checked now, once


def _init_source(init_from: Any, model: Any) -> tuple[str | None, Any]:
    from torch import nn

    if init_from is None:
        return None, None
    if isinstance(init_from, (str, Path)) and str(init_from) != "model":
        return str(Path(init_from).resolve()), None
    if isinstance(init_from, str):  # "model": the instance's own weights (a pre-trained network)
        if not isinstance(model, nn.Module):
            raise GemdeployError('init_from="model" takes the weights of the nn.Module given as model; pass one, or '
                                 "a safetensors file or a state dict")
        init_from = model.state_dict()
    if isinstance(init_from, dict):
        return "python:init", {k: v.detach().cpu().clone() for k, v in init_from.items()}
    raise GemdeployError(f'init_from must be a safetensors path, a state dict or "model", not a '
                         f"{type(init_from).__name__}")


def _mine_options(options: dict) -> None:
    from gemdeploy.options import spec_of
    from gemdeploy.run.config import MineConfig, method_option_groups

    declared = [f for cls in (MineConfig, *method_option_groups()) for f in dataclasses.fields(cls)]
    allowed = {f.name for f in declared if spec_of(f) and spec_of(f).cli}
    allowed -= {"model", "data", "init_from"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise GemdeployError(f"unknown option {unknown[0]!r} for gemdeploy.api.mine; it takes the options of "
                             f"`gemdeploy mine` by field name: {', '.join(sorted(allowed))}")


def mine(model: Any, data: Any, out: str | Path, *, init_from: Any = None, resume: bool = False,
         overwrite: bool = False, quiet: bool = True, **options: Any) -> "Run":
    """Mine a ticket of ``model`` on ``data`` into the run directory ``out`` (created; ``resume=True`` continues an
    interrupted one), train and compact it, exactly as `gemdeploy mine` does; returns the Run.

    ``init_from``: a safetensors file, a state dict, or "model" (the given nn.Module's own weights): every method
    starts from those weights (Gem-Miner mines scores over them) and the run records their sha256."""
    from gemdeploy import stages
    from gemdeploy.progress import Reporter
    from gemdeploy.run import layout
    from gemdeploy.run.config import MineConfig
    from gemdeploy.run.rundir import RunDir
    from gemdeploy.files import read_json

    _mine_options(options)
    model_text, model_obj = _model_source(model)
    data_text, data_obj = _data_source(data)
    init_text, init_obj = _init_source(init_from, model)
    live = {model_text: model_obj, data_text: data_obj, init_text or "": init_obj}
    with user_code.live({k: v for k, v in live.items() if v is not None}):
        if resume:
            recorded = read_json(Path(out) / layout.CONFIG) if (Path(out) / layout.CONFIG).is_file() else {}
            recorded = recorded if isinstance(recorded, dict) else {}
            for key, given in (("model", model_text), ("data", data_text)):
                if recorded.get(key) not in (None, given, user_code.absolute(given)):
                    raise GemdeployError(f"{out} was mined with {key} {recorded[key]}, not {given}")
            run, _ = stages.mine(out, None, resume=True, reporter=Reporter(enabled=not quiet))
        else:
            cfg = MineConfig(model=model_text, data=data_text, init_from=init_text, **options).validate().check_files()
            RunDir.check_new(out, overwrite=overwrite)
            run, _ = stages.mine(out, cfg, overwrite=overwrite, reporter=Reporter(enabled=not quiet))
    return Run(run.path, model=model if model_obj is not None else None,
               data=data_obj if data_obj is not None else None)


def tune(out: str | Path, *, resume: bool = False, **options: Any) -> dict:
    """`gemdeploy tune`: the fastest ticket within ``max_drop`` points of dense (or the most accurate one meeting
    ``target_speedup`` / ``target_latency_ms``) on each of ``backend``; options by field name
    (gemdeploy.tune.config.TuneOptions), e.g. ``tune("runs/t", model="lenet300", data="mnist5k",
    backend=["onnxruntime-cpu", "sparse-cpu"], max_drop=1.0, batch_size=64, budget="30m")``. Returns tune.json;
    ``["result"]["pick"]["path"]`` is the chosen run directory."""
    from gemdeploy.tune.config import TuneOptions
    from gemdeploy.tune.runner import tune as run_tune

    if isinstance(options.get("backend"), str):
        options["backend"] = [options["backend"]]
    return run_tune(_options(TuneOptions, "tune", **options), out, resume=resume)


def open_run(path: str | Path, model: Any = None, data: Any = None) -> "Run":
    """A finished (or interrupted) run directory. ``model`` / ``data`` are needed only for a run mined from Python
    objects (config.json says ``python:...``): the same network (instance or factory) and data."""
    return Run(path, model=model, data=data)


class Run:
    """A run directory and the steps that work on it (each also a CLI command)."""

    def __init__(self, path: str | Path, model: Any = None, data: Any = None):
        from gemdeploy.run.artifacts import RunArtifacts

        self.path = Path(path)
        self.config = RunArtifacts.open(self.path).config
        self._live: dict[str, Any] = {}
        for what, recorded, given, source in (("model", self.config.model, model, _model_source),
                                              ("data", self.config.data, data, _data_source)):
            if given is None:
                continue
            if not user_code.is_live(recorded):
                raise GemdeployError(f"{self.path} rebuilds its {what} from {recorded}; open_run takes {what}= only "
                                     "for a run mined from a Python object")
            self._live[recorded] = source(given)[1]

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, model={self.config.model!r}, data={self.config.data!r})"

    def _artifacts(self):
        from gemdeploy.run.artifacts import RunArtifacts

        return RunArtifacts.open(self.path)

    @property
    def summary(self) -> dict:
        """summary.json: accuracy, sparsity, times, compaction totals."""
        return self._artifacts().summary()

    def model(self, compacted: bool = True):
        """The ticket as a PyTorch module in eval mode: the model the run deploys (the compacted one when the run
        has it and compaction kept its 2:4 layout, as export and bench decide); ``compacted=False``: the
        fine-tuned masked model."""
        from gemdeploy.compact.deploy import deployed_model

        with user_code.live(self._live):
            art = self._artifacts()
            return deployed_model(art).model if compacted else art.finetuned_model()

    def compact(self, round_to: int | None = None, overwrite: bool = False) -> dict:
        """`gemdeploy compact RUN`: dead and unread channels removed exactly; returns compact.json's record (the
        one in place when it has the same ``round_to``; another one needs ``overwrite=True``)."""
        from gemdeploy.compact.compaction import compact_stage

        with user_code.live(self._live):
            art = self._artifacts()
            return compact_stage(art, art.config.round_to if round_to is None else round_to, overwrite)

    def export(self, precision: Iterable[str] | str = ("fp32",), **options: Any) -> dict:
        """`gemdeploy export RUN`: verified ONNX (fp32/fp16/int8), sparse storage, the sparse CPU file; options are
        `gemdeploy export`'s by field name (gemdeploy.exporters.config.ExportOptions). Returns export.json."""
        from gemdeploy.exporters.config import ExportOptions
        from gemdeploy.exporters.pipeline import export_run

        precisions = [precision] if isinstance(precision, str) else list(precision)
        with user_code.live(self._live):
            return export_run(self.path, _options(ExportOptions, "export", precision=precisions, **options))

    def bench(self, against: Iterable[str | Path] = (), out: str | Path | None = None, overwrite: bool = False,
              **options: Any) -> dict:
        """`gemdeploy bench RUN`: accuracy, latency and size on every available backend (options by field name:
        gemdeploy.bench.config.BenchOptions); writes bench.json, report.md and plots to ``out`` (default RUN/bench)
        and returns the measurement."""
        from gemdeploy.bench.config import BenchOptions
        from gemdeploy.bench.stage import bench_runs, report_folder

        opts = _options(BenchOptions, "bench", **options)
        folder = report_folder(self.path, out, overwrite)
        with user_code.live(self._live):
            result, _ = bench_runs([self.path, *map(Path, against)], opts, folder)
        return result


def _options(cls, command: str, **values: Any):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise GemdeployError(f"unknown option {unknown[0]!r} for Run.{command}; it takes: {', '.join(sorted(names))}")
    return cls(**values)
