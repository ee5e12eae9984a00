"""Label-embedding similarity: cosine matrices, their mean off-diagonal value, side-by-side heatmaps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from cxrfa.explore._common import ArrayLike, l2_normalise, to_numpy
from cxrfa.labels import display_name


def similarity_matrix(emb: ArrayLike) -> np.ndarray:
    """Cosine similarity (C, C) between the rows of ``emb`` (C, D)."""
    e = l2_normalise(to_numpy(emb))
    if e.ndim != 2:
        raise ValueError(f"expected (C, D) embeddings, got {e.shape}")
    return np.clip(e @ e.T, -1.0, 1.0)


def mean_offdiag(sim: np.ndarray) -> float:
    """Mean of the off-diagonal entries of a square (C, C) matrix, C >= 2 (how alike distinct labels are)."""
    sim = np.asarray(sim, dtype=np.float64)
    c = sim.shape[0]
    if sim.ndim != 2 or sim.shape[1] != c or c < 2:
        raise ValueError(f"need a square matrix with at least 2 rows, got {sim.shape}")
    return float((sim.sum() - np.trace(sim)) / (c * (c - 1)))


def similarity_panels(
    stages: Mapping[str, ArrayLike], labels: Sequence[str], title: str = "Label-embedding cosine similarity"
) -> Figure:
    """One cosine-similarity heatmap per stage (e.g. raw text encoder, after transformer2, final), side by side.

    Args:
        stages: stage name -> label embeddings (C, D_stage), in display order.
        labels: the C label names.
        title: figure title.

    Returns:
        A Figure with one heatmap axis per stage (shared colour scale -1..1) plus a colour bar; each panel's
        title carries its mean off-diagonal similarity.
    """
    if not stages:
        raise ValueError("no embedding stages to plot")
    names = [display_name(lab) for lab in labels]
    c = len(names)
    side = max(3.6, 0.32 * c + 1.6)
    fig = Figure(figsize=(side * len(stages) + 0.8, side + 0.6), layout="constrained")
    axes = fig.subplots(1, len(stages), squeeze=False)[0]
    image = None
    for ax, (stage, emb) in zip(axes, stages.items(), strict=True):
        sim = similarity_matrix(emb)
        if sim.shape[0] != c:
            raise ValueError(f"stage {stage!r} has {sim.shape[0]} label embeddings for {c} labels")
        image = ax.imshow(sim, vmin=-1.0, vmax=1.0, cmap="RdBu_r")
        ax.set_title(f"{stage}\nmean off-diag = {mean_offdiag(sim):.3f}", fontsize=9)
        ax.set_xticks(range(c), names, rotation=90, fontsize=7)
        ax.set_yticks(range(c), names if ax is axes[0] else [""] * c, fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.colorbar(image, ax=list(axes), shrink=0.75, label="cosine similarity")
    return fig
