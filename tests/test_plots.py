"""cxrfa.plots: every function returns a Figure with the expected panels and lines, and saves to PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _helpers import assert_drawn, panels_drawn
from matplotlib.figure import Figure

from cxrfa import plots
from cxrfa.metrics import compute_metrics


@pytest.fixture(scope="module")
def case() -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    y = (rng.random((80, 14)) < 0.3).astype(float)
    p = np.clip(0.4 * y + rng.random((80, 14)) * 0.6, 0, 1)
    y[rng.random((80, 14)) < 0.1] = np.nan
    y[:, 13] = np.where(np.isfinite(y[:, 13]), 0.0, np.nan)  # one label with a single class
    return y, p, [f"Finding number {j}" for j in range(14)]


def _saved(fig: Figure, tmp_path: Path, name: str) -> np.ndarray:
    """Save at 60 dpi; the PNG's (H, W) grey levels, checked to be a drawing of the figure's pixel size."""
    out = tmp_path / f"{name}.png"
    fig.savefig(out, dpi=60)
    width, height = fig.get_size_inches() * 60
    return assert_drawn(out, (round(width), round(height)))


def _fourteen_panels(grey: np.ndarray) -> None:
    """14 labels: panels drawn in the first 14 slots of a 3 x 5 grid, the 15th slot blank."""
    assert panels_drawn(grey, 3, 5, title_px=round(0.75 * 60)) == [True] * 14 + [False]


def _texts(fig: Figure, role: str) -> dict[int, str]:
    """Panel index -> the text of its one ``role`` artist (title, xlabel, ylabel) in a small-multiples figure."""
    return {j: found[0].get_text() for j, found in plots.panel_artists(fig, role).items()}


def _segments(fig: Figure, gid: str) -> list:
    """The segments of the figure's collection ``gid`` (frames, references, ticks)."""
    (found,) = [a for a in fig.axes[0].get_children() if a.get_gid() == gid]
    return found.get_segments()


def test_roc_and_pr_curves(case, tmp_path: Path) -> None:
    y, p, labels = case
    for fn, name in ((plots.roc_curves, "roc"), (plots.pr_curves, "pr")):
        fig = fn(y, p, labels)
        assert isinstance(fig, Figure)
        titles = _texts(fig, "title")
        assert sorted(titles) == list(range(14)) and labels[0] in titles[0]
        curves = plots.panel_artists(
            fig, "curve"
        )  # one curve per two-class label, none for the one-class one
        assert sorted(curves) == list(range(13)) and all(len(c) == 1 for c in curves.values())
        assert len(_segments(fig, "references")) == 13  # chance diagonal / prevalence line per curve
        assert len(_segments(fig, "frames")) == 14
        assert "one class" in plots.panel_artists(fig, "text")[13][0].get_text()
        # unit axes everywhere: names on the first column and the lowest drawn panel of each column only
        assert sorted(_texts(fig, "ylabel")) == [0, 5, 10]
        assert sorted(_texts(fig, "xlabel")) == [8, 9, 10, 11, 12]
        _fourteen_panels(_saved(fig, tmp_path, name))


def test_roc_curve_is_drawn_where_its_points_are() -> None:
    """Each panel's curve is the label's ROC points placed in its box: the first panel's drawn x and y map back to
    (fpr, tpr) by one scale and offset per axis."""
    rng = np.random.default_rng(3)
    y = (rng.random((60, 3)) < 0.4).astype(float)
    p = rng.random((60, 3))
    fig = plots.roc_curves(y, p, ["a", "b", "c"])
    curve = plots.panel_artists(fig, "curve")[1][0]
    fpr, tpr = plots.roc_points(y[:, 1], p[:, 1])
    for drawn, points in ((curve.get_xdata(), fpr), (curve.get_ydata(), tpr)):
        scale, offset = np.polyfit(points, drawn, 1)
        assert scale > 0
        np.testing.assert_allclose(scale * points + offset, drawn, atol=1e-9)


def test_confusion_grid_states_its_thresholds(case, tmp_path: Path) -> None:
    y, p, labels = case
    thresholds = np.linspace(0.2, 0.8, 14)
    res = compute_metrics(y, p, labels, thresholds=thresholds, n_boot=0)
    cuts = res.per_label["threshold"].tolist()
    fig = plots.confusion_grid(res.confusion, labels, cuts, res.thresholds_from_val)
    (cells,) = [a for a in fig.axes[0].get_children() if a.get_gid() == "cells"]
    assert len(cells.get_paths()) == 4 * 14  # a 2 x 2 matrix per label
    tn, fp, fn, tp = res.confusion[labels[0]].ravel()
    counts = [t.get_text() for t in plots.panel_artists(fig, "text")[0]]
    assert counts == [str(tn), str(fp), str(fn), str(tp)]
    assert _texts(fig, "title")[3] == f"{labels[3]}\nthreshold {thresholds[3]:.3g}"
    assert "chosen on val" in fig.get_suptitle()
    assert [j for j, t in sorted(_texts(fig, "xlabel").items()) if t == "predicted"] == [9, 10, 11, 12, 13]
    assert [j for j, t in sorted(_texts(fig, "ylabel").items()) if t == "true"] == [0, 5, 10]
    _fourteen_panels(_saved(fig, tmp_path, "confusion"))
    default = plots.confusion_grid(res.confusion, labels)  # no val predictions: 0.5, and said so
    assert "threshold 0.5" in default.get_suptitle() and "chosen on val" not in default.get_suptitle()
    assert _texts(default, "title")[0].endswith("threshold 0.5")


def test_calibration_plot(case, tmp_path: Path) -> None:
    y, p, _ = case
    fig = plots.calibration_plot(y, p)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 2
    assert "ECE" in fig.axes[0].get_title()
    _saved(fig, tmp_path, "calibration")


def test_training_curves_give_lr_its_own_axis(tmp_path: Path) -> None:
    history = [
        {
            "epoch": e,
            "train/loss": 1 / e,
            "train/loss_cls": 0.8 / e,
            "train/loss_orth": 0.1 / e,
            "val/macro_auc": 0.6 + 0.05 * e,
            "lr": 1e-3 * 0.1 ** (e - 1),
        }
        for e in range(1, 5)
    ]
    fig = plots.training_curves(history)
    losses, metrics, lr = fig.axes
    assert len(losses.lines) == 3 and [ln.get_label() for ln in metrics.lines] == ["val/macro_auc"]
    assert list(metrics.lines[0].get_xdata()) == [1, 2, 3, 4]
    assert [ln.get_label() for ln in lr.lines] == ["lr"] and lr.get_yscale() == "log"  # spans 1e-3..1e-6
    _saved(fig, tmp_path, "training")
    assert (
        len(plots.training_curves([{"train/loss": 1.0, "val/macro_auc": 0.7}]).axes) == 2
    )  # no lr, no panel


def test_subgroup_chart(case, tmp_path: Path) -> None:
    y, p, labels = case
    rng = np.random.default_rng(1)
    sub = pd.DataFrame({"sex": rng.choice(["M", "F"], 80), "age": rng.integers(5, 95, 80), "view": "PA"})
    scalars = compute_metrics(y, p, labels, subgroups=sub, n_boot=0).scalars
    n_groups = sum(1 for k in scalars if k.startswith("fair/") and "/auc/" in k)
    fig = plots.subgroup_chart(scalars)
    left, right = fig.axes
    assert len(left.patches) == n_groups == len(right.patches)
    assert "sex: F" in [t.get_text() for t in left.get_yticklabels()]
    _saved(fig, tmp_path, "subgroups")
    empty = plots.subgroup_chart({"macro_auc": 0.7})
    assert "no subgroup" in empty.axes[0].texts[0].get_text()


def _no_overlap(fig: Figure, texts: list) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    boxes = [t.get_window_extent(renderer) for t in texts if t.get_text()]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), (a, b)


def test_similarity_panels_scale_each_panel_to_its_off_diagonal_range() -> None:
    from cxrfa.explore import similarity_matrix, similarity_panels

    rng = np.random.default_rng(0)
    labels = ["Atelectasis", "Effusion", "Pleural_Thickening", "Mass", "Nodule"]
    raw = rng.normal(size=(1, 32)) + 0.3 * rng.normal(size=(5, 32))  # cosines ~0.9: one colour on -1..1
    final = rng.normal(size=(5, 8))
    fig = similarity_panels({"raw": raw, "final": final}, labels, "Label-embedding cosine similarity")
    heatmaps = [ax for ax in fig.axes if ax.images]
    assert len(heatmaps) == 2
    for ax, emb in zip(heatmaps, (raw, final), strict=True):
        off = similarity_matrix(emb)[~np.eye(5, dtype=bool)]
        assert ax.images[0].get_clim() == pytest.approx((off.min(), off.max()))
        assert ax.images[0].get_array().mask.diagonal().all()  # the diagonal (1) does not take the top colour
    assert similarity_matrix(raw)[~np.eye(5, dtype=bool)].min() > 0.5 > 0 > off.min()  # ranges really differ
    bars = [ax for ax in fig.axes if not ax.images]
    assert len(bars) == 2 and all("off-diagonal range" in ax.get_ylabel() for ax in bars)
    _no_overlap(fig, [fig._suptitle, *(ax.title for ax in heatmaps)])


def test_gap_shift_plot_has_no_labels_to_collide() -> None:
    from cxrfa.explore import plot_gap_shift

    deltas = np.linspace(-0.5, 1.0, 31)  # a fine sweep: 31 points
    frame = pd.DataFrame({"delta": deltas, "gap": 1 - 0.9 * deltas, "macro_auc": 0.7 - 0.01 * deltas})
    fig = plot_gap_shift(frame)
    top, bottom = fig.axes
    assert not top.texts and not bottom.texts  # δ is the x axis: nothing to annotate
    np.testing.assert_allclose(top.lines[0].get_xdata(), deltas / 1.0)
    assert "original (δ = 0)" in top.get_legend().get_texts()[0].get_text()
