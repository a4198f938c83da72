"""`gemdeploy methods`: the methods, models, data sets, sparsity patterns, export precisions and bench backends,
with a line each."""

from __future__ import annotations

import typer

from gemdeploy.cli.errors import friendly_errors


# Besides the names: your own model and data (gemdeploy.user_code; README "Your own model").
OWN = {
    "models": {"torchvision:NAME": "any torchvision classification model (untrained; e.g. torchvision:resnet18)",
               "path/to/file.py:FACTORY": "your factory, called with input_shape=(C, H, W) and num_classes",
               "package.module:FACTORY": "the same, from an importable module"},
    "data": {"path/to/file.py:FACTORY": "your data: train / val / test as (images, labels) or Datasets",
             "package.module:FACTORY": "the same, from an importable module"},
}


def catalog() -> dict[str, dict[str, str]]:
    from gemdeploy.bench.backends import BACKENDS
    from gemdeploy.data import DATASETS
    from gemdeploy.exporters.precisions import PRECISIONS
    from gemdeploy.mine.methods import METHODS
    from gemdeploy.models import MODELS
    from gemdeploy.sparsity import PATTERNS

    return {title: {name: reg.summary(name) for name in reg.names()}
            for title, reg in (("methods", METHODS), ("models", MODELS), ("data", DATASETS), ("patterns", PATTERNS),
                               ("precisions", PRECISIONS), ("backends", BACKENDS))}


@friendly_errors
def methods(json_out: bool = typer.Option(False, "--json", metavar="", help="Machine-readable JSON.")) -> None:
    """List the ticket-finding methods, models, data sets, sparsity patterns, export precisions and bench backends."""
    info = catalog()
    if json_out:
        import json

        print(json.dumps(info, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for title, entries in info.items():
        table = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
        table.add_column("name", style="bold", no_wrap=True)
        table.add_column("what it is")
        for name, summary in entries.items():
            table.add_row(name, summary)
        if title in OWN:
            for name, summary in OWN[title].items():
                table.add_row(name, summary, style="dim")
        console.print(table)
        console.print()
