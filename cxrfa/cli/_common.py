"""Shared CLI plumbing: one-line user errors with exit status 2, logging, the console."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from cxrfa.errors import CxrfaError

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Decorate a command: a :class:`CxrfaError` prints ``error: <line>`` and exits 2; bugs still raise."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _setup_logging()
        try:
            return fn(*args, **kwargs)
        except CxrfaError as err:
            console.print(f"[bold red]error:[/] {err}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(err.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _setup_logging() -> None:
    root = logging.getLogger("cxrfa")
    if not root.handlers:
        from rich.logging import RichHandler

        handler = RichHandler(console=console, show_path=False, show_time=False, markup=False)
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
