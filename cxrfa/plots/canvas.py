"""The canvas every run figure is drawn on, and how it is saved.

Small multiples are boxes of one Axes (:class:`Sheet`), not an Axes each, and the other figures of a run sit on
fixed margins (:func:`fixed_margins`): a run draws eight figures, and per-panel axes and layout engines were most of
its time after training. A run saves every figure through :func:`save_png`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

DPI = 90  # every figure a run writes is saved at this resolution (text rendering is most of a savefig)
# zlib level 1 instead of Pillow's 6: 10-20 ms less per figure for files ~7% larger (a 14-panel ROC grid: 96 kB)
_PNG = {"compress_level": 1}
NCOLS = 5
PANEL = 2.6  # inches per small-multiple panel
UNIT_TICKS = (0.0, 0.5, 1.0)
UNIT_TICK_LABELS = ("0", "0.5", "1")
_TICK_LEN = 3.5 / 72  # inches: matplotlib's default tick length (3.5 pt)
_TICK_PAD = 6 / 72  # inches: the gap to a title or tick label


def save_png(fig: Figure, path: Any) -> None:
    """Save a figure as a run saves every figure: PNG at :data:`DPI`, fast compression.

    Args:
        fig: the figure.
        path: a file path or a binary file object.
    """
    fig.savefig(path, format="png", dpi=DPI, pil_kwargs=_PNG)


class Sheet:
    """Small multiples drawn on one Axes that covers the figure, in inches from its lower left corner.

    A grid of real Axes costs most of a run's figure time: each panel builds and lays out its own axes, spines,
    tick objects and texts (the three 14-panel grids of a run: 0.5 s CPU each). Here every panel is a box of the
    one canvas; frames, curves and tick marks of all panels are a few collections, and text is drawn only where
    it says something (panel titles, the outer panels' tick labels and axis names). The geometry is the one a
    ``subplots_adjust`` grid had: fixed margins, panels in rows of ``ncols``, unused slots left blank.

    Panel artists carry a ``gid`` naming their panel and role (``title/3``, ``xlabel/8``, ``curve/0``), so they can
    be found without positions.
    """

    def __init__(self, n: int, title: str, ncols: int = NCOLS) -> None:
        self.ncols = max(1, min(ncols, n))
        nrows = max(1, math.ceil(n / self.ncols))
        width, height = PANEL * self.ncols, PANEL * nrows + 0.4
        left, right, bottom, top = 0.6, 0.98 * width, 0.5, height - 0.75  # inches
        w = (right - left) / (self.ncols + 0.45 * (self.ncols - 1))  # gaps: 0.45 of a panel's width
        h = (top - bottom) / (nrows + 0.7 * (nrows - 1))  # and 0.7 of its height
        self.boxes = [
            (left + (j % self.ncols) * 1.45 * w, top - h - (j // self.ncols) * 1.7 * h, w, h)
            for j in range(n)
        ]
        self.fig = Figure(figsize=(width, height))
        self.ax = self.fig.add_axes((0.0, 0.0, 1.0, 1.0))
        self.ax.set_axis_off()
        self.ax.set_xlim(0, width)
        self.ax.set_ylim(0, height)
        self.fig.suptitle(title, fontsize=13)
        self._frames: list[np.ndarray] = []
        self._ticks: list[np.ndarray] = []

    def square(self, j: int) -> None:
        """Make panel ``j`` a square of the panel's smaller side, centred (an image's equal aspect)."""
        x0, y0, w, h = self.boxes[j]
        side = min(w, h)
        self.boxes[j] = (x0 + (w - side) / 2, y0 + (h - side) / 2, side, side)

    def at(self, j: int, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Panel ``j``'s unit coordinates (0..1 across its box) as canvas inches."""
        x0, y0, w, h = self.boxes[j]
        return x0 + np.asarray(x, dtype=np.float64) * w, y0 + np.asarray(y, dtype=np.float64) * h

    def frame(self, j: int) -> None:
        """The panel's box outline (an axes frame)."""
        x, y = self.at(j, [0, 1, 1, 0, 0], [0, 0, 1, 1, 0])
        self._frames.append(np.c_[x, y])

    def title(self, j: int, text: str) -> None:
        """A panel title, 6 pt above its box (matplotlib's title pad)."""
        x0, y0, w, h = self.boxes[j]
        self.ax.text(
            x0 + w / 2, y0 + h + _TICK_PAD, text, ha="center", va="bottom", fontsize=9, gid=f"title/{j}"
        )

    def text(self, j: int, x: float, y: float, text: str, **kwargs: Any) -> None:
        """Text at panel ``j``'s unit coordinates, centred."""
        px, py = self.at(j, x, y)
        self.ax.text(float(px), float(py), text, ha="center", va="center", gid=f"text/{j}", **kwargs)

    def ticks(
        self,
        j: int,
        xs: Sequence[float],
        ys: Sequence[float],
        xlabels: Sequence[str] | None,
        ylabels: Sequence[str] | None,
        names: tuple[str | None, str | None] = (None, None),
    ) -> None:
        """Outward tick marks at unit positions ``xs`` (bottom) and ``ys`` (left); their labels and the axis names
        only where given (the outer panels)."""
        x0, y0, _, _ = self.boxes[j]
        bx, _ = self.at(j, xs, np.zeros(len(xs)))
        _, ly = self.at(j, np.zeros(len(ys)), ys)
        self._ticks += [np.array([[x, y0], [x, y0 - _TICK_LEN]]) for x in bx]
        self._ticks += [np.array([[x0, y], [x0 - _TICK_LEN, y]]) for y in ly]
        below, beside = y0 - _TICK_LEN - _TICK_PAD / 2, x0 - _TICK_LEN - _TICK_PAD / 2
        for x, label in zip(bx, xlabels or [], strict=False):
            self.ax.text(x, below, label, ha="center", va="top", fontsize=7)
        for y, label in zip(ly, ylabels or [], strict=False):
            self.ax.text(beside, y, label, ha="right", va="center", fontsize=7)
        _, _, w, h = self.boxes[j]
        if names[0]:
            self.ax.text(
                x0 + w / 2, below - 0.15, names[0], ha="center", va="top", fontsize=8, gid=f"xlabel/{j}"
            )
        if names[1]:
            at = (
                beside - 0.04 - 0.055 * max((len(s) for s in ylabels or []), default=1)
            )  # beyond the tick labels
            self.ax.text(
                at, y0 + h / 2, names[1], ha="right", va="center", rotation=90, fontsize=8, gid=f"ylabel/{j}"
            )

    def lines(self, segments: list[np.ndarray], gid: str, **kwargs: Any) -> None:
        """Polylines (each (K, 2) in canvas inches) as one artist."""
        if segments:
            self.ax.add_collection(LineCollection(segments, gid=gid, **kwargs), autolim=False)

    def finish(self) -> Figure:
        self.lines(self._frames, "frames", colors="black", linewidths=0.8)
        self.lines(self._ticks, "ticks", colors="black", linewidths=0.8)
        return self.fig


def panel_artists(fig: Figure, role: str) -> dict[int, list[Any]]:
    """Panel index -> the artists of a small-multiples figure (:class:`Sheet`) whose ``gid`` is ``<role>/<index>``,
    in drawing order; roles: ``title``, ``text``, ``curve``, ``xlabel``, ``ylabel``."""
    found: dict[int, list[Any]] = {}
    for artist in fig.axes[0].get_children():
        gid = artist.get_gid() or ""
        if gid.startswith(role + "/"):
            found.setdefault(int(gid.rsplit("/", 1)[1]), []).append(artist)
    return found


def fixed_margins(
    fig: Figure,
    left: float,
    right: float,
    bottom: float,
    top: float,
    wspace: float = 0.0,
    hspace: float = 0.0,
) -> Figure:
    """Place a figure's subplot grid by margins in inches instead of a layout engine: constrained layout measures
    every text of the figure before drawing it (0.1-0.3 s CPU per small figure, half its drawing time). Titles of
    such figures are set with an explicit ``y=1.0``, which skips matplotlib's per-draw search for a place above
    the tick labels (none of these axes has tick labels on top).

    Args:
        fig: a figure whose subplots are not yet placed.
        left, right, bottom, top: margins in inches (room for tick labels, axis names, titles).
        wspace, hspace: gaps between panels in inches.
    """
    width, height = fig.get_size_inches()
    grid = fig.axes[0].get_gridspec() if fig.axes else None
    ncols, nrows = (grid.ncols, grid.nrows) if grid is not None else (1, 1)
    panel_w = (width - left - right - wspace * (ncols - 1)) / ncols
    panel_h = (height - bottom - top - hspace * (nrows - 1)) / nrows
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=wspace / panel_w,
        hspace=hspace / panel_h,
    )
    return fig
