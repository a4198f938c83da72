"""The wheel users install (the Dockerfile installs without -e): every module is in it and the CLI runs from it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

SOURCE_TREES = {"gemdeploy": REPO / "gemdeploy", "gemdeploy/cli": REPO / "cli",
                "gemdeploy/exporters": REPO / "exporters", "gemdeploy/calibration": REPO / "calibration"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """gemdeploy built as a wheel and installed, not editable, into a scratch folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    # Build from a clean copy: an in-tree build/ left by an earlier build could smuggle stale modules into the wheel.
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                                              "runs", "results", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp),
                    str(src)], check=True, capture_output=True, timeout=600)
    wheel = next(tmp.glob("gemdeploy-*.whl"))
    target = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    return target


@pytest.mark.slow
def test_the_wheel_holds_every_module_of_the_source_tree(installed):
    expected = {f"{pkg}/{p.relative_to(src).as_posix()}" for pkg, src in SOURCE_TREES.items()
                for p in src.rglob("*.py") if "__pycache__" not in p.parts}
    shipped = {p.relative_to(installed).as_posix() for p in installed.rglob("*.py") if "__pycache__" not in p.parts}
    assert expected - shipped == set(), f"missing from the wheel: {sorted(expected - shipped)}"
    assert not (installed / "cli").exists() and not (installed / "exporters").exists()  # no generic top-level names


def _run_installed(installed: Path, *args: str) -> subprocess.CompletedProcess:
    code = ("import sys, gemdeploy; assert gemdeploy.__file__.startswith(sys.argv[1]), gemdeploy.__file__; "
            "sys.argv = ['gemdeploy', *sys.argv[2:]]; from gemdeploy.cli.app import main; main()")
    env = {**os.environ, "PYTHONPATH": str(installed), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-c", code, str(installed), *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=installed)


@pytest.mark.slow
def test_bench_and_doctor_run_from_the_installed_wheel(installed):
    proc = _run_installed(installed, "bench", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "--against" in proc.stdout and "--backend" in proc.stdout
    proc = _run_installed(installed, "doctor", "--json")
    assert proc.returncode == 0, proc.stderr
    assert '"backends"' in proc.stdout and "onnxruntime-cpu" in proc.stdout


def test_help_and_refusals_import_neither_torch_nor_onnxruntime():
    """Start-up stays light: --help, methods, --version, a refused bad value, a wrong RUN and an existing --out
    (the repository itself here) never load the heavy stacks."""
    code = ("import sys, contextlib, io; from gemdeploy.cli.app import main\n"
            "for argv in (['--help'], ['mine', '-h'], ['--version'], ['methods'], ['mine', '--sparsity', '2', '--out', 'x'],"
            " ['export', 'x', '-p', 'int9'], ['export', '/nonexistent'], ['bench', '/nonexistent'],"
            " ['mine', '--model', 'lenet300', '--out', sys.argv[1]], ['mine', '--method', 'imp', '--lam', '1', '--out', 'x']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            "        try: main(argv)\n"
            "        except SystemExit: pass\n"
            "heavy = [m for m in ('torch', 'onnxruntime', 'onnx', 'torch_pruning') if m in sys.modules]\n"
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code, str(REPO)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
