"""Shared fixtures: the real CLI (in this process, or in a subprocess where a signal or several processes are the
point), and small real runs on the offline digit sets."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ["COLUMNS"] = "200"  # rich tables are not cut at 80 columns in captured output


@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def cli(*args: str, check: bool = False) -> Result:
    """Run `gemdeploy ARGS` in this process through its real entry point (gemdeploy.cli.app.main): the same parser,
    error handling and exit codes a user gets, without paying a Python + torch start-up per call."""
    from gemdeploy.cli.app import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    os.environ.pop("GEMDEPLOY_DEBUG", None)
    result = Result(argv, code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"gemdeploy {' '.join(argv)} failed ({code}):\n{result.stdout}\n{result.stderr}")
    return result


def run_cli(*args: str, check: bool = False, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed `gemdeploy` command line in a subprocess, as a user would (signals, torchrun, start-up)."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "gemdeploy.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"gemdeploy {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def assert_clean_error(proc, *needles: str) -> None:
    """One clear line on stderr, a non-zero exit, no traceback."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def interrupt_when(args, out: Path, marker: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Start `gemdeploy ARGS` and press Ctrl-C (SIGINT) as soon as ``out/marker`` exists: a real interruption."""
    import signal
    import time

    # A shell that starts the tests in the background ignores SIGINT, and a child inherits that: restore the
    # default so Python turns Ctrl-C into KeyboardInterrupt as it does in a terminal.
    proc = subprocess.Popen([sys.executable, "-m", "gemdeploy.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + timeout
    while not (out / marker).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def method_pattern_cases() -> list[tuple[str, str]]:
    """(method, pattern) for every registered method and every pattern it declares: what the layout tests mine."""
    from gemdeploy.mine.methods import METHODS

    return [(name, pattern) for name, method in METHODS.items() for pattern in method.patterns]


def case_id(method: str, pattern: str) -> str:
    return f"{method}-{pattern.replace(':', 'of')}"


QUICK = ["--data", "mnist5k", "--epochs", "3", "--finetune-epochs", "2", "--quiet"]


@pytest.fixture(scope="session")
def lenet_run(tmp_path_factory) -> Path:
    """A real Gem-Miner ticket of LeNet-300-100 on the offline MNIST digits (seconds on 2 cores)."""
    out = tmp_path_factory.mktemp("runs") / "lenet-gm"
    cli("mine", "--model", "lenet300", "--sparsity", "0.986", "--out", out, *QUICK, check=True)
    return out


@pytest.fixture(scope="session")
def conv_run(tmp_path_factory) -> Path:
    """A real Gem-Miner ticket of a CIFAR ResNet-20 on the offline MNIST digits."""
    out = tmp_path_factory.mktemp("runs") / "r20-gm"
    cli("mine", "--model", "resnet20", "--sparsity", "0.9", "--out", out, "--data", "mnist5k", "--epochs", "1",
        "--finetune-epochs", "1", "--quiet", check=True)
    return out


def tanh_net(depth: int, gain: float = 4.0, width: int = 64) -> "torch.nn.Module":
    """A deep tanh MLP for 1x16x16 inputs with weights of std gain/sqrt(width): with gain 4 it is in the chaotic
    phase, and at depth 40 one fp32 rounding step of its input moves its logits as much as they are large, while
    at depth 10 it is tame (a real network, not a stand-in: the rounding it amplifies is real)."""
    import torch
    from torch import nn

    with torch.random.fork_rng():
        torch.manual_seed(0)
        layers: list[nn.Module] = [nn.Flatten(), nn.Linear(256, width), nn.Tanh()]
        for _ in range(depth):
            lin = nn.Linear(width, width)
            nn.init.normal_(lin.weight, 0.0, gain / width ** 0.5)
            layers += [lin, nn.Tanh()]
        return nn.Sequential(*layers, nn.Linear(width, 10)).eval()
