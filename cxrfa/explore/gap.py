"""The modality gap (Liang et al. 2022, "Mind the Gap") and the gap-shift experiment.

Image and text embeddings of a contrastive model live in two separate cones of the unit sphere. The *gap* is
the difference of their centroids (after L2 normalisation). Shifting both modalities towards each other along
the gap direction and re-measuring a downstream metric shows whether the gap matters for that metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cxrfa.explore._common import ArrayLike, l2_normalise, to_numpy
from cxrfa.metrics import masked_auc
from cxrfa.plots import fixed_margins


@dataclass(frozen=True)
class GapResult:
    """The modality gap: ``vector`` (D,) = image centroid - text centroid, ``norm`` = its length."""

    vector: np.ndarray
    norm: float

    @property
    def direction(self) -> np.ndarray:
        """Unit gap direction (D,); zero when the gap is zero."""
        return self.vector / self.norm if self.norm > 0 else np.zeros_like(self.vector)


def _check_pair(img: np.ndarray, txt: np.ndarray) -> None:
    if img.shape[-1] != txt.shape[-1]:
        raise ValueError(f"image width {img.shape[-1]} != text width {txt.shape[-1]}")
    if img.shape[0] == 0 or txt.shape[0] == 0:
        raise ValueError("the modality gap needs at least one image and one text embedding")


def modality_gap(img: ArrayLike, txt: ArrayLike) -> GapResult:
    """Centroid difference of the L2-normalised image (N, D) and text (M, D) embeddings."""
    img_n, txt_n = l2_normalise(to_numpy(img)), l2_normalise(to_numpy(txt))
    _check_pair(img_n, txt_n)
    vector = img_n.reshape(-1, img_n.shape[-1]).mean(0) - txt_n.reshape(-1, txt_n.shape[-1]).mean(0)  # (D,)
    return GapResult(vector=vector, norm=float(np.linalg.norm(vector)))


def balanced_gap(features: ArrayLike, prototypes: ArrayLike, y_true: ArrayLike) -> GapResult:
    """The class-balanced modality gap of per-label features (N, C, D) and label prototypes (C, D): the
    definition the ``domain`` loss optimises (:func:`cxrfa.losses.modality_gap_vector`), 0 for perfectly
    aligned features whatever the label frequencies."""
    import torch

    from cxrfa.losses import modality_gap_vector

    f, p = to_numpy(features), to_numpy(prototypes)
    _check_pair(f.reshape(-1, f.shape[-1]), p)
    y = torch.as_tensor(to_numpy(y_true), dtype=torch.float64)
    vector = modality_gap_vector(torch.as_tensor(f, dtype=torch.float64), torch.as_tensor(p), y).numpy()
    return GapResult(vector=vector, norm=float(np.linalg.norm(vector)))


def measured_gap(img: ArrayLike, txt: ArrayLike, y_true: ArrayLike) -> GapResult:
    """The gap as ``embed/modality_gap``, ``embed/modality_gap_pooled`` and ``cxrfa explore gap`` report it:
    :func:`balanced_gap` of per-label features (N, C, D), or of one embedding per image (N, D) standing for each
    of its labels (the unbalanced centroid gap :func:`modality_gap` gave 0.6 for perfectly aligned images)."""
    return balanced_gap(img, txt, y_true)


def no_image_gap(img: ArrayLike, txt: ArrayLike, y_true: ArrayLike) -> GapResult:
    """The reference reported beside a gap: :func:`measured_gap` of features that ignore the image, every
    image's unit features replaced by their mean over the images (the expected centroids when the images are
    shuffled across the labels).

    The gap term alone closes the gap without the image (a constant image took it from 0.97 to 1e-7 on tiny
    heads), so a small gap shows alignment with the image only as far as it sits below this reference.

    Args:
        img: (N, C, D) per-label features or (N, D) image embeddings.
        txt: (C, D) label embeddings.
        y_true: (N, C) 1/0/NaN.
    """
    unit = l2_normalise(to_numpy(img))
    return measured_gap(np.repeat(unit.mean(0, keepdims=True), unit.shape[0], axis=0), txt, y_true)


def shift(
    img: ArrayLike, txt: ArrayLike, delta: float, renormalise: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Move the modalities along the unit gap direction ĝ: image by -δ/2·ĝ, text by +δ/2·ĝ.

    δ > 0 closes the gap, δ < 0 widens it. Inputs are L2-normalised first; ``img`` may be (N, D) or
    (N, C, D) (per-disease features), every vector moves by the same amount.

    Args:
        img: image embeddings (..., D).
        txt: text embeddings (M, D).
        delta: shift length along ĝ (same units as the gap norm).
        renormalise: put the shifted embeddings back on the unit sphere (as in the paper).

    Returns:
        ``(img', txt')`` with the input shapes.
    """
    img_n, txt_n = l2_normalise(to_numpy(img)), l2_normalise(to_numpy(txt))
    _check_pair(img_n, txt_n)
    g_hat = modality_gap(img_n, txt_n).direction  # (D,)
    img_s, txt_s = img_n - delta / 2 * g_hat, txt_n + delta / 2 * g_hat
    if renormalise:
        img_s, txt_s = l2_normalise(img_s), l2_normalise(txt_s)
    return img_s, txt_s


def cosine_scores(img: ArrayLike, txt_labels: ArrayLike) -> np.ndarray:
    """Zero-shot scores (N, C): cos(image, label text) for (N, D) images, or cos(F[n, c], L[c]) for (N, C, D)."""
    img_n, txt_n = l2_normalise(to_numpy(img)), l2_normalise(to_numpy(txt_labels))  # txt (C, D)
    if img_n.ndim == 2:
        return img_n @ txt_n.T
    if img_n.ndim == 3 and img_n.shape[1] == txt_n.shape[0]:
        return np.einsum("ncd,cd->nc", img_n, txt_n)
    raise ValueError(f"image embeddings {img_n.shape} do not match label embeddings {txt_n.shape}")


def gap_shift_experiment(
    img: ArrayLike, txt_labels: ArrayLike, y_true: ArrayLike, deltas: Sequence[float]
) -> pd.DataFrame:
    """Shift the modalities by each δ, re-measure the gap and the zero-shot macro AUROC.

    Args:
        img: image embeddings (N, D), or per-disease image features (N, C, D) (then the class-balanced gap of
            :func:`balanced_gap`).
        txt_labels: one text embedding per label (C, D).
        y_true: (N, C) 1/0, NaN = unknown (masked).
        deltas: shift lengths; 0 reproduces the unshifted model.

    Returns:
        One row per δ, columns ``delta``, ``gap`` (norm measured after the shift), ``macro_auc`` (zero-shot
        AUROC from cosine scores, macro over labels with both classes).
    """
    img_n, txt_n = l2_normalise(to_numpy(img)), l2_normalise(to_numpy(txt_labels))
    y = to_numpy(y_true)
    if y.shape != (img_n.shape[0], txt_n.shape[0]):
        raise ValueError(f"y_true {y.shape} must be (N, C) = ({img_n.shape[0]}, {txt_n.shape[0]})")
    g_hat = measured_gap(img_n, txt_n, y).direction  # the shift direction is fixed by δ = 0
    rows = []
    for delta in deltas:
        img_s = l2_normalise(img_n - delta / 2 * g_hat)
        txt_s = l2_normalise(txt_n + delta / 2 * g_hat)
        gap = measured_gap(img_s, txt_s, y).norm
        _, macro = masked_auc(y, cosine_scores(img_s, txt_s))
        rows.append({"delta": float(delta), "gap": gap, "macro_auc": macro})
    return pd.DataFrame(rows, columns=["delta", "gap", "macro_auc"])


def default_deltas(gap_norm: float, step: float = 0.25) -> list[float]:
    """Shift lengths from widening the gap by half to closing it fully: fractions -0.5, -0.5 + step, ..., 1.0
    of ``gap_norm`` (0 included when ``step`` divides 0.5)."""
    if step <= 0:
        raise ValueError(f"step must be positive, got {step}")
    fractions = np.arange(-0.5, 1.0 + step / 2, step)
    fractions = np.unique(np.round(np.append(fractions, 0.0), 9))
    return [float(f * gap_norm) for f in fractions]


def plot_gap_shift(df: pd.DataFrame, title: str = "Modality gap shift") -> Figure:
    """Zero-shot macro AUROC (top) and the re-measured gap (bottom) against the shift δ, δ = 0 highlighted.

    δ is the x axis (as a fraction of the original gap when that gap is non-zero: 1 = closed), so no point
    needs a text label and none can overlap, however fine the sweep.
    """
    data = df.sort_values("delta")
    origin = data[np.isclose(data["delta"], 0.0)]
    g0 = float(origin["gap"].iloc[0]) if len(origin) else 0.0
    x = data["delta"] / g0 if g0 > 0 else data["delta"]
    fig = Figure(figsize=(6.0, 5.6))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    fixed_margins(fig, left=0.8, right=0.2, bottom=0.55, top=0.35, hspace=0.15)
    top.plot(x, data["macro_auc"], "-o", color="tab:blue", markersize=4)
    bottom.plot(x, data["gap"], "-o", color="tab:grey", markersize=4)
    if len(origin):
        label = f"original (δ = 0): AUROC {origin['macro_auc'].iloc[0]:.3f}, gap {g0:.3f}"
        top.plot([0.0], [origin["macro_auc"].iloc[0]], "o", color="tab:red", ms=9, zorder=3, label=label)
        bottom.plot([0.0], [g0], "o", color="tab:red", markersize=9, zorder=3)
        top.legend(loc="best", fontsize=8)
    for ax in (top, bottom):
        ax.axvline(0.0, color="tab:red", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
    top.set_ylabel("zero-shot macro AUROC")
    bottom.set_ylabel("gap after the shift")
    bottom.set_xlabel(
        "shift δ / original gap  (< 0 widens, 1 closes the gap)"
        if g0 > 0
        else "shift δ (the original gap is 0)"
    )
    top.set_title(title, y=1.0)  # a fixed place: see plots.fixed_margins
    return fig
