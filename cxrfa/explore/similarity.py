"""Label-embedding similarity: cosine matrices, their mean off-diagonal value, side-by-side heatmaps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import offset_copy

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


def _name_cells(fig: Figure, ax: Axes, names: Sequence[str], rows: bool) -> None:
    """Label a heatmap's columns (below, rotated) and, when ``rows``, its rows (left) with plain texts: tick objects
    (two marker lines and a text each, copied per tick) were two thirds of this figure's drawing time."""
    ax.set_xticks([])
    ax.set_yticks([])
    below = offset_copy(ax.transData, fig, y=-3, units="points")
    beside = offset_copy(ax.transData, fig, x=-3, units="points")
    c = len(names)
    for k, name in enumerate(names):
        ax.text(k, c - 0.5, name, rotation=90, ha="center", va="top", fontsize=7, transform=below)
        if rows:
            ax.text(-0.5, k, name, ha="right", va="center", fontsize=7, transform=beside)


def similarity_panels(
    stages: Mapping[str, ArrayLike], labels: Sequence[str], title: str = "Label-embedding cosine similarity"
) -> Figure:
    """One cosine-similarity heatmap per stage (e.g. raw text encoder, after transformer2, final), side by side.

    Each panel has its own colour range, from its smallest to its largest off-diagonal value, with its own
    colour bar saying so: raw text embeddings often sit at 0.8–1, which a fixed −1..1 scale would paint in one
    colour. The diagonal (always 1) is drawn grey so it does not take the top of the range.

    Args:
        stages: stage name -> label embeddings (C, D_stage), in display order.
        labels: the C label names.
        title: figure title.

    Returns:
        A Figure with one heatmap axis per stage, each followed by its colour bar; each panel's title carries
        its mean off-diagonal similarity.
    """
    if not stages:
        raise ValueError("no embedding stages to plot")
    names = [display_name(lab) for lab in labels]
    c = len(names)
    cell = 0.26  # inches per matrix cell
    side = max(2.4, cell * c)
    margin_l = margin_b = 0.3 + 0.06 * max(map(len, names), default=0)  # tick-label space (inches) at 7 pt
    bar = 1.2  # colour bar + its label
    top = 0.4 + 0.45  # figure title + two-line panel titles
    width = margin_l + len(stages) * (side + bar) + 0.3
    height = margin_b + side + top + 0.2
    fig = Figure(figsize=(width, height))  # fixed geometry: titles, ticks and bars never overlap
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#d9d9d9")
    for i, (stage, emb) in enumerate(stages.items()):
        sim = similarity_matrix(emb)
        if sim.shape[0] != c:
            raise ValueError(f"stage {stage!r} has {sim.shape[0]} label embeddings for {c} labels")
        off = sim[~np.eye(c, dtype=bool)]
        lo, hi = (float(off.min()), float(off.max())) if off.size else (-1.0, 1.0)
        if hi - lo < 1e-6:
            lo, hi = lo - 0.5e-3, hi + 0.5e-3  # identical rows: one colour, still a valid range
        left = margin_l + i * (side + bar)
        ax = fig.add_axes((left / width, margin_b / height, side / width, side / height))
        image = ax.imshow(np.ma.masked_where(np.eye(c, dtype=bool), sim), vmin=lo, vmax=hi, cmap=cmap)
        ax.set_title(f"{stage}\nmean off-diag = {mean_offdiag(sim):.3f}", fontsize=9, y=1.0)
        _name_cells(fig, ax, names, rows=i == 0)
        cax = fig.add_axes(((left + side + 0.12) / width, margin_b / height, 0.14 / width, side / height))
        fig.colorbar(image, cax=cax).set_label(f"cosine, off-diagonal range {lo:.3f}–{hi:.3f}", fontsize=7)
        cax.tick_params(labelsize=7)
    fig.suptitle(
        f"{title}  (colour range per panel; diagonal grey)", fontsize=11, y=1 - 0.15 / height, va="top"
    )
    return fig
