"""Every failure reaches the user as one line on stderr and a non-zero exit, never a traceback.

GemdeployError (bad input, damaged files) is the project's own: its message is the line. Anything else is a bug
or an environment problem: one line naming it, with a hint to rerun with --debug (which shows the traceback)
and to report it.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import sys

import typer

from gemdeploy.errors import GemdeployError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BUG = 70  # EX_SOFTWARE
EXIT_IO = 74  # EX_IOERR: the machine, not the input (a full disk)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how Rust libraries (safetensors) word an OS error
DEBUG_ENV = "GEMDEPLOY_DEBUG"


def fail(message: str, code: int = EXIT_USER_ERROR) -> typer.Exit:
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code)


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def os_error_number(exc: BaseException) -> int | None:
    """The OS error behind ``exc``: an OSError's errno, or the "(os error N)" a Rust library (safetensors) puts in
    its message, also through the exceptions that caused it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno:
            return exc.errno
        match = _RUST_OS_ERROR.search(str(exc))
        if match:
            return int(match.group(1))
        exc = exc.__cause__ or exc.__context__
    return None


def disk_full(exc: BaseException) -> typer.Exit:
    where = f" writing {exc.filename}" if getattr(exc, "filename", None) else ""
    return fail(f"no space left on the device{where}: free some space and run the command again (files "
                "already in place are whole: each is written beside its place and renamed in when complete)", EXIT_IO)


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
            if exc.errno in DISK_FULL:
                raise disk_full(exc) from None
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            raise fail(f"{exc.strerror or one_line(exc)}{where}") from None
        except Exception as exc:  # noqa: BLE001 - the last resort: never a bare traceback
            if debugging():
                raise
            if os_error_number(exc) in DISK_FULL:  # e.g. safetensors' SafetensorError: "... (os error 28)"
                raise disk_full(exc) from None
            raise fail(f"unexpected {one_line(exc)} (a gemdeploy bug: rerun with --debug for the traceback and "
                       "report it)", EXIT_BUG) from None

    return wrapper
