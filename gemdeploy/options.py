"""Options declared once: a dataclass field carries its default, help, range check and choices, and both the
validation and the command line are generated from it (open_lth's idea: hyperparameters as dataclasses).

    @dataclass(frozen=True)
    class ExportOptions:
        calib_samples: int = option(512, "INT8 calibration images.", check=at_least(1))

`validate(obj)` checks every declared field and raises one GemdeployError line naming the option and its
range; `cli_parameters(cls)` turns the fields into Typer options for a command's signature. Choices come
from callables (usually a registry's `names`) so they are read when help is shown, never hard-coded twice.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

from gemdeploy.errors import GemdeployError

Check = Callable[[Any], Optional[str]]  # returns what is wrong ("must be >= 1"), or None


@dataclass(frozen=True)
class Spec:
    help: str
    check: Check | None = None
    choices: Callable[[], list[str]] | None = None  # allowed values (each element, for list options)
    cli: bool = True  # False: recorded in the config, never a command-line option
    flag: str | None = None  # command-line name when it differs from --field-name
    short: str | None = None
    metavar: str | None = None
    panel: str | None = None  # rich help panel
    kind: str | None = None  # what a choice is called in errors ("model", "data set", ...)
    parse: Callable[[str], Any] | None = None  # text from the command line -> value (a number or a keyword)
    # Values accepted besides the choices (e.g. a `file.py:factory` spec); `check` still runs on them.
    also: Callable[[Any], bool] | None = None
    also_help: str | None = None  # how the refusal of an unknown choice names those other forms
    off_help: str | None = None  # a bool that is on by default: the help of its --no-NAME switch


NO_PREFIX = "no__"  # the command-line parameter of a default-on bool's --no-NAME switch


def option(default: Any, help: str, *, check: Check | None = None, choices: Callable[[], list[str]] | None = None,
           cli: bool = True, flag: str | None = None, short: str | None = None, metavar: str | None = None,
           panel: str | None = None, kind: str | None = None, parse: Callable[[str], Any] | None = None,
           also: Callable[[Any], bool] | None = None, also_help: str | None = None,
           off_help: str | None = None) -> Any:
    """A dataclass field with its command-line declaration (a list default is copied for every instance). A bool
    that defaults to True gets only a ``--no-NAME`` switch on the command line (help: ``off_help``)."""
    spec = Spec(help, check, choices, cli, flag, short, metavar, panel, kind, parse, also, also_help, off_help)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"spec": spec})
    return field(default=default, metadata={"spec": spec})


def spec_of(f: dataclasses.Field) -> Spec | None:
    return f.metadata.get("spec")


def flag_name(f: dataclasses.Field) -> str:
    spec = spec_of(f)
    return (spec.flag if spec and spec.flag else "--" + f.name.replace("_", "-"))


# --- checks ----------------------------------------------------------------------------------------------
def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def at_least(lo: float) -> Check:
    return lambda v: None if _finite(v) and v >= lo else f"must be a number >= {lo:g}"


def greater_than(lo: float) -> Check:
    return lambda v: None if _finite(v) and v > lo else f"must be a finite number > {lo:g}"


def in_range(lo: float, hi: float, *, hi_open: bool = False, lo_open: bool = False) -> Check:
    text = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def check(v):
        ok = _finite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        return None if ok else f"must be in {text}"

    return check


def require(flag: str, value: Any, check: Check) -> None:
    """Refuse ``value`` of ``flag`` in one line when ``check`` finds it wrong (the same words as `validate`)."""
    problem = check(value)
    if problem:
        raise GemdeployError(f"{flag} {problem}, got {value!r}")


def optional(check: Check) -> Check:
    return lambda v: None if v is None else check(v)


def each(check: Check) -> Check:
    def run(values):
        for v in values:
            problem = check(v)
            if problem:
                return problem
        return None

    return run


def finite() -> Check:
    return lambda v: None if _finite(v) else "must be a finite number"


# --- validation ------------------------------------------------------------------------------------------
def _type_problem(value: Any, tp: Any) -> str | None:
    """What is wrong with ``value``'s type for the annotation ``tp`` (a config file may hold anything)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        problems = [_type_problem(value, a) for a in args]
        return None if any(p is None for p in problems) else next(p for p in problems if p)
    if tp is type(None):
        return None if value is None else "must be empty (null)"
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return "must be a list"
        inner = args[0] if args else Any
        return next((p for p in (_type_problem(v, inner) for v in value) if p), None)
    if tp is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if tp is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
    if tp is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "must be a number"
    if tp is str:
        return None if isinstance(value, str) else "must be a string"
    return None


def validate(obj: Any) -> None:
    """Check every declared field of the dataclass ``obj`` (type, choices, range); one GemdeployError line for the
    first bad one."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        spec = spec_of(f)
        if spec is None:
            continue
        value = getattr(obj, f.name)
        problem = _type_problem(value, hints[f.name])
        if problem:
            raise GemdeployError(f"{flag_name(f)} {problem}, got {value!r}")
        if spec.choices is not None and value is not None:
            allowed = spec.choices()
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if v not in allowed and not (spec.also is not None and spec.also(v)):
                    kind = spec.kind or flag_name(f)[2:].replace("-", " ")
                    more = f"; or {spec.also_help}" if spec.also_help else ""
                    raise GemdeployError(f"unknown {kind} {v!r} ({flag_name(f)}); choose one of: {', '.join(allowed)}"
                                         f"{more}")
        if spec.check is not None:
            require(flag_name(f), value, spec.check)


def defaults(cls) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


def changed(obj: Any) -> dict[str, Any]:
    """The declared fields of the dataclass ``obj`` whose value is not their default (what a user gave)."""
    base = defaults(type(obj))
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)
            if f.name in base and getattr(obj, f.name) != base[f.name]}


class OptionGroup:
    """The options one ticket method declares for itself: subclass it as a frozen dataclass of `option(...)` fields
    (open_lth's per-strategy hparams). The run's configuration holds the group of its --method, records it in
    config.json, validates it with `validate` and shows it in `mine -h` under the method's name."""

    note: ClassVar[str] = ""  # said after the method's name in the help panel

    def cross_check(self, cfg: Any) -> None:
        """Refuse (GemdeployError) a combination with the shared options of ``cfg`` (a MineConfig)."""

    def resolved(self, cfg: Any, train_size: int | None) -> "OptionGroup":
        """The group that runs: the reference values in place of the options left at None (``cfg`` the MineConfig,
        ``train_size`` the training split's length, or None where it is not known yet)."""
        return self


# --- command line ----------------------------------------------------------------------------------------
def _cli_annotation(tp: Any) -> Any:
    """The Typer annotation for a field type. Choices stay plain strings: `validate` refuses a bad one with the
    project's own one-line message (and the help text lists them)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = next(a for a in args if a is not type(None))
        return typing.Optional[_cli_annotation(inner)]
    if origin in (list, tuple):
        return typing.List[args[0] if args else str]  # type: ignore[valid-type]
    return tp


def cli_parameters(cls, *, skip: tuple[str, ...] = (), overrides: dict[str, Any] | None = None,
                   panel: str | None = None) -> list[inspect.Parameter]:
    """Typer options for every declared command-line field of ``cls`` (in declaration order); ``panel``: the help
    panel of them all (a method's options group shows under the method's name)."""
    import typer

    hints = typing.get_type_hints(cls)
    base = defaults(cls)
    base.update(overrides or {})
    params = []
    for f in dataclasses.fields(cls):
        spec = spec_of(f)
        if spec is None or not spec.cli or f.name in skip:
            continue
        tp = hints[f.name]
        default = base.get(f.name)
        names = [flag_name(f)] + ([spec.short] if spec.short else [])
        param_name = f.name
        help_text = spec.help
        if tp is bool and default:  # on by default: only the off switch is an option (one short name column)
            names, param_name, default = ["--no-" + names[0][2:]], NO_PREFIX + f.name, False
            help_text = spec.off_help or f"Turn off: {spec.help[0].lower()}{spec.help[1:]}"
        extra = {"metavar": spec.metavar} if spec.metavar else {}
        if spec.choices is not None:  # listed once in the help text; the metavar stays short
            help_text += f" Choices: {', '.join(spec.choices())}."
            extra.setdefault("metavar", "NAME")
        if tp is bool:
            extra["metavar"] = ""
        annotation = _cli_annotation(tp)
        if spec.parse is not None:  # the command line hands over text; `from_cli` parses it
            annotation = typing.Optional[str]
            default = None if default is None else str(default)
        opt = typer.Option(default, *names, help=help_text, rich_help_panel=panel or spec.panel, show_default=tp is not bool,
                           **extra)
        params.append(inspect.Parameter(param_name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=annotation))
    return params


def command(fn: Callable[..., Any], params: list[inspect.Parameter]) -> Callable[..., Any]:
    """Give ``fn(**kwargs)`` the signature ``params`` so Typer builds its options from them."""
    fn.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    fn.__annotations__ = {p.name: p.annotation for p in params}
    return fn


def from_cli(cls, values: dict[str, Any], **fixed: Any):
    """An instance of ``cls`` from the parsed command-line ``values`` (extra keys ignored) plus ``fixed``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items() if k in fields}
    for k, v in values.items():  # --no-NAME switches of options that are on by default
        if k.startswith(NO_PREFIX) and k[len(NO_PREFIX):] in fields and isinstance(v, bool):
            kwargs[k[len(NO_PREFIX):]] = not v
    for name, value in kwargs.items():
        spec = spec_of(fields[name])
        if spec is not None and spec.parse is not None and isinstance(value, str):
            try:
                kwargs[name] = spec.parse(value)
            except ValueError:
                problem = spec.check(value) if spec.check else "is not valid"
                raise GemdeployError(f"{flag_name(fields[name])} {problem}, got {value!r}") from None
    kwargs.update(fixed)
    return cls(**kwargs)
