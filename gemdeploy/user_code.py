"""A user's own model and data, named by a spec string (`--model`, `--data`, `--init-from`, gemdeploy.api):

    path/to/file.py:make_model     a factory in a Python file (the file is executed: the user asked for it)
    package.module:make_model      a factory in an importable module
    torchvision:resnet18           a torchvision classification model (--model only; never pre-trained weights)
    python:NAME                    an object handed to gemdeploy.api in this process (not rebuildable elsewhere)

Nothing else ever executes code: weights are safetensors. A run records the sha256 of the file that defines its
factory (config.json), and every later rebuild (resume, compact, export, bench, sanity) refuses with one line when
that file moved or changed. Importing this module imports neither torch nor the user's code.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from gemdeploy.errors import GemdeployError
from gemdeploy.files import file_sha256

MODEL_FORMS = "path/to/file.py:FACTORY, package.module:FACTORY or torchvision:NAME"
DATA_FORMS = "path/to/file.py:FACTORY or package.module:FACTORY"
API_HINT = "gemdeploy.api.open_run(RUN, model=..., data=...)"
_MODULE_PREFIX = "gemdeploy_user_"  # sys.modules name of a loaded user file
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class UserSpec:
    text: str
    kind: str  # "file" | "module" | "torchvision" | "python"
    target: str  # file path, module name, torchvision model name or the python label
    attr: str | None = None  # the factory's name inside the file or module (dotted for a nested attribute)


def parse(value: object) -> UserSpec | None:
    """The spec ``value`` names, or None for a plain (registry) name. No file system access, no import."""
    if not isinstance(value, str) or ":" not in value:
        return None
    head, _, attr = value.rpartition(":")
    if head in ("torchvision", "python"):
        return UserSpec(value, head, attr)
    if head.endswith(".py") or "/" in head or os.sep in head:
        return UserSpec(value, "file", head, attr)
    return UserSpec(value, "module", head, attr)


def is_spec(value: object) -> bool:
    return parse(value) is not None


def is_live(value: object) -> bool:
    """A ``python:NAME`` spec: an object handed to gemdeploy.api in this process."""
    return isinstance(value, str) and value.startswith("python:")


def syntax_problem(value: object, *, torchvision: bool) -> str | None:
    """What is wrong with the form of a spec (None for a plain name or a well-formed spec)."""
    spec = parse(value)
    if spec is None:
        return None
    if spec.kind == "torchvision" and not torchvision:
        return "takes no torchvision: name (that form is for --model)"
    if spec.kind == "torchvision":
        return None if re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", spec.target) else \
            "needs a model name after 'torchvision:' (e.g. torchvision:resnet18)"
    if spec.kind == "python":
        return None if spec.target else "needs a name after 'python:'"
    if not spec.attr or not _IDENT.match(spec.attr):
        return "needs FILE.py:NAME or package.module:NAME (a Python name after the last ':')"
    if spec.kind == "module" and not _IDENT.match(spec.target):
        return "needs FILE.py:NAME or package.module:NAME (a file ending in .py, or a dotted module name)"
    return None


def presence_problem(value: object) -> str | None:
    """A file spec whose file is not there (checked before a run starts; a recorded run says more, see `load`)."""
    spec = parse(value)
    if spec is not None and spec.kind == "file" and not Path(spec.target).is_file():
        return f"no such file {spec.target}"
    return None


def absolute(value: str) -> str:
    """A file spec with its path made absolute (what config.json records); anything else unchanged."""
    spec = parse(value)
    if spec is None or spec.kind != "file":
        return value
    return f"{Path(spec.target).resolve()}:{spec.attr}"


def source_file(spec: UserSpec) -> Path | None:
    """The file that defines a file or module spec's factory (a module is located without being executed)."""
    if spec.kind == "file":
        return Path(spec.target)
    if spec.kind != "module":
        return None
    try:
        found = importlib.util.find_spec(spec.target)
    except (ImportError, ValueError) as exc:
        raise GemdeployError(f"cannot import {spec.target} ({spec.text}): {_one_line(exc)}") from None
    if found is None:
        raise GemdeployError(f"cannot import {spec.target} ({spec.text}): no module named {spec.target!r}")
    origin = found.origin
    return Path(origin) if origin and origin not in ("built-in", "frozen") and Path(origin).is_file() else None


def source_sha256(value: str) -> str | None:
    """sha256 of the file defining the factory of a file or module spec (None for other values)."""
    spec = parse(value)
    if spec is None:
        return None
    path = source_file(spec)
    if path is None:
        return None
    if not path.is_file():
        raise GemdeployError(f"no such file {path} ({spec.text})")
    return file_sha256(path)


# --- objects handed to gemdeploy.api in this process ---------------------------------------------------
_LIVE: dict[str, Any] = {}


@contextlib.contextmanager
def live(objects: dict[str, Any]) -> Iterator[None]:
    """Make ``python:NAME`` specs resolve to these objects while the block runs (gemdeploy.api's steps)."""
    saved = {k: _LIVE[k] for k in objects if k in _LIVE}
    _LIVE.update({k: v for k, v in objects.items() if v is not None})
    try:
        yield
    finally:
        for k in objects:
            _LIVE.pop(k, None)
        _LIVE.update(saved)


def live_object(spec: UserSpec, what: str) -> Any:
    if spec.text in _LIVE:
        return _LIVE[spec.text]
    raise GemdeployError(f"the {what} {spec.text} was a Python object given to gemdeploy.api, which this process "
                         f"cannot rebuild; use {API_HINT} with that object")


def label(obj: Any) -> str:
    """``python:NAME`` for an object given to gemdeploy.api."""
    name = getattr(obj, "__qualname__", None) or type(obj).__name__
    return "python:" + re.sub(r"[^A-Za-z0-9_.<>-]", "_", name)


def importable_spec(fn: Callable) -> str | None:
    """A spec another process can rebuild ``fn`` from (module:name or file.py:name), or None (a lambda, a local
    function, something defined in __main__)."""
    module_name, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module_name or not qualname or "<" in qualname or module_name == "__main__":
        return None
    module = sys.modules.get(module_name)
    if module is None:
        return None
    target: Any = module
    for part in qualname.split("."):
        target = getattr(target, part, None)
    if target is not fn:
        return None
    if module_name.startswith(_MODULE_PREFIX):  # a user file gemdeploy loaded: name the file again
        return f"{module.__file__}:{qualname}" if getattr(module, "__file__", None) else None
    return f"{module_name}:{qualname}"


# --- loading a factory -----------------------------------------------------------------------------------
_LOADED: dict[tuple[str, str], Any] = {}  # (absolute file, sha256) -> module


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _check_recorded(spec: UserSpec, path: Path | None, sha256: str | None) -> str | None:
    """The file's sha256 now, after refusing a file that moved or changed since a run recorded it."""
    if path is None:
        return None
    if not path.is_file():
        if sha256:
            raise GemdeployError(f"{path}, which defines this run's {spec.text}, is gone (moved or deleted); put it "
                                 "back where it was to rebuild the run")
        raise GemdeployError(f"no such file {path} ({spec.text})")
    now = file_sha256(path)
    if sha256 and now != sha256:
        raise GemdeployError(f"{path} changed since this run recorded it (sha256 {now[:12]}... != {sha256[:12]}...); "
                             f"the run's weights were made with the old code: restore it or mine again")
    return now


def _load_file(path: Path, sha256: str) -> Any:
    key = (str(path.resolve()), sha256)
    if key in _LOADED:
        return _LOADED[key]
    name = f"{_MODULE_PREFIX}{sha256[:16]}_{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise GemdeployError(f"cannot load {path} as Python code")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses, pickling by DataLoader workers and typing need it there
    folder = str(path.resolve().parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)  # the file may import its neighbours, as it would when run as a script
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's code may raise anything
        sys.modules.pop(name, None)
        raise GemdeployError(f"running {path} failed: {_one_line(exc)}") from None
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)
    _LOADED[key] = module
    return module


def load(value: str, what: str, sha256: str | None = None) -> Any:
    """The object a file or module spec names (its file checked against ``sha256`` when a run recorded one)."""
    spec = parse(value)
    if spec is None or spec.kind not in ("file", "module"):
        raise ValueError(f"not a file or module spec: {value!r}")
    problem = syntax_problem(value, torchvision=True)
    if problem:
        raise GemdeployError(f"{what} {value!r} {problem}")
    path = source_file(spec)
    now = _check_recorded(spec, path, sha256)
    if spec.kind == "file":
        module = _load_file(Path(spec.target), now)
        where = str(spec.target)
    else:
        try:
            module = importlib.import_module(spec.target)
        except Exception as exc:  # noqa: BLE001 - the user's code may raise anything
            raise GemdeployError(f"cannot import {spec.target} ({value}): {_one_line(exc)}") from None
        where = f"module {spec.target}"
    obj: Any = module
    for part in spec.attr.split("."):
        if not hasattr(obj, part):
            raise GemdeployError(f"{where} has no {spec.attr!r} (the {what} {value})")
        obj = getattr(obj, part)
    return obj


def call_factory(factory: Callable, value: str, what: str, **kwargs: Any) -> Any:
    """Call a user's factory with the keyword arguments its signature accepts (by name, else positionally in the
    given order, else none at all); its own exceptions become one line naming it."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        sig = None
    args: tuple = ()
    call_kwargs: dict[str, Any] = kwargs
    if sig is not None:
        for attempt_args, attempt_kwargs in (((), kwargs), (tuple(kwargs.values()), {}), ((), {})):
            try:
                sig.bind(*attempt_args, **attempt_kwargs)
            except TypeError:
                continue
            args, call_kwargs = attempt_args, attempt_kwargs
            break
        else:
            names = ", ".join(kwargs)
            raise GemdeployError(f"the {what} factory {value} must accept ({names}) or no arguments; its signature "
                                 f"is {factory.__name__ if hasattr(factory, '__name__') else value}{sig}")
    try:
        return factory(*args, **call_kwargs)
    except GemdeployError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code may raise anything
        raise GemdeployError(f"the {what} factory {value} failed: {_one_line(exc)}") from None
