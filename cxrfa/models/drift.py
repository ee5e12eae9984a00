"""Is the text still there after training? How far the label prototypes moved, and how much of the label
text's geometry they keep.

* :func:`mean_angle_deg`: the mean angle between each label's prototype before and after training.
* :func:`procrustes_residual`: the disparity of :func:`scipy.spatial.procrustes` (both sets centred and scaled
  to unit Frobenius norm, then the best rotation and scale), for sets of different widths: 0 = the same
  geometry up to rotation, scale and translation; towards 1 for unrelated sets. With C points in many
  dimensions a rotation fits part of any set (C Gaussian points are close to a regular simplex, so two random
  sets of 14 in 128 dimensions give about 0.05), so a run also logs the chance level of its text: the residual
  against the same text with its rows permuted (0.81 for the stand-in CLIP text of the 14 NIH labels; a
  Gaussian set against that text gives 0.65).
* :func:`prototype_drift`: both, as the metrics a run logs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import nn

CHANCE_PERMUTATIONS = 64  # row permutations averaged for drift/procrustes_text_chance


def mean_angle_deg(before: ArrayLike, after: ArrayLike) -> float:
    """Mean over rows of the angle (degrees) between ``before[c]`` and ``after[c]``, both (C, d)."""
    a, b = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))  # (C,)
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).mean())


def procrustes_residual(x: ArrayLike, y: ArrayLike) -> float:
    """Orthogonal-Procrustes disparity of two point sets with the same rows, (C, d1) and (C, d2).

    Each set is centred (column means) and scaled to unit Frobenius norm; the residual is
    min over orthogonal R and scale s of ||X - s Y R||² = 1 - ||Xᵀ Y||_*² (nuclear norm), the value
    :func:`scipy.spatial.procrustes` returns as its disparity when the widths agree (the narrower set is
    zero-padded otherwise, which changes nothing). Symmetric in ``x`` and ``y``.

    Raises:
        ValueError: different numbers of rows, or a set whose points all coincide.
    """
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"need two (C, d) sets with the same C, got {a.shape} and {b.shape}")
    return _residual(_factor(a), _factor(b))


def _factor(x: np.ndarray) -> np.ndarray:
    """R of Xᵀ = Q R for the set centred and scaled to unit norm, (k, C) with k = min(d, C).

    Xᵀ Y = Qx Rx Ryᵀ Qyᵀ has the singular values of Rx Ryᵀ: with C labels in d dimensions that is a (C, C)
    SVD in place of a (d1, d2) one, so the chance level's 64 permuted fits cost microseconds.
    """
    x = x - x.mean(0)
    norm = np.linalg.norm(x)
    if norm == 0:
        raise ValueError("a point set whose points all coincide has no geometry to compare")
    return np.linalg.qr((x / norm).T, mode="r")  # (k, C)


def _residual(ra: np.ndarray, rb: np.ndarray) -> float:
    """1 - ||Rx Ryᵀ||_*² for the factors of two centred, unit-norm sets (see :func:`procrustes_residual`)."""
    nuclear = np.linalg.svd(ra @ rb.T, compute_uv=False).sum()  # (k1, k2) -> Σ singular values
    return float(max(0.0, 1.0 - nuclear**2))


@torch.no_grad()
def label_prototypes(heads: nn.Module) -> torch.Tensor | None:
    """A detached copy of the final (C, d) label prototypes, computed without dropout; None without any."""
    if not getattr(heads, "has_prototypes", False):
        return None
    was_training = heads.training
    heads.eval()
    try:
        return heads.label_embeddings().detach().float().cpu().clone()
    finally:
        heads.train(was_training)


def prototype_drift(initial: ArrayLike, final: ArrayLike, text: ArrayLike | None = None) -> dict[str, float]:
    """The drift metrics of one run.

    Args:
        initial: (C, d) label prototypes as built (text through the untrained branch, or the initial queries).
        final: (C, d) label prototypes after training.
        text: (C, De_t) the centred label text each label was given (None for learned queries).

    Returns:
        ``drift/angle_deg`` (mean angle initial -> final), ``drift/procrustes_init`` (final vs initial
        geometry) and, with text, ``drift/procrustes_text`` (final vs the label text) beside
        ``drift/procrustes_text_chance`` (final vs the text with its rows permuted: the value of prototypes
        that kept nothing of the text's label structure; a fixed seed, so the same inputs give the same value).
    """
    out = {
        "drift/angle_deg": mean_angle_deg(initial, final),
        "drift/procrustes_init": procrustes_residual(final, initial),
    }
    if text is not None:
        text = np.asarray(text, dtype=np.float64)
        rng = np.random.default_rng(0)
        perms = [rng.permutation(len(text)) for _ in range(CHANCE_PERMUTATIONS)]
        out["drift/procrustes_text"] = procrustes_residual(final, text)
        # permuting the rows of the text permutes the columns of its factor: R(P T) = R(T) Pᵀ, so one QR serves
        # every permutation (centring and scale do not depend on the row order)
        rf, rt = _factor(np.asarray(final, dtype=np.float64)), _factor(text)
        out["drift/procrustes_text_chance"] = float(np.mean([_residual(rf, rt[:, p]) for p in perms]))
    return {k: v for k, v in out.items() if math.isfinite(v)}


def drift_metrics(heads: nn.Module, initial: torch.Tensor | None) -> dict[str, float]:
    """:func:`prototype_drift` of trained heads against their prototypes as built (empty without prototypes)."""
    final = label_prototypes(heads)
    if initial is None or final is None:
        return {}
    text = None
    if getattr(heads, "has_text", False):
        text = (heads.label_text - heads.text_centre).detach().float().cpu().numpy()  # (C, De_t)
    return prototype_drift(initial.numpy(), final.numpy(), text)
