"""``cxrfa pipeline run``: a study recipe (data -> pretrain -> tune -> ablate -> compare)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrfa.cli._common import command_line, console, print_next, user_errors

pipeline_app = typer.Typer(
    help="Study recipes: data -> pretrain -> tune -> ablate -> compare.", no_args_is_help=True
)


@pipeline_app.command("run")
@user_errors
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (see pipelines/).")],
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Run a study recipe: data -> pretrain -> tune -> ablate -> compare, skipping stages already done.

    Example:  cxrfa pipeline run pipelines/demo.yaml
    """
    from rich.table import Table

    from cxrfa.pipeline import load_recipe, run_pipeline
    from cxrfa.tracking import redact

    spec = load_recipe(recipe)
    result = run_pipeline(spec, progress=not quiet, command=command_line("pipeline", "run", str(recipe)))
    table = Table(title=f"pipeline {result.recipe} (experiment {result.experiment})")
    for col in ("stage", "status", "seconds", "detail"):
        table.add_column(col)
    for s in result.stages:
        style = {"failed": "red", "skipped": "dim"}.get(s.status, "green")
        table.add_row(s.name, f"[{style}]{s.status}[/]", f"{s.seconds:.0f}", s.detail)
    console.print(table)
    if result.report is not None:
        console.print(f"report: [bold]{result.report}[/]", highlight=False, soft_wrap=True)
    # the recipe's store (a recipe names it in its file, not on the command line)
    print_next(command_line("ui", tracking_uri=redact(spec.tracking_uri) if spec.tracking_uri else None))
    if result.failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(pipeline_app, name="pipeline")
