"""The class-balanced modality gap under patient weights, from per-patient sufficient statistics.

The gap (:func:`cxrfa.losses.modality_gap_vector`) is ‖mean over the present labels c of (centroid_c − L̂_c)‖,
centroid_c the mean unit image-side feature of the images with c. Under patient weights w (a bootstrap replicate:
how often each patient was drawn) centroid_c − L̂_c = Σ_p w_p R[p, c] / Σ_p w_p n[p, c], with n[p, c] patient p's
images with c and R[p, c] the sum over them of (unit feature − L̂_c). So a run logs R and n for the (patient,
label) pairs with c present (about one per positive) and any weight vector gives that replicate's gap exactly:
compare resamples it with the same patients as every other metric.

R, not the plain sums: it is as small as the gap itself, so storing it in float32 (half the file) costs
≈1e-7 of the gap, where plain sums (norm ≈ n) would lose that much of each centroid and more of a small gap.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

GAP_STATS = "modality_gap_stats.npz"  # the run artifact holding them
GapStats = dict[
    str, np.ndarray
]  # patients (P,), pair_patient (K,), pair_label (K,), count (K,), residual (K, D)


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length as ``torch.nn.functional.normalize`` does (an all-zero row stays zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def gap_statistics(
    features: np.ndarray, prototypes: np.ndarray, y_true: np.ndarray, patients: np.ndarray | list
) -> GapStats:
    """Per (patient, present label) image counts and summed residuals of the unit features from the prototype.

    Args:
        features: (N, C, D) per-label image-side features, or (N, D) one embedding per image that stands for
            each of its labels.
        prototypes: (C, D) label prototypes (normalised here).
        y_true: (N, C) 1/0/NaN; only label-present pairs enter the gap.
        patients: (N,) patient id of each image.

    Returns:
        ``patients`` (P,) ids of the patients with a present label, ``pair_patient`` (K,) index into them,
        ``pair_label`` (K,) label index, ``count`` (K,) images, ``residual`` (K, D) float32 summed residuals.

    Raises:
        ValueError: the shapes disagree.
    """
    f, y = np.asarray(features, dtype=np.float64), np.asarray(y_true, dtype=np.float64)
    protos = _unit(np.asarray(prototypes, dtype=np.float64))  # (C, D)
    n, c = y.shape
    ids = np.asarray(patients).astype(str)
    if f.shape[0] != n or ids.shape != (n,) or protos.shape[0] != c or f.shape[-1] != protos.shape[-1]:
        raise ValueError(
            f"features {f.shape}, prototypes {protos.shape}, labels {y.shape} and {ids.size} patient ids disagree"
        )
    rows, cols = np.nonzero(y == 1)  # (n_pos,) present (image, label) pairs; NaN compares False
    unit = _unit(f[rows, cols] if f.ndim == 3 else f[rows])  # (n_pos, D)
    names, code = np.unique(ids[rows], return_inverse=True)  # patients with a present label
    pair, inverse = np.unique(code * c + cols, return_inverse=True)  # (K,) one id per (patient, label)
    residual = np.zeros((pair.size, protos.shape[1]))
    np.add.at(residual, inverse, unit - protos[cols])
    return {
        "patients": names,
        "pair_patient": (pair // c).astype(np.int64),
        "pair_label": (pair % c).astype(np.int64),
        "count": np.bincount(inverse, minlength=pair.size).astype(np.int64),
        "residual": residual.astype(np.float32),
    }


def weighted_gap(stats: Mapping[str, np.ndarray], weights: np.ndarray) -> np.ndarray:
    """(b,) class-balanced gap norm under each row of (b, P) patient weights (``stats["patients"]`` order).

    A label none of whose patients is drawn is not present in that replicate (as in a batch without it); no
    label present gives 0, as :func:`cxrfa.losses.modality_gap_vector` does.
    """
    w = np.asarray(weights, dtype=np.float64)[:, stats["pair_patient"]]  # (b, K)
    residual = stats["residual"].astype(np.float64)  # (K, D)
    count = stats["count"].astype(np.float64)
    total = np.zeros((w.shape[0], residual.shape[1]))  # (b, D) Σ over present labels of centroid − prototype
    present = np.zeros(w.shape[0])
    for label in np.unique(stats["pair_label"]):
        k = stats["pair_label"] == label
        images = w[:, k] @ count[k]  # (b,)
        drawn = images > 0
        total[drawn] += (w[drawn][:, k] @ residual[k]) / images[drawn, None]
        present += drawn
    gap = total / np.maximum(present, 1)[:, None]
    return np.linalg.norm(gap, axis=1)


def save_gap_stats(stats: Mapping[str, np.ndarray], path: Path) -> Path:
    """Write the statistics as one ``.npz`` (no pickled objects, so :func:`load_gap_stats` never unpickles)."""
    np.savez_compressed(path, **stats)
    return path


def load_gap_stats(path: Path) -> GapStats:
    """Read a file written by :func:`save_gap_stats`.

    Raises:
        ValueError: a key is missing or an array is an object array (not written by :func:`save_gap_stats`).
    """
    with np.load(path, allow_pickle=False) as data:
        stats = {key: data[key] for key in data.files}
    missing = {"patients", "pair_patient", "pair_label", "count", "residual"} - set(stats)
    if missing:
        raise ValueError(f"{path}: no {', '.join(sorted(missing))}; not a modality gap statistics file")
    return stats
