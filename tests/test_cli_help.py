"""Every command's help reads in an 80-column terminal: lines fit, flags show no value placeholder."""

import pytest

from conftest import run_cli

COMMANDS = ["", "mine", "sanity", "compact", "export", "bench", "doctor", "methods"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_fits_80_columns(command):
    proc = run_cli(*([command] if command else []), "-h", env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines and max(len(line) for line in lines) <= 80, max(lines, key=len)
    for placeholder in ("<bool>", "<list", "<int range>", "[x>="):  # flags take no value; metavars stay short
        assert placeholder not in proc.stdout, placeholder
    help_line = next(line for line in lines if "--help" in line)
    assert "Show this message" in help_line and "<" not in help_line


def test_default_on_switches_are_single_no_flags():
    proc = run_cli("export", "-h", env={"COLUMNS": "80"}, timeout=120)
    assert "--no-sparse-storage" in proc.stdout and "--sparse-storage/" not in proc.stdout
    assert "Skip model.sparse.onnx" in proc.stdout


def test_no_switch_maps_back_to_the_option():
    from gemdeploy.exporters.config import ExportOptions
    from gemdeploy.options import cli_parameters, from_cli

    names = [p.name for p in cli_parameters(ExportOptions)]
    assert "sparse_storage" not in names and "no__sparse_storage" in names
    assert from_cli(ExportOptions, {"no__sparse_storage": True}).sparse_storage is False
    assert from_cli(ExportOptions, {"no__sparse_storage": False}).sparse_storage is True
