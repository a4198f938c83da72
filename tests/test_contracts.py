"""Contract tests that iterate the registries: every method, pattern, precision and backend a table names keeps
the promises the rest of gemdeploy relies on, so a new entry is checked the moment it is added."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from conftest import cli

from gemdeploy.bench.backends import BACKENDS
from gemdeploy.errors import GemdeployError
from gemdeploy.exporters.precisions import PRECISIONS
from gemdeploy.mine.methods import METHODS
from gemdeploy.models.init import INITS
from gemdeploy.run.config import MineConfig
from gemdeploy.sparsity import PATTERNS
from gemdeploy.sparsity.nm import satisfies_nm

CONFIG_FIELDS = {f.name for f in dataclasses.fields(MineConfig)}


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_declares_what_mine_asks_of_it(name):
    method = METHODS.get(name)
    assert method.name == name and METHODS.summary(name)
    assert method.default_init in INITS
    assert method.patterns and set(method.patterns) <= set(PATTERNS.names())
    cfg = MineConfig(model="lenet300", data="digits", method=name)
    group = METHODS.options(name)
    assert (cfg.method_options is None) if group is None else isinstance(cfg.method_options, group)
    resolved = cfg.resolve(train_size=3500)
    assert resolved.init == method.default_init
    own = {} if group is None else dataclasses.asdict(resolved.method_options)
    assert not set(own) & CONFIG_FIELDS  # a method's option never shadows a shared one
    assert resolved.to_json()["method_options"] == (own or None)  # config.json records the method's values
    if group is not None:  # ... every reference value filled in: resolving again changes nothing
        assert resolved.method_options.resolved(resolved, 3500) == resolved.method_options
    for pattern in PATTERNS.names():  # a pattern the method does not declare is refused with the ones it does
        if pattern not in method.patterns:
            with pytest.raises(Exception, match="does not support --pattern"):
                dataclasses.replace(cfg, pattern=pattern).resolve()


@pytest.mark.parametrize("name", [m for m in METHODS.names() if METHODS.options(m) is not None])
def test_every_method_options_group_shows_under_its_name_and_round_trips_config_json(name, capsys):
    from gemdeploy.cli.app import main
    from gemdeploy.options import cli_parameters, spec_of

    group = METHODS.options(name)
    with pytest.raises(SystemExit):
        main(["mine", "-h"])
    help_text = capsys.readouterr().out
    # the group's panel names the method, and every command-line option of the group is in that panel
    panel = next(block for block in help_text.split("╭─")[1:] if name in block.splitlines()[0].split())
    flags = [p.default.param_decls[0] for p in cli_parameters(group)]
    assert flags and all(flag in panel for flag in flags)
    # given by name (as on the command line), recorded in config.json and read back the same
    cfg = MineConfig(model="lenet300", data="digits", method=name).resolve(train_size=3500)
    again = MineConfig.from_json(json.loads(json.dumps(cfg.to_json())))
    assert again == cfg and isinstance(again.method_options, group)
    assert all(getattr(again, f.name) == getattr(cfg.method_options, f.name) for f in dataclasses.fields(group))
    # another method refuses the group's options in one line
    other = next(m for m in METHODS.names() if METHODS.options(m) is not group)
    given = next(f for f in dataclasses.fields(group) if spec_of(f).cli and getattr(cfg.method_options, f.name) is not None)
    with pytest.raises(GemdeployError, match=f"does not take it"):
        MineConfig(method=other, **{given.name: getattr(cfg.method_options, given.name)})


@pytest.mark.parametrize("name", PATTERNS.names())
def test_every_pattern_projects_compacts_and_exports_consistently(name):
    pattern = PATTERNS.get(name)
    assert pattern.name == name and PATTERNS.summary(name)
    assert any(name in METHODS.get(m).patterns for m in METHODS.names())  # some method mines it
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(8, 16, generator=gen)
    active = (torch.rand(8, 16, generator=gen) > 0.2).float()
    mask = pattern.project(scores, "2:4", active)
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and torch.all(mask <= active)  # never revives a weight
    groups = pattern.groups("2:4")
    assert pattern.compaction_constraint("2:4") == groups
    if groups is not None:
        assert satisfies_nm(mask, *groups)
    else:
        assert torch.equal(mask, active)  # no constraint: every active weight may stay
    assert pattern.export_error({"w": True}) is None
    assert pattern.tensorrt_sparse_weights({"w": True}) and not pattern.tensorrt_sparse_weights({"w": False})
    net = torch.nn.Sequential(torch.nn.Linear(16, 8))
    assert pattern.deploys_compacted(net, net)  # a compaction that changed nothing is always deployable


@pytest.mark.parametrize("name", BACKENDS.names())
def test_every_backend_says_if_it_runs_here_and_what_it_needs(name, lenet_run):
    from gemdeploy.bench.measure import open_runs

    backend = BACKENDS.get(name)()
    assert backend.name == name and BACKENDS.summary(name) and backend.device in ("cpu", "cuda")
    why = backend.unavailable()
    assert why is None or (isinstance(why, str) and why)
    assert backend.needs and backend.missing_hint(open_runs([lenet_run])[0]).startswith("gemdeploy export ")
    if why is None:
        items = backend.artifacts(open_runs([lenet_run])[0], 1)
        assert all(i.path.is_file() and i.precision in [*PRECISIONS.names()] for i in items)


@pytest.mark.slow
def test_every_precision_exports_a_verified_file_export_json_lists_and_a_backend_runs(lenet_run, tmp_path):
    from gemdeploy.bench.measure import open_runs

    run = tmp_path / "run"
    shutil.copytree(lenet_run, run, ignore=shutil.ignore_patterns("export", "bench"))
    args = [a for p in PRECISIONS.names() for a in ("--precision", p)]
    cli("export", run, *args, "--calib-samples", "128", "--no-sparse-storage", "--quiet", check=True)
    record = json.loads((run / "export" / "export.json").read_text())
    info = open_runs([run])[0]
    available = [BACKENDS.get(b)() for b in BACKENDS.names()]
    available = [b for b in available if b.unavailable() is None]
    for p in PRECISIONS.names():
        assert p in record["artifacts"] and info.exports.file(p) is not None, p
        side = json.loads(info.exports.sidecar(info.exports.file(p)).read_text())
        assert side["source_sha256"] == record["source_sha256"] and "test_acc" in side, p
        assert record["verdicts"][p]["message"] or record["verdicts"][p]["ok"] is not None, p
        runs_it = [b.name for b in available if any(i.precision == p for i in b.artifacts(info, 1))]
        assert runs_it, f"no backend available here runs {p}"
