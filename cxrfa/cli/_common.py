"""Shared CLI plumbing: the options several commands take, one-line user errors with exit status 2,
logging, the console.

Style of every command module: commands are module-level functions decorated with :func:`user_errors`, a
command group is a module-level ``typer.Typer``, and the module's ``register(app)`` only attaches them. An
option that more than one command takes is declared here, once.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console

from cxrfa.errors import CxrfaError

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

TrackingUriOpt = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        envvar="MLFLOW_TRACKING_URI",
        show_envvar=True,
        help="MLflow store: a folder (SQLite inside), sqlite:///…, http://host:port, postgresql://…. "
        "Default ./mlruns.",
    ),
]
MatrixOpt = Annotated[
    str,
    typer.Option("--matrix", "-m", help="Matrix name (ablations/NAME.yaml, a path, or a packaged matrix)."),
]
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="Manifest CSV (from `cxrfa data index`). Omit for the built-in synthetic demo.",
        dir_okay=False,
    ),
]
BackbonesOpt = Annotated[
    str,
    typer.Option(
        "--backbones", help="'demo' (stand-ins), 'real' (CLIP ViT-B-16/openai, BiomedCLIP) or a YAML file."
    ),
]
NoCacheOpt = Annotated[
    bool,
    typer.Option(
        "--no-feature-cache", help="Encode images afresh: neither read nor write the feature cache."
    ),
]


def user_errors(fn: F) -> F:
    """Decorate a command: a :class:`CxrfaError` prints ``error: <line>`` and exits 2; bugs still raise."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _setup_logging()
        from cxrfa.signals import Terminated, exit_now, exit_status, reason, stop_signals_interrupt

        try:
            with stop_signals_interrupt():  # SIGTERM/SIGHUP stop a command the way Ctrl-C does
                return fn(*args, **kwargs)
        except KeyboardInterrupt as err:
            console.print(f"{reason(err)}; run the same command again to resume", highlight=False)
            if isinstance(err, Terminated):  # a signal from outside: cleanup done, exit without the teardown
                exit_now(exit_status(err))
            raise typer.Exit(exit_status(err)) from None
        except CxrfaError as err:
            _fail(one_line(str(err)), err.exit_code)
        except OSError as err:
            if err.errno not in _ENVIRONMENT_ERRNOS:
                raise
            # a read-only store, a full disk: the user's environment, not a bug; name the file, no traceback
            where = f"{err.filename}: " if err.filename else ""
            _fail(f"{where}{err.strerror}; {_ENVIRONMENT_ERRNOS[err.errno]}", 2)

    return wrapper  # type: ignore[return-value]


_ENVIRONMENT_ERRNOS = {
    errno.EACCES: "fix the permissions or choose a folder you can write",
    errno.EPERM: "fix the permissions or choose a folder you can write",
    errno.EROFS: "choose a folder on a writable file system",
    errno.ENOSPC: "free some disk space",
    errno.EDQUOT: "free some space within your disk quota",
}


def one_line(message: str) -> str:
    """The user's line of a :class:`CxrfaError` message.

    A DataLoader worker's error reaches the main process re-raised with the worker's traceback folded into the
    message; its last line is the original ``CxrfaError: <line>``.
    """
    if "\nOriginal Traceback" not in message:
        return message
    return message.rstrip().splitlines()[-1].split("CxrfaError: ", 1)[-1]


def _fail(line: str, code: int) -> NoReturn:
    from rich.text import Text

    from cxrfa.tracking import redact_text

    line = redact_text(line)  # a driver's message may quote a URL's secrets back
    # the line as plain text: brackets in a message (cell[axis=v]) are never read as markup
    console.print(Text.assemble(("error:", "bold red"), " ", line), highlight=False, soft_wrap=True)
    raise typer.Exit(code) from None


def _setup_logging() -> None:
    root = logging.getLogger("cxrfa")
    if not root.handlers:
        from rich.logging import RichHandler

        handler = RichHandler(console=console, show_path=False, show_time=False, markup=False)
        from cxrfa.tracking import RedactingFilter

        handler.addFilter(RedactingFilter())  # secrets never reach a log line
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
