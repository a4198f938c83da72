"""The Typer application: `gemdeploy mine | sanity | compact | export | bench | tune | doctor | methods`.

Start-up stays light: command modules import torch, ONNX Runtime and the rest only inside the command, so
`--help`, `methods` and every refusal of a bad argument answer at once.
"""

from __future__ import annotations

import os
import sys

import typer
from typer.core import TyperCommand, TyperGroup

from gemdeploy import __version__
from gemdeploy.cli.bench import bench
from gemdeploy.cli.compact import compact
from gemdeploy.cli.doctor import doctor
from gemdeploy.cli.errors import DEBUG_ENV, EXIT_USER_ERROR
from gemdeploy.cli.export import export
from gemdeploy.cli.methods import methods
from gemdeploy.cli.mine import mine
from gemdeploy.cli.sanity import sanity
from gemdeploy.cli.tune import tune

def _metavar(annotation) -> str:
    import typing
    from pathlib import Path

    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is not None and args:  # Optional[X], List[X]
        return _metavar(args[0])
    return {int: "INT", float: "FLOAT", str: "TEXT", bool: ""}.get(annotation, "PATH" if annotation is Path else "VALUE")


def _tidy_help(command, ctx) -> None:
    """Help that reads at 80 columns: no `<bool>` after flags (help included), short upper-case metavars
    (INT, PATH, ...) instead of `<list[Path]>`, arguments named in upper case (RUN)."""
    for param in command.get_params(ctx):
        if param.metavar is not None:
            continue
        annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
        if param.param_type_name == "argument":
            param.metavar = param.name.upper()
        elif getattr(param, "is_flag", False):
            param.metavar = ""
        else:
            param.metavar = _metavar(annotation)


class _Command(TyperCommand):
    def format_help(self, ctx, formatter):
        _tidy_help(self, ctx)
        return super().format_help(ctx, formatter)


class _Group(TyperGroup):
    def format_help(self, ctx, formatter):
        _tidy_help(self, ctx)
        return super().format_help(ctx, formatter)


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, cls=_Group,
                  context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
                  help="Mine lottery tickets at initialization (Gem-Miner), compact them and ship fast engines.")


def _version(value: bool) -> None:
    if value:
        print(f"gemdeploy {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True, metavar="",
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", metavar="", help="Show the traceback of an unexpected error."),
) -> None:
    if debug:
        os.environ[DEBUG_ENV] = "1"


for _name, _fn in (("mine", mine), ("sanity", sanity), ("compact", compact), ("export", export), ("bench", bench),
                   ("tune", tune), ("doctor", doctor), ("methods", methods)):
    app.command(_name, cls=_Command)(_fn)


ARGV: list[str] = []  # the arguments of the command being run (report.md quotes them)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a usage error (unknown option, bad value) is one line on stderr, like every other error."""
    from typer._click import exceptions as click_exc  # typer vendors click

    global ARGV
    ARGV = list(sys.argv[1:] if argv is None else argv)
    try:
        rv = app(args=argv, standalone_mode=False)
    except click_exc.NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(EXIT_USER_ERROR)
    except click_exc.UsageError as exc:
        hint = f" (see `gemdeploy {exc.ctx.info_name} -h`)" if exc.ctx is not None and exc.ctx.parent else ""
        message = exc.format_message().replace("\n", " ")
        print(f"error: {message}{hint}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
