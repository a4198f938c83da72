"""The Typer application: `gemdeploy mine | export | bench | sanity | compact | doctor`."""

from __future__ import annotations

import typer

from gemdeploy.cli.bench import bench
from gemdeploy.cli.compact import compact
from gemdeploy.cli.doctor import doctor
from gemdeploy.cli.export import export
from gemdeploy.cli.mine import mine
from gemdeploy.cli.sanity import sanity

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Mine lottery tickets at initialization (Gem-Miner), compact them and ship fast engines.")
app.command("mine")(mine)
app.command("sanity")(sanity)
app.command("export")(export)
app.command("doctor")(doctor)
app.command("compact")(compact)
app.command("bench")(bench)


@app.command("methods")
def methods() -> None:
    """List the ticket-finding methods, models and data sets."""
    from gemdeploy.data import DATASETS
    from gemdeploy.miners import METHODS
    from gemdeploy.models import MODELS

    print("methods: " + ", ".join(METHODS.names()))
    print("models:  " + ", ".join(MODELS.names()))
    print("data:    " + ", ".join(DATASETS.names()))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
