"""Patient (cluster) bootstrap: resamples as row-count matrices, whole test set or inside each subgroup, and
the percentile interval."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

from cxrfa.metrics.ranking import _rank_groups, _weighted_auc_ap

_BOOT_CHUNK = 50  # resamples held in memory at once: (chunk, N) row-count matrix


def cluster_codes(groups: np.ndarray | pd.Series | list | None, n: int) -> np.ndarray:
    """(N,) integer cluster code per row: the index of the row's id among the sorted unique ids.

    ``None`` makes every row its own cluster (an image-level bootstrap).

    Raises:
        ValueError: ``groups`` does not have ``n`` entries, or an id is missing (NaN/empty).
    """
    if groups is None:
        return np.arange(n)
    ids = pd.Series(np.asarray(groups, dtype=object)).astype("string")
    if len(ids) != n:
        raise ValueError(f"{len(ids)} patient ids for {n} rows")
    if ids.isna().any() or (ids.str.strip() == "").any():
        raise ValueError("a patient id is missing; every row needs one for a patient-level bootstrap")
    _, codes = np.unique(ids.to_numpy(dtype=str), return_inverse=True)
    return codes.astype(np.int64)


def row_counts(codes: np.ndarray, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Yield (b, N) row-count matrices, ``n_boot`` resamples in all, of a cluster (patient) bootstrap.

    Each resample draws G clusters with replacement from the G clusters of ``codes`` (``np.random.default_rng(seed)``,
    ``integers(0, G, size=(b, G))`` per chunk of b resamples) and takes every row of each drawn cluster, so a row's
    count is how many times its cluster was drawn. With one row per cluster this is the plain row bootstrap.

    Args:
        codes: (N,) cluster code of each row, in ``0..G-1`` (see :func:`cluster_codes`).
        n_boot: number of resamples.
        seed: seed of the generator.
    """
    rng = np.random.default_rng(seed)
    g = int(codes.max()) + 1 if codes.size else 0
    done = 0
    while done < n_boot:
        b = min(_BOOT_CHUNK, n_boot - done)
        idx = rng.integers(0, g, size=(b, g))  # (b, G) clusters drawn with replacement
        flat = (idx + np.arange(b)[:, None] * g).ravel()
        per_cluster = np.bincount(flat, minlength=b * g).reshape(b, g)  # (b, G) draws of each cluster
        yield per_cluster[:, codes].astype(np.float64)  # (b, N): every row of a drawn cluster, as often
        done += b


def stratified_row_counts(
    codes: np.ndarray, strata: np.ndarray, n_boot: int, seed: Sequence[int]
) -> Iterator[np.ndarray]:
    """Yield (b, N) row-count matrices, ``n_boot`` resamples in all, of a cluster bootstrap inside each stratum.

    A cluster is one patient's rows in one stratum (a patient whose images fall in two age bins is a cluster in
    each). Each resample draws, in every stratum, as many of its clusters as it has, with replacement
    (``np.random.default_rng(seed)``; per chunk, strata in code order), so every stratum keeps its size and its
    replicates vary only with its own patients. Rows of no stratum (code −1, unknown) get 0.

    Args:
        codes: (N,) cluster (patient) code of each row (:func:`cluster_codes`).
        strata: (N,) stratum code of each row, −1 for none.
        n_boot: number of resamples.
        seed: seed of the generator (a stream of its own per stratification).
    """
    rng = np.random.default_rng(list(seed))
    known = strata >= 0
    n_codes = int(codes.max()) + 1 if codes.size else 1
    pair = strata[known].astype(np.int64) * n_codes + codes[known]  # (n_known,) one id per (stratum, patient)
    unique, cluster = np.unique(pair, return_inverse=True)  # (K,), (n_known,) cluster of each known row
    members = [
        np.flatnonzero(unique // n_codes == g) for g in np.unique(unique // n_codes)
    ]  # clusters per stratum
    done = 0
    while done < n_boot:
        b = min(_BOOT_CHUNK, n_boot - done)
        per_cluster = np.zeros((b, unique.size))  # (b, K) draws of each cluster
        for m in members:
            idx = rng.integers(0, m.size, size=(b, m.size))  # (b, K_g) the stratum's clusters drawn
            flat = (idx + np.arange(b)[:, None] * m.size).ravel()
            per_cluster[:, m] = np.bincount(flat, minlength=b * m.size).reshape(b, m.size)
        counts = np.zeros((b, strata.size))
        counts[:, known] = per_cluster[:, cluster]  # every row of a drawn cluster, as often
        yield counts
        done += b


def bootstrap_per_label(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    n_boot: int,
    seed: int = 0,
    groups: np.ndarray | pd.Series | list | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-label AUROC and AP on ``n_boot`` cluster resamples (patients, or rows when ``groups`` is None).

    The resamples depend only on ``(groups, n_boot, seed)``, so two models scored with the same seed and the
    same rows see the same resamples (the basis of the paired tests in :mod:`cxrfa.stats`).

    Args:
        y_true: (N, C) labels, 1/0/NaN.
        y_prob: (N, C) scores.
        n_boot: number of resamples.
        seed: seed for ``np.random.default_rng``.
        groups: (N,) patient id of each row; a resample draws patients and keeps all their images.

    Returns:
        auc, ap: (n_boot, C) each; NaN where the label has one class in that resample.
    """
    n, c = y_true.shape
    codes = cluster_codes(groups, n)
    known = np.isfinite(y_true)
    prepared = []
    for j in range(c):
        rows = np.flatnonzero(known[:, j])
        order, starts = _rank_groups(y_prob[rows, j].astype(np.float64))
        prepared.append((rows[order], y_true[rows[order], j].astype(np.float64), starts))
    aucs, aps = [], []
    for counts in row_counts(codes, n_boot, seed):  # (b, N)
        auc_chunk = np.full((counts.shape[0], c), np.nan)
        ap_chunk = np.full((counts.shape[0], c), np.nan)
        for j, (rows, y_sorted, starts) in enumerate(prepared):
            if rows.size:
                auc_chunk[:, j], ap_chunk[:, j] = _weighted_auc_ap(y_sorted, counts[:, rows], starts)
        aucs.append(auc_chunk)
        aps.append(ap_chunk)
    if not aucs:
        return np.zeros((0, c)), np.zeros((0, c))
    return np.concatenate(aucs), np.concatenate(aps)


def percentile_ci(samples: np.ndarray) -> tuple[float, float]:
    """Percentile 95% interval of the finite samples (NaN, NaN when none); stays inside the samples' range."""
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(samples, [2.5, 97.5])
    return float(low), float(high)
