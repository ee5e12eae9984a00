"""UMAP views of image and label-text embeddings in one space: the layout and its static Figure (the interactive
plotly page is :mod:`cxrfa.explore.umap_page`).

Images are laid out by UMAP (cosine metric) of their own embeddings; each label text is then placed by UMAP's
out-of-sample ``transform`` from its nearest images, so a star sits among the images its text is most similar
to. Fitting images and texts together instead lets the modality gap decide: the C texts, closer to one another
than to any image, form a small component of their own that UMAP shrinks to one spot whatever their
differences. ``umap`` is imported inside :func:`umap_place` because its numba JIT costs seconds.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cxrfa.errors import CxrfaError
from cxrfa.explore._common import ArrayLike, l2_normalise, step, to_numpy
from cxrfa.labels import display_name

NO_FINDING = "No finding"
MULTIPLE = "Multiple findings"
MIN_POINTS = 4
# Tableau 20 + extras: one colour per label, stable across figures.
_PALETTE = tuple(
    "#1f77b4 #ff7f0e #2ca02c #d62728 #9467bd #8c564b #e377c2 #bcbd22 #17becf #aec7e8 #ffbb78 #98df8a #ff9896 "
    "#c5b0d5 #c49c94 #f7b6d2 #dbdb8d #9edae5 #393b79 #637939 #8c6d31 #843c39 #7b4173 #3182bd #e6550d #31a354".split()
)
GREY, _DARK = "#b0b0b0", "#404040"
STAR = "#ffd400"


def _reducer(n: int, dims: int, seed: int, n_neighbors: int | None) -> Any:
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims}")
    if n < MIN_POINTS:
        raise CxrfaError(
            f"UMAP needs at least {MIN_POINTS} points, got {n}; use more images (a larger split)"
        )
    import umap  # heavy (numba JIT)

    return umap.UMAP(
        n_components=dims,
        n_neighbors=n_neighbors or min(15, n - 1),
        metric="cosine",
        min_dist=0.1,
        init="spectral" if n > 4 * dims + 4 else "random",  # the spectral one needs more points than dims
        random_state=seed,
        n_jobs=1,  # a seeded UMAP runs single-threaded anyway; saying so avoids its warning
    )


def umap_embed(points: ArrayLike, dims: int = 2, seed: int = 0, n_neighbors: int | None = None) -> np.ndarray:
    """Seeded UMAP (cosine metric) of ``points`` (N, D) into (N, dims), dims 2 or 3.

    ``n_neighbors`` defaults to min(15, N - 1) so small sets work. Same input and seed -> same output.

    Raises:
        CxrfaError: fewer than 4 points.
    """
    x = to_numpy(points)
    reducer = _reducer(x.shape[0], dims, seed, n_neighbors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # eigsh fallbacks on small graphs
        return np.asarray(reducer.fit_transform(x), dtype=np.float64)


def umap_place(
    points: ArrayLike, others: ArrayLike, dims: int = 2, seed: int = 0, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """UMAP layout of ``points`` (N, D), with ``others`` (M, D) placed into it by ``transform``.

    The others (label texts) take no part in the fit, so they cannot distort the image layout, and each lands
    near its own nearest points rather than in one clump with the other texts.

    Returns:
        ``(points_xy (N, dims), others_xy (M, dims))``; same inputs and seed -> same output.

    Raises:
        CxrfaError: fewer than 4 points.
    """
    x, extra = to_numpy(points), to_numpy(others)
    with step(f"UMAP: fitting {x.shape[0]} points (cosine; numba compiles on first use)", progress):
        reducer = _reducer(x.shape[0], dims, seed, None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            xy = reducer.fit_transform(x)
    with step(f"UMAP: placing {extra.shape[0]} label texts among them", progress):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "transforming with a model fitted on few points" notices
            placed = reducer.transform(extra)
    return np.asarray(xy, dtype=np.float64), np.asarray(placed, dtype=np.float64)


def image_groups(y_true: ArrayLike, labels: Sequence[str]) -> list[str]:
    """Colour group per image: its one present label, ``"Multiple findings"`` when several are present, or
    ``"No finding"`` (unknown counts as not present). An image is never filed under just one of its labels."""
    y = np.nan_to_num(to_numpy(y_true), nan=0.0) == 1  # (N, C)
    count = y.sum(axis=1)
    return [
        NO_FINDING if k == 0 else labels[int(np.argmax(row))] if k == 1 else MULTIPLE
        for row, k in zip(y, count, strict=True)
    ]


def image_attributes(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Per-image colourings from manifest columns: ``site`` (domain), ``view``, ``sex``, ``age`` (binned as the
    fairness metrics bin it); missing values read ``unknown``, absent columns are left out."""
    from cxrfa.data.ages import age_bins

    columns = {"site": "domain", "view": "view", "sex": "sex"}
    out = {
        name: frame[col].astype(object).where(frame[col].notna(), "unknown").astype(str).tolist()
        for name, col in columns.items()
        if col in frame.columns
    }
    if "age" in frame.columns:
        out["age"] = age_bins(frame["age"]).fillna("unknown").tolist()
    return out


@dataclass(frozen=True)
class UmapLayout:
    """Image and label-text points in one UMAP space.

    Attributes:
        image_xy: (N, dims) image coordinates.
        text_xy: (C, dims) label-text coordinates.
        groups: N colour groups (see :func:`image_groups`; or the disease of a per-disease feature).
        labels: C label names (text points, in order).
        image_ids: N hover names (e.g. image paths).
        y_true: (N, C) 1/0/NaN labels, for the per-label colourings; None when the points are not images.
        attributes: name -> N values (``site``, ``view``, ``sex``, ``age``), each an extra colouring.
    """

    image_xy: np.ndarray
    text_xy: np.ndarray
    groups: list[str]
    labels: list[str]
    image_ids: list[str] = field(default_factory=list)
    y_true: np.ndarray | None = None
    attributes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def dims(self) -> int:
        return int(self.image_xy.shape[1])

    def colours(self) -> dict[str, str]:
        """Group -> hex colour, label order (stable across figures); "No finding" grey, "Multiple" dark."""
        out = {lab: _PALETTE[i % len(_PALETTE)] for i, lab in enumerate(self.labels)}
        out[NO_FINDING], out[MULTIPLE] = GREY, _DARK
        return out


def umap_layout(
    img: ArrayLike,
    txt_labels: ArrayLike,
    y_true: ArrayLike,
    labels: Sequence[str],
    dims: int = 2,
    seed: int = 0,
    image_ids: Sequence[str] | None = None,
    attributes: Mapping[str, Sequence[str]] | None = None,
    progress: bool = False,
) -> UmapLayout:
    """UMAP of image embeddings (N, D) with the label texts (C, D) placed among them (see the module doc).

    Args:
        img: (N, D) image embeddings.
        txt_labels: (C, D) one text embedding per label.
        y_true: (N, C) 1/0/NaN.
        labels: C label names.
        dims: 2 or 3.
        seed: UMAP random state.
        image_ids: N hover names (default ``image <i>``).
        attributes: extra per-image colourings (see :func:`image_attributes`), N values each.
        progress: show a spinner with elapsed time for each UMAP step (about a minute on a few thousand).
    """
    img_n, txt_n = l2_normalise(to_numpy(img)), l2_normalise(to_numpy(txt_labels))
    y = to_numpy(y_true)
    n = img_n.shape[0]
    if img_n.shape[1] != txt_n.shape[1] or txt_n.shape[0] != len(labels) or y.shape != (n, len(labels)):
        raise ValueError(
            f"image {img_n.shape} / text {txt_n.shape} / labels {y.shape} / {len(labels)} names do not match"
        )
    attrs = {k: [str(v) for v in vals] for k, vals in (attributes or {}).items()}
    if any(len(vals) != n for vals in attrs.values()):
        raise ValueError(f"every attribute needs {n} values: { {k: len(v) for k, v in attrs.items()} }")
    image_xy, text_xy = umap_place(img_n, txt_n, dims=dims, seed=seed, progress=progress)
    ids = list(image_ids) if image_ids is not None else [f"image {i}" for i in range(n)]
    return UmapLayout(image_xy, text_xy, image_groups(y, labels), list(labels), ids, y, attrs)


def _name_columns(
    xy: np.ndarray, names: Sequence[str], extent: np.ndarray | None, char: float, line: float
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Star positions (C, 2), the plot extent (2,), and the stars whose names need a column, group by group,
    top star first: stars whose names, each written just above its star, would overlap one another or cover
    another star are linked; a group is a connected set of links."""
    pos = np.asarray(xy, dtype=np.float64)[:, :2]
    span = np.ptp(pos, axis=0) if extent is None else np.asarray(extent, dtype=np.float64)[:2]
    c = pos.shape[0]
    u = pos / np.maximum(span, 1e-12)  # (C, 2) in plot fractions
    half = np.array([len(n) for n in names], dtype=np.float64) * char / 2  # (C,) half name widths
    dx = np.abs(u[:, None, 0] - u[None, :, 0])  # (C, C)
    rise = u[None, :, 1] - u[:, None, 1]  # [i, j]: how far star j sits above star i
    boxes_meet = (dx < half[:, None] + half[None, :]) & (np.abs(rise) < line)
    # i's name over star j (a star marker is about a character wide)
    covers = (dx < half[:, None] + char) & (rise > -0.2 * line) & (rise < 2.5 * line)
    linked = boxes_meet | covers | covers.T
    group = np.arange(c)
    for _ in range(c):  # label propagation to the smallest index: connected components of `linked`
        group = np.where(linked, group[None, :], c).min(axis=1)
    columns = [np.flatnonzero(group == g) for g in np.unique(group)]
    columns = [m[np.argsort(-pos[m, 1], kind="stable")] for m in columns if m.size > 1]
    return pos, span, columns


def label_slots(
    xy: np.ndarray,
    names: Sequence[str],
    extent: np.ndarray | None = None,
    char: float = 0.014,
    line: float = 0.035,
) -> list[tuple[int, float]]:
    """Where to write each star's name, as offsets from the star (for 3-D views, whose screen scale moves).

    A name goes just above its star (``(0, -1.3)``) unless it would overlap another star's name or cover another
    star; such stars form a group, whose names go to the right of each star, one line further down per star in
    the stars' top-to-bottom order (``(1, i)``), so on screen they are at least a line apart.

    Args:
        xy: (C, >=2) star positions (the first two coordinates count).
        names: the C names (their lengths set the name widths).
        extent: (>=2,) data extent of the whole plot in x and y (default: the stars' own).
        char: width of one character, as a fraction of the x extent.
        line: height of one text line, as a fraction of the y extent.

    Returns:
        Per star ``(side, line)``: side 0 = centred, 1 = to the right; line = vertical offset in text lines,
        positive downwards.
    """
    pos, _, columns = _name_columns(xy, names, extent, char, line)
    slots: list[tuple[int, float]] = [(0, -1.3)] * pos.shape[0]
    for order in columns:
        for i, m in enumerate(order):
            slots[int(m)] = (1, float(i))
    return slots


def name_positions(
    xy: np.ndarray,
    names: Sequence[str],
    extent: np.ndarray | None = None,
    char: float = 0.014,
    line: float = 0.035,
) -> tuple[np.ndarray, np.ndarray]:
    """Data coordinates of each star's name in a 2-D view, so that names do not overlap.

    A lone star's name sits just above it; a group (see :func:`label_slots`) gets one column just right of its
    rightmost star, from its top star's height downwards, one line apart in the stars' top-to-bottom order,
    joined to the stars by leader lines.

    Returns:
        ``(text_xy (C, 2), left (C,))``: where each name goes, and whether it is left-aligned (in a column)
        rather than centred.
    """
    pos, span, columns = _name_columns(xy, names, extent, char, line)
    step = line * float(np.max(span))  # one text line in data units; equal-aspect plots scale both axes alike
    text = pos + np.array([0.0, 1.3 * step])
    left = np.zeros(pos.shape[0], dtype=bool)
    for order in columns:
        x0, y0 = pos[order, 0].max() + 2 * char * span[0], pos[order[0], 1]
        text[order] = np.stack([np.full(order.size, x0), y0 - step * np.arange(order.size)], axis=1)
        left[order] = True
    return text, left


def data_extent(layout: UmapLayout) -> np.ndarray:
    """(dims,) data extent of images and label texts together: the scale the names are drawn against."""
    return np.ptp(np.concatenate([layout.image_xy, layout.text_xy]), axis=0)


def group_order(layout: UmapLayout) -> list[str]:
    """The groups images are coloured by, in legend order: no finding, several findings, then each label."""
    return [NO_FINDING, MULTIPLE, *layout.labels]


def umap_figure(layout: UmapLayout, title: str = "UMAP of image and label-text embeddings") -> Figure:
    """Static scatter: images coloured by their finding (one label, "Multiple findings" or "No finding"),
    label texts as named star markers."""
    colours = layout.colours()
    three_d = layout.dims == 3
    fig = Figure(figsize=(9.5, 7.0), layout="constrained")
    ax = fig.add_subplot(projection="3d" if three_d else None)
    groups = np.asarray(layout.groups)
    for group in group_order(layout):
        mask = groups == group
        if mask.any():
            ax.scatter(
                *layout.image_xy[mask].T,
                s=10,
                alpha=0.7,
                color=colours[group],
                label=f"{display_name(group)} ({mask.sum()})",
            )
    ax.scatter(
        *layout.text_xy.T,
        s=240,
        marker="*",
        color=[colours[lab] for lab in layout.labels],
        edgecolors="black",
        linewidths=0.9,
        zorder=5,
        label="label text",
    )
    names = [display_name(lab) for lab in layout.labels]
    if three_d:
        for name, pos in zip(names, layout.text_xy, strict=True):
            ax.text(*pos, "  " + name, fontsize=8, fontweight="bold")
    else:
        text_xy, left = name_positions(layout.text_xy, names, data_extent(layout))
        for name, pos, at, is_left in zip(names, layout.text_xy, text_xy, left, strict=True):
            ax.annotate(
                name,
                pos,
                xytext=at,
                ha="left" if is_left else "center",
                va="center",
                fontsize=8,
                fontweight="bold",
                arrowprops={"arrowstyle": "-", "color": "0.35", "lw": 0.6, "shrinkA": 1, "shrinkB": 5},
            )
    ax.set_title(title)
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    if three_d:
        ax.set_zlabel("UMAP 3")
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7, markerscale=1.2, frameon=False)
    return fig
