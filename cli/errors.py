"""Turn user-facing errors into one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import functools
import sys

import typer

from gemdeploy.errors import GemdeployError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_USER_ERROR) -> typer.Exit:
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code)


def friendly_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GemdeployError as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            raise fail("interrupted; completed epochs are checkpointed, continue with --resume", EXIT_INTERRUPTED) from None

    return wrapper
