"""Helpers shared by the exploration modules: conversion, L2 normalisation, masked per-label AUROC, and a
progress line for long steps."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

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


def masked_auc(
    y_true: np.ndarray, scores: np.ndarray, labels: Sequence[str] | None = None
) -> tuple[dict[str, float], float]:
    """Per-label AUROC on known entries and their macro mean.

    Args:
        y_true: (N, C) with 1, 0 or NaN (unknown, masked out).
        scores: (N, C) higher = more likely positive.
        labels: C names for the result keys (default ``"0"``, ``"1"``, ...).

    Returns:
        ``({label: auc}, macro)``; a label without both classes among its known rows gets NaN and is left out
        of the macro mean; the macro is NaN when no label qualifies.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if y_true.shape != scores.shape or y_true.ndim != 2:
        raise ValueError(f"y_true {y_true.shape} and scores {scores.shape} must both be (N, C)")
    names = list(labels) if labels is not None else [str(j) for j in range(y_true.shape[1])]
    if len(names) != y_true.shape[1]:
        raise ValueError(f"{len(names)} label names for {y_true.shape[1]} columns")
    per_label: dict[str, float] = {}
    for j, name in enumerate(names):
        known = np.isfinite(y_true[:, j])
        y = y_true[known, j]
        if y.size == 0 or y.min() == y.max():
            per_label[name] = float("nan")
            continue
        per_label[name] = float(roc_auc_score(y, scores[known, j]))
    valid = [v for v in per_label.values() if np.isfinite(v)]
    if len(valid) < len(per_label):
        skipped = [k for k, v in per_label.items() if not np.isfinite(v)]
        log.debug("AUROC undefined (one class) for %s; left out of the macro mean", ", ".join(skipped))
    macro = float(np.mean(valid)) if valid else float("nan")
    return per_label, macro


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
