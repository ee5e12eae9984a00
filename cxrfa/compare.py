"""``compare``: the cells of an ablation side by side, with honest statistics.

One row per cell: mean ± std over seeds and a 95% t-interval for each headline metric, the number of seeds, and a
paired bootstrap against the baseline cell on the same test images (the seed-averaged logged test predictions of
both cells, resampled by image together). Written as Markdown, CSV and a self-contained HTML report, and logged on
the parent run so it is one click away in the MLflow UI.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrfa.errors import CxrfaError
from cxrfa.io import atomic_write_text
from cxrfa.tracking import RunInfo, TrackedRun, Tracker

log = logging.getLogger(__name__)

HEADLINE = (
    "test/macro_auc", "test/map", "test/mse", "test/macro_f1", "test/macro_auc_head", "test/macro_auc_medium",
    "test/macro_auc_tail", "test/fair/worst_tpr_gap", "embed/modality_gap", "embed/mean_offdiag_sim/final",
)  # fmt: skip


@dataclass
class Comparison:
    table: pd.DataFrame  # one row per cell
    per_label: pd.DataFrame  # cells x labels: mean test AUROC over seeds
    metric: str
    baseline: str | None
    parent_id: str | None


def select_runs(tracker: Tracker, parent_id: str | None) -> tuple[list[RunInfo], str | None]:
    """FINISHED cell runs under a parent (or, without one, in the experiment) and the parent to report on."""
    if parent_id is None:
        parents = tracker.search("tags.`cxrfa.parent` != ''")
        parent_id = parents[0].run_id if parents else None
        runs = tracker.search("tags.`cxrfa.cell` != '' and attributes.status = 'FINISHED'")
    else:
        runs = [r for r in tracker.children(parent_id) if r.status == "FINISHED"]
    runs = [r for r in runs if "cxrfa.cell" in r.tags and "cxrfa.trial" not in r.tags]
    if not runs:
        raise CxrfaError(
            f"no finished cell runs in experiment {tracker.experiment!r}; run `cxrfa ablate` first"
        )
    latest: dict[str, RunInfo] = {}
    for run in runs:  # newest first: keep one run per config hash
        latest.setdefault(run.tags["cxrfa.config_hash"], run)
    return list(latest.values()), parent_id


def _test_arrays(tracker: Tracker, run: RunInfo, tmp: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    pred = pd.read_csv(tracker.download(run.run_id, "test_predictions.csv", tmp / run.run_id))
    truth = pd.read_csv(tracker.download(run.run_id, "test_labels.csv", tmp / run.run_id))
    return pred.set_index("path"), truth.set_index("path")


def compare(
    tracker: Tracker,
    parent_id: str | None = None,
    metric: str = "test/macro_auc",
    baseline: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Comparison:
    """Build the comparison of every cell in an experiment (or under one parent run)."""
    import tempfile

    from cxrfa.stats import mean_std_ci, paired_bootstrap

    runs, parent_id = select_runs(tracker, parent_id)
    by_cell: dict[str, list[RunInfo]] = defaultdict(list)
    for run in runs:
        by_cell[run.tags["cxrfa.cell"]].append(run)
    cells = list(dict.fromkeys(r.tags["cxrfa.cell"] for r in reversed(runs)))  # in the order they first ran
    if baseline is not None and baseline not in by_cell:
        raise CxrfaError(f"--baseline {baseline!r}: no finished runs of that cell; cells: {', '.join(cells)}")
    baseline = baseline or cells[0]
    metrics = [metric, *[m for m in HEADLINE if m != metric]]
    rows = []
    for cell in cells:
        row: dict[str, object] = {"cell": cell, "seeds": len(by_cell[cell])}
        for m in metrics:
            vals = [r.metrics[m] for r in by_cell[cell] if m in r.metrics]
            if not vals:
                continue
            mean, std, lo, hi, _ = mean_std_ci(vals)
            row.update({m: mean, f"{m} std": std, f"{m} ci_low": lo, f"{m} ci_high": hi})
        rows.append(row)
    table = pd.DataFrame(rows).set_index("cell")

    key = metric.removeprefix("test/")
    if key in ("macro_auc", "map"):
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            arrays = {c: [_test_arrays(tracker, r, tmp) for r in by_cell[c]] for c in cells}
        base_prob, base_true = _seed_mean(arrays[baseline])
        for cell in cells:
            if cell == baseline:
                continue
            prob, truth = _seed_mean(arrays[cell])
            common = base_prob.index.intersection(prob.index)
            if len(common) == 0 or list(truth.columns) != list(base_true.columns):
                log.warning("cell %s: test images or labels differ from the baseline; no paired test", cell)
                continue
            res = paired_bootstrap(
                base_true.loc[common].to_numpy(float), base_prob.loc[common].to_numpy(float),
                prob.loc[common].to_numpy(float), metric=key, n_boot=n_boot, seed=seed,
            )  # fmt: skip
            table.loc[cell, f"Δ{key} vs {baseline}"] = res.delta
            table.loc[cell, f"Δ{key} ci_low"] = res.ci_low
            table.loc[cell, f"Δ{key} ci_high"] = res.ci_high
            table.loc[cell, "p_value"] = res.p_value

    labels = sorted(
        {k.removeprefix("test/auc/") for r in runs for k in r.metrics if k.startswith("test/auc/")}
    )
    per_label = pd.DataFrame(
        {lab: [np.mean([r.metrics[f"test/auc/{lab}"] for r in by_cell[c] if f"test/auc/{lab}" in r.metrics] or [np.nan])
               for c in cells] for lab in labels},
        index=cells,
    )  # fmt: skip
    return Comparison(table, per_label, metric, baseline, parent_id)


def _seed_mean(items: list[tuple[pd.DataFrame, pd.DataFrame]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    probs = sum(p for p, _ in items) / len(items)
    return probs, items[0][1].loc[probs.index]


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def to_markdown(comp: Comparison) -> str:
    """A readable table: metric mean ± std [95% CI] per cell, plus the paired test against the baseline."""
    t = comp.table
    head = [m for m in HEADLINE if m in t.columns]
    if comp.metric not in head and comp.metric in t.columns:
        head.insert(0, comp.metric)
    lines = [f"# Comparison ({comp.metric}; baseline: {comp.baseline})", ""]
    cols = ["cell", "seeds", *head]
    delta = [c for c in t.columns if c.startswith("Δ") and "ci_" not in c]
    cols += delta + (["p_value"] if "p_value" in t.columns else [])
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for cell, row in t.iterrows():
        cells = [str(cell), str(int(row["seeds"]))]
        for m in head:
            if pd.isna(row.get(m)):
                cells.append("–")
            else:
                ci = (
                    ""
                    if pd.isna(row[f"{m} ci_low"])
                    else f" [{row[f'{m} ci_low']:.4f}, {row[f'{m} ci_high']:.4f}]"
                )
                cells.append(f"{row[m]:.4f} ± {_fmt(row[f'{m} std'])}{ci}")
        for d in delta:
            lo, hi = row.get(d.split(" vs ")[0] + " ci_low"), row.get(d.split(" vs ")[0] + " ci_high")
            cells.append("–" if pd.isna(row.get(d)) else f"{row[d]:+.4f} [{lo:+.4f}, {hi:+.4f}]")
        if "p_value" in t.columns:
            cells.append(_fmt(row.get("p_value")))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "mean ± std over seeds [95% t-interval]; Δ: paired bootstrap over test images of seed-averaged predictions.",
    ]
    return "\n".join(lines) + "\n"


def console_table(comp: Comparison) -> Any:
    """A compact rich table for the terminal (the files carry every column)."""
    from rich.table import Table

    t = comp.table
    key = comp.metric.removeprefix("test/")
    table = Table(title=f"{comp.metric} by cell (baseline {comp.baseline})")
    shown = [
        m
        for m in (comp.metric, "test/map", "test/macro_auc_tail", "test/fair/worst_tpr_gap")
        if m in t.columns
    ]
    for col in ["cell", "seeds", *shown, f"Δ{key} [95% CI]", "p"]:
        table.add_column(col.removeprefix("test/"), justify="left" if col == "cell" else "right")
    delta = f"Δ{key} vs {comp.baseline}"
    for cell, row in t.iterrows():
        vals = [f"{row[m]:.4f} ± {_fmt(row[f'{m} std'])}" if not pd.isna(row[m]) else "–" for m in shown]
        if delta in t.columns and not pd.isna(row.get(delta)):
            d = f"{row[delta]:+.4f} [{row[f'Δ{key} ci_low']:+.4f}, {row[f'Δ{key} ci_high']:+.4f}]"
            p = _fmt(row["p_value"])
        else:
            d, p = ("baseline", "") if cell == comp.baseline else ("–", "–")
        table.add_row(str(cell), str(int(row["seeds"])), *vals, d, p)
    return table


def figures(comp: Comparison) -> dict[str, object]:
    """The per-label AUROC heatmap and the headline metric's bar chart with 95% CI error bars."""
    from cxrfa.plots import label_heatmap, metric_bars

    t = comp.table
    m = comp.metric
    means = t[m].to_numpy(float)
    lo = np.nan_to_num(means - t[f"{m} ci_low"].to_numpy(float))
    hi = np.nan_to_num(t[f"{m} ci_high"].to_numpy(float) - means)
    return {
        "per_label_auc": label_heatmap(comp.per_label, "Test AUROC per label (mean over seeds)"),
        "headline": metric_bars(
            list(t.index), list(means), np.vstack([lo, hi]), f"{m} (mean, 95% CI over seeds)"
        ),
    }


def _png(fig: object) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")  # type: ignore[attr-defined]
    return base64.b64encode(buf.getvalue()).decode()


def to_html(comp: Comparison, figs: dict[str, object]) -> str:
    """A self-contained HTML report (images inlined)."""
    table = comp.table.map(_fmt) if hasattr(comp.table, "map") else comp.table
    imgs = "".join(
        f'<h2>{html.escape(n)}</h2><img src="data:image/png;base64,{_png(f)}"/>' for n, f in figs.items()
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>cxrfa comparison</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}img{max-width:100%}</style></head><body>"
        f"<h1>Comparison: {html.escape(comp.metric)} (baseline {html.escape(str(comp.baseline))})</h1>"
        f"{table.to_html(escape=True)}{imgs}</body></html>"
    )


def write_report(comp: Comparison, out: Path, tracker: Tracker | None = None) -> dict[str, Path]:
    """Write ``comparison.md``, ``comparison.csv``, ``comparison.html`` and plots; log them on the parent run."""
    out.mkdir(parents=True, exist_ok=True)
    figs = figures(comp)
    paths = {"md": out / "comparison.md", "csv": out / "comparison.csv", "html": out / "comparison.html"}
    atomic_write_text(paths["md"], to_markdown(comp))
    atomic_write_text(paths["csv"], comp.table.to_csv())
    atomic_write_text(paths["html"], to_html(comp, figs))
    for name, fig in figs.items():
        paths[name] = out / f"{name}.png"
        fig.savefig(paths[name], dpi=110, bbox_inches="tight")  # type: ignore[attr-defined]
    if tracker is not None and comp.parent_id is not None:
        run = TrackedRun(tracker, comp.parent_id)
        for path in paths.values():
            run.log_artifact(path, "comparison")
    return paths
