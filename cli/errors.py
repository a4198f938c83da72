"""Every failure reaches the user as one line on stderr and a non-zero exit, never a traceback.

GemdeployError (bad input, damaged files) is the project's own: its message is the line. Anything else is a bug
or an environment problem: one line naming it, with a hint to rerun with --debug (which shows the traceback)
and to report it.
"""

from __future__ import annotations

import functools
import os
import sys

import typer

from gemdeploy.errors import GemdeployError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BUG = 70  # EX_SOFTWARE
DEBUG_ENV = "GEMDEPLOY_DEBUG"


def fail(message: str, code: int = EXIT_USER_ERROR) -> typer.Exit:
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code)


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def friendly_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GemdeployError as exc:
            raise fail(str(exc).strip().replace("\n", " ")) from None
        except KeyboardInterrupt:
            raise fail("interrupted; completed epochs are checkpointed, continue with --resume", EXIT_INTERRUPTED) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except MemoryError:
            raise fail("out of memory; try a smaller --batch-size or model", EXIT_USER_ERROR) from None
        except OSError as exc:
            if debugging():
                raise
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            raise fail(f"{exc.strerror or one_line(exc)}{where}") from None
        except Exception as exc:  # noqa: BLE001 - the last resort: never a bare traceback
            if debugging():
                raise
            raise fail(f"unexpected {one_line(exc)} (a gemdeploy bug: rerun with --debug for the traceback and "
                       "report it)", EXIT_BUG) from None

    return wrapper
