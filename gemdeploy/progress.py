"""Live progress for long work: one rich progress bar per phase with the numbers a user watches."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Reporter:
    """Shows epoch, phase, loss, accuracy and density; silent when ``enabled`` is False (non-zero ranks, tests)."""

    def __init__(self, enabled: bool = True, console: Console | None = None):
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._task = None

    def start(self, phase: str, total: int, done: int = 0) -> None:
        if not self.enabled:
            return
        if self._progress is None:
            self._progress = Progress(
                TextColumn("[bold]{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.3f}  acc {task.fields[acc]:6.2%}  density {task.fields[density]:7.3%}"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False)
            self._progress.start()
        self._task = self._progress.add_task(phase, total=max(total, 1), completed=done, loss=0.0, acc=0.0, density=1.0)

    def update(self, *, loss: float, acc: float, density: float, advance: int = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=advance, loss=loss, acc=acc, density=density)

    def log(self, message: str) -> None:
        if self.enabled:
            self.console.log(message)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


@contextlib.contextmanager
def quiet():
    """Silence third-party chatter (exporters, quantizers: Python warnings, logging, stdout prints); errors still
    raise."""
    out = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(out):
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            yield out
        finally:
            logging.disable(previous)
