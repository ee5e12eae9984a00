"""``cxrfa dashboard``: optuna-dashboard on the tuning studies' storage, bound to 127.0.0.1."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlparse

import typer

from cxrfa.cli._common import PortOpt, TrackingUriOpt, console, user_errors
from cxrfa.errors import CxrfaError

HOST = "127.0.0.1"  # never all interfaces: the dashboard can edit studies and has no authentication
INSTALL = "pip install optuna-dashboard (or pip install 'cxrfa[dashboard]')"


def dashboard_server() -> Callable[..., None]:
    """optuna-dashboard's ``run_server(storage, host, port)``.

    Raises:
        CxrfaError: optuna-dashboard is not installed (the line names the install command).
    """
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise CxrfaError(f"optuna-dashboard is not installed: {INSTALL}") from None
    return run_server


def study_storage(storage: str | None, tracking_uri: str | None) -> tuple[Any, str]:
    """Open the studies' storage the way ``cxrfa tune`` does (same journal lock): ``storage``, or the journal
    file with the tracking store's side files. Never creates one (nor the tracking store): an empty dashboard
    would only hide a wrong path.

    Returns:
        The optuna storage and its display form (credentials hidden).

    Raises:
        CxrfaError: no journal file there yet, or a storage that cannot be opened.
    """
    from cxrfa.tracking import resolve_uri
    from cxrfa.tuning import default_storage_path, open_storage

    if storage is None:
        journal: Path | None = default_storage_path(resolve_uri(tracking_uri, create=False)[0])
        storage, flag = str(journal), "the tracking store (--tracking-uri)"
    else:
        scheme = urlparse(storage).scheme
        journal = (
            Path(storage.removeprefix("journal:").removeprefix("//")) if scheme in ("", "journal") else None
        )
        flag = "--storage"
    if journal is not None and not journal.is_file():
        raise CxrfaError(
            f"no study storage at {journal} (from {flag}): run `cxrfa tune` first, or pass --storage with the "
            "journal file or database URL the studies used"
        )
    return open_storage(storage)


@user_errors
def dashboard(
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage",
            help="Study storage: a journal file or an SQLAlchemy URL (default: optuna.journal with the tracking store's side files, as cxrfa tune uses).",
        ),
    ] = None,
    port: PortOpt = 8080,
    tracking_uri: TrackingUriOpt = None,
) -> None:
    """Start optuna-dashboard on the tuning studies, bound to 127.0.0.1 (needs: pip install optuna-dashboard).

    Example:  cxrfa dashboard   then open http://127.0.0.1:8080
    """
    from cxrfa.uiserver import check_port, check_port_free

    serve = dashboard_server()
    port = check_port(port)
    opened, shown = study_storage(storage, tracking_uri)
    check_port_free(port)  # before the URL is printed: a URL that never answers misleads
    console.print(
        f"Optuna dashboard: http://{HOST}:{port}   (studies in {shown}; Ctrl-C to stop)",
        highlight=False,
        soft_wrap=True,  # the URL and path stay whole, for copying
    )
    _exit_on_stop_signals()
    try:
        serve(opened, host=HOST, port=port)
    except OSError as err:
        if err.errno != errno.EADDRINUSE:
            raise
        raise CxrfaError(
            f"port {port} on {HOST} is in use; pass another --port (0 picks a free one)"
        ) from None
    except KeyboardInterrupt:  # Ctrl-C or a stop signal: the dashboard's job is done
        from cxrfa.signals import exit_now

        # at once: after serving requests optuna-dashboard leaves threads that hold the interpreter's exit
        exit_now(0)


def register(app: typer.Typer) -> None:
    """Add ``dashboard`` to the main app."""
    app.command()(dashboard)


def _exit_on_stop_signals() -> None:
    """SIGTERM/SIGHUP end the dashboard at once: it only reads, so there is nothing to clean up, and an exception
    raised into the web server's loop was seen to leave the process running under load."""
    import signal
    import threading

    from cxrfa.signals import STOP_SIGNALS, exit_now

    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, lambda signum, frame: exit_now(0))
