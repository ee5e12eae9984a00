"""``cxrfa ui``: the MLflow UI on the project's store, opened on the cells side by side."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cxrfa.cli._common import PortOpt, TrackingUriOpt, console, user_errors
from cxrfa.tracking import UI_PORT

if TYPE_CHECKING:
    from cxrfa.tracking import CellView


@user_errors
def ui(
    port: PortOpt = UI_PORT,
    tracking_uri: TrackingUriOpt = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, help="Server worker processes (default: one per 2 cores)."),
    ] = None,
) -> None:
    """Start the MLflow UI on the project's store, bound to 127.0.0.1; print its links once it answers.

    For every experiment with cell runs it prints two links, to the runs grouped by cell with test/macro_auc and
    test/map as columns, and to the chart view with one bar per cell. The server's access log goes to a file
    (printed); press Enter to print the links again. Ctrl-C or SIGTERM stops the server and every process it
    started; so does the end of this command by any means, SIGKILL included (Linux).
    """
    from cxrfa.tracking import ui_command
    from cxrfa.uiserver import check_port, log_path, serve

    port = check_port(port)
    cmd, env = ui_command(tracking_uri, port, workers)
    raise typer.Exit(serve(cmd, env, port, lambda url: _show_links(url, log_path(port))))


def _show_links(url: str, log: Path) -> None:
    """Print the UI's links, then again each time Enter is pressed (the server keeps running meanwhile)."""
    import sys
    import threading

    from cxrfa.tracking import cell_views

    try:
        views = cell_views(url, url)  # through the server: it writes the saved view
    except Exception as err:  # noqa: BLE001 - the links are a convenience; the UI itself is up
        console.print(f"[yellow]could not list the experiments for links ({str(err)[:200]})[/]")
        views = []

    def show() -> None:
        console.print(
            f"MLflow UI: {url}   (server log: {log}; Ctrl-C to stop)", highlight=False, soft_wrap=True
        )
        for view in views:
            _show_view(view)
        if sys.stdin.isatty():
            console.print("[dim]Enter prints these links again.[/]")

    show()

    def again() -> None:
        for _ in sys.stdin:
            show()

    if sys.stdin.isatty():
        threading.Thread(target=again, daemon=True).start()


def _show_view(view: CellView) -> None:
    console.print(f"  [bold]{view.experiment}[/]", highlight=False)
    console.print(
        f"    cells side by side (grouped by cxrfa.cell): {view.table}", highlight=False, soft_wrap=True
    )
    console.print(
        f"    one bar per cell (test/macro_auc, test/map): {view.charts}", highlight=False, soft_wrap=True
    )


def register(app: typer.Typer) -> None:
    app.command()(ui)
