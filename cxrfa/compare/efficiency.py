"""Data-efficiency curves: the headline metric of each cell against the share of training labels it saw.

A label-efficiency ablation (``fractions:`` in a matrix, or ``ablate --fractions``) names its cells
``<cell>@<fraction>``. :func:`efficiency_table` regroups compare's per-cell results (mean and the seeds x
patients interval) by base cell and fraction; :func:`efficiency_figure` draws one line per cell with its
interval band, on a log-scaled fraction axis as the field plots it (1 %, 10 %, 100 %).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cxrfa.config import split_fraction
from cxrfa.errors import CxrfaError

__all__ = ["efficiency_figure", "efficiency_table"]

COLUMNS = ("cell", "fraction", "seeds", "mean", "ci_low", "ci_high")


def efficiency_table(result: pd.DataFrame, fractions: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Compare's per-cell results regrouped by label fraction: one row per (base cell, fraction).

    Args:
        result: compare's result table (``Comparison.result``): indexed by cell name, with ``mean``,
            ``ci_low``, ``ci_high`` and ``seeds`` (missing interval columns are read as NaN).
        fractions: cell name -> label fraction, for cells whose name carries none (e.g. read from the runs'
            ``cxrfa.label_fraction`` tag); by default the ``@<fraction>`` suffix of each name is used.

    Returns:
        Columns ``cell`` (the base cell), ``fraction``, ``seeds``, ``mean``, ``ci_low``, ``ci_high``; cells in
        ``result``'s order, fractions ascending. Cells without a fraction are left out.

    Raises:
        CxrfaError: no cell has a label fraction, or ``result`` has no ``mean`` column.
    """
    if "mean" not in result.columns:
        raise CxrfaError("efficiency table: the per-cell results have no 'mean' column")
    rows = []
    for name, row in result.iterrows():
        base, fraction = split_fraction(str(name))
        if fractions is not None and str(name) in fractions:
            fraction = float(fractions[str(name)])
        if fraction is None:
            continue
        rows.append(
            {
                "cell": base,
                "fraction": fraction,
                "seeds": int(row["seeds"]) if "seeds" in row and pd.notna(row["seeds"]) else 0,
                "mean": float(row["mean"]),
                "ci_low": float(row.get("ci_low", np.nan)),
                "ci_high": float(row.get("ci_high", np.nan)),
            }
        )
    if not rows:
        raise CxrfaError(
            "efficiency table: no cell has a label fraction; run the matrix with --fractions (cells <cell>@<f>)"
        )
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    order = {cell: i for i, cell in enumerate(dict.fromkeys(table["cell"]))}
    table = table.sort_values(
        ["cell", "fraction"], key=lambda col: col.map(order) if col.name == "cell" else col
    )
    return table.reset_index(drop=True)


def efficiency_figure(
    table: pd.DataFrame, metric: str = "test/macro_auc", baseline: str | None = None
) -> Figure:
    """Headline metric against label fraction, one line per cell with its 95% interval as a band.

    Args:
        table: :func:`efficiency_table` output.
        metric: the metric's name, for the y axis.
        baseline: a cell drawn dashed, as the reference the others are read against.

    Returns:
        The figure (the caller saves or logs it).
    """
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    fractions = np.sort(table["fraction"].unique())
    for cell, part in table.groupby("cell", sort=False):
        part = part.sort_values("fraction")
        x = part["fraction"].to_numpy()
        style = "--" if cell == baseline else "-"
        (line,) = ax.plot(x, part["mean"], style, marker="o", label=str(cell))
        low, high = part["ci_low"].to_numpy(), part["ci_high"].to_numpy()
        if np.isfinite(low).any():
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
    if len(fractions) > 1 and fractions.min() > 0 and fractions.max() / fractions.min() >= 10:
        ax.set_xscale("log")  # 1 % / 10 % / 100 %: equal steps on the page
    ax.set_xticks(fractions, [f"{100 * f:g}%" for f in fractions])
    ax.minorticks_off()
    ax.set_xlabel("share of training patients (labels) used")
    ax.set_ylabel(metric)
    ax.set_title(f"Label efficiency: {metric} (mean over seeds, 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize="small")
    return fig
