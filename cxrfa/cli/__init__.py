"""The ``cxrfa`` command line: parse, load config, call the library. No logic lives here.

Heavy libraries (torch, mlflow, optuna) are imported inside commands so ``cxrfa --help`` stays instant.
"""

from __future__ import annotations

import importlib
from typing import Annotated

import typer
import typer.core

from cxrfa import __version__


def _switch_type(self: typer.core.TyperOption, ctx: typer.Context) -> str | None:
    # Typer 0.29 labels every bool option "<bool>" in --help, so a switch (`--dry-run`) reads as if it took a
    # value and `--dry-run true` looks right; a flag takes none, so it shows none.
    return None if self.is_flag else _value_type(self, ctx)


_value_type = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = _switch_type  # type: ignore[method-assign]

app = typer.Typer(
    name="cxrfa",
    help="Ablation lab for chest X-ray disease detection with CLIP-style image-text feature alignment.\n\n"
    "Start with the offline demo:  cxrfa ablate --matrix full   then   cxrfa compare  /  cxrfa ui",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cxrfa {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """cxrfa: does aligning image features with disease text embeddings improve CXR disease detection?"""


# One module per command group, each exposing ``register(app)``; the order is the order of ``--help``.
for _name in (
    "run",
    "compare",
    "ui",
    "evaluate",
    "tune",
    "pipeline",
    "dashboard",
    "data",
    "models",
    "explore",
):
    importlib.import_module(f"cxrfa.cli.{_name}").register(app)


def main() -> None:
    """Console-script entry point."""
    app()
