"""The comparison report: the result first (a narrow table of mean, Δ and Holm p per cell), a forest plot of Δ, the
per-label heatmap, a methods + provenance block, then every metric over seeds — as Markdown, CSV, LaTeX (booktabs)
and one self-contained HTML file, logged on the ablation's parent run with per-cell aggregates as metrics."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

import pandas as pd

from cxrfa.compare.analysis import Comparison
from cxrfa.compare.figures import forest_plot, label_heatmap
from cxrfa.io import atomic_write_text
from cxrfa.stats import format_p
from cxrfa.tracking import TrackedRun, Tracker

_DPI = 110


def _num(v: object, digits: int = 3, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    text = f"{float(v):+.{digits}f}" if sign else f"{float(v):.{digits}f}"
    return text.replace("-", "−")  # a typographic minus (LaTeX: $-$)


def _interval(value: object, low: object, high: object, sign: bool = False) -> str:
    if _num(value) == "–":
        return "–"
    ci = "" if _num(low) == "–" else f" [{_num(low, sign=sign)}, {_num(high, sign=sign)}]"
    return _num(value, sign=sign) + ci


def result_rows(comp: Comparison) -> tuple[list[str], list[list[str]]]:
    """The narrow result table as text: header and one row per cell."""
    short = comp.metric.removeprefix("test/")
    header = [
        "cell",
        "seeds",
        f"{short} mean [95% CI]",
        "Δ per seed [95% CI]",
        "Δ ensemble [95% CI]",
        "p (Holm)",
    ]
    rows = []
    for cell, r in comp.result.iterrows():
        mean = _interval(r["mean"], r["ci_low"], r["ci_high"])
        if cell == comp.baseline:
            rows.append([str(cell), str(int(r["seeds"])), mean, "baseline", "baseline", ""])
            continue
        if not comp.methods.paired or pd.isna(r.get("delta")):
            rows.append([str(cell), str(int(r["seeds"])), mean, "–", "–", "–"])
            continue
        seeds = (
            f"{int(r['seeds'])}"
            if r["pairs"] == r["seeds"]
            else f"{int(r['seeds'])} ({int(r['pairs'])} paired)"
        )
        rows.append(
            [
                str(cell),
                seeds,
                mean,
                _interval(r["delta"], r["delta_low"], r["delta_high"], sign=True),
                _interval(r["ens_delta"], r["ens_low"], r["ens_high"], sign=True),
                format_p(float(r["p_holm"]), int(r["n_boot"]), bool(r["p_holm_floor"])),
            ]
        )
    return header, rows


def footnote(comp: Comparison) -> str:
    """One paragraph under the result table: what each column is and how it was computed."""
    m = comp.methods
    short = comp.metric.removeprefix("test/")
    if not m.paired:
        return (
            f"{short}: mean over seeds with a 95% t-interval over seeds (on the logit scale of the metric's "
            f"range, so it stays inside it). No paired test: {comp.metric} is not recomputable from predictions."
        )
    tested = int(comp.result["p_value"].notna().sum()) if "p_value" in comp.result else 0
    return (
        f"Mean over seeds; 95% CI: percentile, two-level bootstrap over seeds and {m.unit}, B = {m.n_boot}. "
        f"Δ per seed: mean over seed pairs of (cell seed k − {comp.baseline} seed k) on the same test images, "
        "CI from resampling seed pairs, then patients. Δ ensemble: the seed-averaged predictions of each cell, "
        f"patient bootstrap only (a separate estimate, not the mean of the per-seed Δ). p: two-sided centred "
        f"bootstrap test of the per-seed Δ, Holm-adjusted across the {tested} cell{'s' * (tested != 1)} tested against "
        f"{comp.baseline}; “< k/(B+1)” means no replicate was as extreme (the floor of B resamples)."
    )


def methods_lines(comp: Comparison) -> list[str]:
    """The methods + provenance block, one item per line."""
    m = comp.methods
    seeds = "; ".join(f"{c}: {', '.join(map(str, s))}" for c, s in m.seeds.items())
    runs = "; ".join(f"{c}: {', '.join(ids)}" for c, ids in m.runs.items())
    no_bootstrap = [
        f"Bootstrap: none: {comp.metric} is not recomputable from the logged predictions (use test/macro_auc or "
        "test/map for paired tests).",
        "Intervals: mean ± std and a t-interval over seeds, on the logit scale of each metric's range (AUROC, AP, "
        "F1, MSE, TPR gaps in [0, 1]; cosine in [−1, 1]; modality gap in [0, 2]) and mapped back.",
    ]
    lines = [
        f"Bootstrap: resamples {m.unit}; B = {m.n_boot}; seed {m.seed}. A replicate draws seeds (or seed pairs) "
        "with replacement, then one patient resample shared by every drawn seed (all seeds are scored on the same "
        "test patients).",
        f"Intervals: {comp.metric} and Δ: percentile intervals of bootstrap replicates, so they stay inside the "
        "metric's range. Metrics only logged per run (detailed table): mean ± std and a t-interval over seeds, "
        "computed on the logit scale of the metric's range (AUROC, AP, F1, MSE, TPR gaps in [0, 1]; cosine in "
        "[−1, 1]; modality gap in [0, 2]) and mapped back.",
        f"Multiple testing: Holm's step-down across the cells tested against {comp.baseline}.",
    ]
    lines = (lines if m.paired else no_bootstrap) + [
        f"Seeds: {seeds}.",
        f"Tuning: {m.tuning}.",
        f"Data: {m.data} (data hash {m.data_hash}); backbones: {', '.join(m.backbone_sources) or '?'}.",
        f"Runs: experiment {m.experiment}, matrix {m.matrix}, parent run {m.parent_id or '(none)'}; {runs}.",
        f"Code: runs made with {', '.join(m.code_versions)}; report made with {m.report_code_version}.",
    ]
    return lines + [f"Left out: {note}." for note in m.notes]


def detail_rows(comp: Comparison) -> tuple[list[str], list[list[str]]]:
    """Every logged headline metric per cell: mean ± std [95% CI over seeds]."""
    metrics = [c for c in comp.detail.columns if not c.endswith((" std", " ci_low", " ci_high"))]
    rows = []
    for cell, r in comp.detail.iterrows():
        row = [str(cell)]
        for m in metrics:
            if pd.isna(r[m]):
                row.append("–")
                continue
            ci = "" if pd.isna(r[f"{m} ci_low"]) else f" [{r[f'{m} ci_low']:.4f}, {r[f'{m} ci_high']:.4f}]"
            row.append(f"{r[m]:.4f} ± {_num(r[f'{m} std'], 4)}{ci}")
        rows.append(row)
    return ["cell", *metrics], rows


def per_label_rows(comp: Comparison) -> tuple[list[str], list[list[str]]]:
    """Per label (head → tail): group, test positives, and each cell's mean AUROC [95% CI over seeds x patients]."""
    rows = []
    for lab in comp.per_label.columns:
        info = comp.label_info.loc[lab]
        row = [str(lab), str(info["group"]), str(int(info["n_pos"]))]
        for cell in comp.per_label.index:
            row.append(
                _interval(
                    comp.per_label.at[cell, lab],
                    comp.per_label_low.at[cell, lab],
                    comp.per_label_high.at[cell, lab],
                )
            )
        rows.append(row)
    return ["label", "group", "test positives", *map(str, comp.per_label.index)], rows


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]


def _title(comp: Comparison) -> str:
    if not comp.methods.paired:
        return f"{comp.metric} by cell (baseline {comp.baseline}; no paired test)"
    return f"{comp.metric} by cell, tested against {comp.baseline}"


def to_markdown(comp: Comparison, figures: dict[str, str] | None = None) -> str:
    """The report as Markdown (``figures``: name -> PNG file name beside it)."""
    lines = [f"# {_title(comp)}", ""]
    lines += [f"> **Warning.** {w}" for w in comp.methods.warnings] + ([""] if comp.methods.warnings else [])
    lines += [*_md_table(*result_rows(comp)), "", footnote(comp), ""]
    for name, file in (figures or {}).items():
        lines += [f"![{name}]({file})", ""]
    lines += ["## Methods and provenance", "", *[f"- {item}" for item in methods_lines(comp)], ""]
    lines += ["## Every metric over seeds", "", *_md_table(*detail_rows(comp)), ""]
    lines += ["## Test AUROC per label [95% CI]", "", *_md_table(*per_label_rows(comp)), ""]
    return "\n".join(lines)


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_LATEX_SYMBOLS = {"Δ": r"$\Delta$", "±": r"$\pm$", "<": r"$<$", "–": "--", "−": "$-$", "“": "``", "”": "''"}


def _tex(text: str) -> str:
    out = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)
    for symbol, tex in _LATEX_SYMBOLS.items():
        out = out.replace(symbol, tex)
    return out


def to_latex(comp: Comparison) -> str:
    """The result table as a LaTeX ``table`` with booktabs rules (``\\usepackage{booktabs}``)."""
    header, rows = result_rows(comp)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{l r " + "r " * (len(header) - 2) + "}",
        r"\toprule",
        " & ".join(_tex(h) for h in header) + r" \\",
        r"\midrule",
        *[" & ".join(_tex(c) for c in row) + r" \\" for row in rows],
        r"\bottomrule",
        r"\end{tabular}",
        r"\caption{" + _tex(f"{_title(comp)}. {footnote(comp)}") + "}",
        r"\label{tab:cxrfa-comparison}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _html_table(header: list[str], rows: list[list[str]], cls: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:1.2em 2em;max-width:1300px;color:#222}"
    "h1{font-size:1.35em;margin:.2em 0 .5em}h2{font-size:1.1em;margin-top:1.6em}"
    ".warn{background:#fff4ce;border-left:4px solid #e0a800;padding:.4em .8em;margin:.4em 0;font-size:.9em}"
    "table{border-collapse:collapse}td,th{border-bottom:1px solid #ddd;padding:4px 10px;text-align:right;"
    "white-space:nowrap}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}"
    ".result{font-size:15px}.detail{font-size:12px}.scroll{overflow-x:auto}"
    ".note{font-size:.85em;color:#444;max-width:1250px}img{max-width:100%}li{margin:.2em 0;font-size:.9em}"
)


def to_html(comp: Comparison, figs: dict[str, Any]) -> str:
    """The report as one self-contained HTML page (figures inlined as PNG)."""
    warnings = "".join(
        f'<div class="warn"><b>Warning.</b> {html.escape(w)}</div>' for w in comp.methods.warnings
    )
    images = "".join(
        f'<h2>{html.escape(title)}</h2><img alt="{html.escape(title)}" src="data:image/png;base64,{_png(fig)}"/>'
        for title, fig in figs.items()
    )
    methods = "".join(f"<li>{html.escape(item)}</li>" for item in methods_lines(comp))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>cxrfa comparison</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(_title(comp))}</h1>{warnings}"
        f"{_html_table(*result_rows(comp), 'result')}<p class='note'>{html.escape(footnote(comp))}</p>"
        f"{images}<h2>Methods and provenance</h2><ul>{methods}</ul>"
        f"<h2>Every metric over seeds</h2><div class='scroll'>{_html_table(*detail_rows(comp), 'detail')}</div>"
        f"<h2>Test AUROC per label [95% CI]</h2><div class='scroll'>{_html_table(*per_label_rows(comp), 'detail')}</div>"
        "</body></html>"
    )


def console_table(comp: Comparison) -> Any:
    """The narrow result table for the terminal (rich)."""
    from rich.table import Table

    header, rows = result_rows(comp)
    table = Table(
        title=_title(comp),
        caption=f"B = {comp.methods.n_boot}; resampled: seeds x {comp.methods.unit}"
        if comp.methods.paired
        else None,
    )
    for i, col in enumerate(header):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def figures(comp: Comparison) -> dict[str, Any]:
    """Title -> figure: the Δ forest plot (when there is a paired test) and the per-label heatmap."""
    out: dict[str, Any] = {}
    if comp.methods.paired:
        out[f"Δ {comp.metric.removeprefix('test/')} vs {comp.baseline}"] = forest_plot(
            comp.result, comp.metric, comp.baseline
        )
    out["Test AUROC per label (mean over seeds)"] = label_heatmap(
        comp.per_label, comp.label_info, "Test AUROC per label (mean over seeds)"
    )
    return out


def per_label_long(comp: Comparison) -> pd.DataFrame:
    """One row per cell x label (head → tail): group, test positives, mean AUROC over seeds and its 95% CI."""
    rows = [
        {
            "cell": cell,
            "label": lab,
            "group": comp.label_info.at[lab, "group"],
            "n_pos": comp.label_info.at[lab, "n_pos"],
            "auc": comp.per_label.at[cell, lab],
            "ci_low": comp.per_label_low.at[cell, lab],
            "ci_high": comp.per_label_high.at[cell, lab],
        }
        for cell in comp.per_label.index
        for lab in comp.per_label.columns
    ]
    return pd.DataFrame(rows)


def aggregates(comp: Comparison) -> dict[str, float]:
    """Per-cell numbers logged as metrics on the parent run (``compare/<cell>/...``)."""
    out: dict[str, float] = {}
    columns = (
        "mean",
        "ci_low",
        "ci_high",
        "delta",
        "delta_low",
        "delta_high",
        "ens_delta",
        "p_value",
        "p_holm",
    )
    for cell, r in comp.result.iterrows():
        for col in columns:
            if col in r and not pd.isna(r[col]):
                out[f"compare/{cell}/{comp.metric}/{col}"] = float(r[col])
    for cell, r in comp.detail.iterrows():
        for col, value in r.items():
            if not str(col).endswith((" std", " ci_low", " ci_high")) and not pd.isna(value):
                out[f"compare/{cell}/{col}/mean_over_seeds"] = float(value)
    return out


def write_report(comp: Comparison, out: Path, tracker: Tracker | None = None) -> dict[str, Path]:
    """Write ``comparison.{md,csv,tex,html}`` and the figures; log them and per-cell aggregates on the parent."""
    out.mkdir(parents=True, exist_ok=True)
    figs = figures(comp)
    names = {title: ("forest" if title.startswith("Δ") else "per_label_auc") for title in figs}
    paths = {
        "md": out / "comparison.md",
        "csv": out / "comparison.csv",
        "tex": out / "comparison.tex",
        "html": out / "comparison.html",
    }
    for title, fig in figs.items():
        paths[names[title]] = out / f"{names[title]}.png"
        fig.savefig(paths[names[title]], dpi=_DPI, bbox_inches="tight")
    atomic_write_text(paths["md"], to_markdown(comp, {t: f"{names[t]}.png" for t in figs}))
    atomic_write_text(paths["csv"], comp.table.to_csv())
    atomic_write_text(paths["tex"], to_latex(comp))
    paths["per_label"] = out / "per_label.csv"
    atomic_write_text(paths["per_label"], per_label_long(comp).to_csv(index=False))
    atomic_write_text(paths["html"], to_html(comp, figs))
    if tracker is not None and comp.parent_id is not None:
        run = TrackedRun(tracker, comp.parent_id)
        for path in paths.values():
            run.log_artifact(path, "comparison")
        run.log_metrics(aggregates(comp))
    return paths
