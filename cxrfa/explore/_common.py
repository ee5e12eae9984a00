"""Helpers shared by the exploration modules: conversion, L2 normalisation and a progress line for long steps."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ArrayLike = Any  # numpy array or torch tensor; torch stays an optional import here


def to_numpy(x: ArrayLike) -> np.ndarray:
    """A float64 numpy copy of an array or (possibly fp16, on-device, grad-tracking) torch tensor."""
    if hasattr(x, "detach"):  # torch.Tensor without importing torch
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows (last axis) scaled to unit length; an all-zero row stays zero."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, eps)


@contextlib.contextmanager
def step(description: str, spinner: bool = True) -> Iterator[None]:
    """Say what a long step is doing, then log how long it took (INFO).

    ``spinner=True``: a spinner with the elapsed time on stderr while it runs, for steps that print nothing
    of their own (a UMAP fit, a numba compile). ``False``: a log line when it starts instead, for steps that may
    show their own progress bars or logs (a spinner would fight them for the terminal).
    """
    start = time.perf_counter()
    if spinner:
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
            bar.add_task(description, total=None)
            yield
    else:
        log.info("%s …", description)
        yield
    log.info("%s: %.1f s", description, time.perf_counter() - start)
