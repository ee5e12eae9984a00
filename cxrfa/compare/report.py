"""The comparison report. It answers first: one sentence per declared contrast, then the contrast table (Δ, its
interval, Holm p within its family, probability of improvement, minimum detectable Δ), then every metric per
cell with the constant-prevalence baseline as a row, every metric per contrast, the worst subgroup gap against
its null level, per-label AUROC, the cells' legend and the methods — as Markdown, CSV, LaTeX and one HTML file.
Each number has one interval, the same in every table; every export carries the data caveats."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

import pandas as pd

from cxrfa.compare.analysis import CONSTANT, Comparison
from cxrfa.compare.efficiency import efficiency_figure, efficiency_table
from cxrfa.compare.figures import contrast_plot, label_heatmaps
from cxrfa.config import split_fraction
from cxrfa.io import atomic_write_text
from cxrfa.metrics import MetricSpec, get_metric, list_metrics
from cxrfa.tracking import TrackedRun, Tracker

_DPI = 110
ALPHA = 0.05


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


def _p(p: object) -> str:
    if p is None or not math.isfinite(float(p)):  # type: ignore[arg-type]
        return "–"
    return f"{float(p):.3f}" if float(p) >= 0.001 else f"{float(p):.1e}"  # type: ignore[arg-type]


def _head(spec: MetricSpec) -> str:
    """A metric's column name: its key, its direction (↑ higher is better, ↓ lower is better) and † when its
    interval holds no patient resampling (the methods say why)."""
    return f"{spec.name} {spec.arrow}" + ("" if spec.paired else " †")


def _verdict(row: pd.Series, spec: MetricSpec) -> str:
    if not math.isfinite(row["p_holm"]) or row["p_holm"] >= ALPHA:
        return "no detectable effect"
    better = (row["delta"] > 0) == spec.higher_is_better
    return f"{row['cell']} {'better' if better else 'worse'}"


def answers(comp: Comparison, short: bool = False) -> list[str]:
    """One plain sentence per tested contrast of the headline metric. ``short`` leaves out the family, the metric
    and P(improvement), which the HTML report says once beside them (its first screen holds a dozen sentences
    and their table)."""
    spec = comp.spec
    out = []
    for _, r in comp.headline_contrasts().iterrows():
        contrast = f"{r['cell']} − {r['other']}"
        if not short:
            contrast = f"{r['family']} ({contrast}, {spec.name} {spec.arrow})"
        out.append(
            f"{contrast}: "
            f"{_interval(r['delta'], r['low'], r['high'], sign=True)}, Holm p = {_p(r['p_holm'])} — "
            f"{_verdict(r, spec)}; smallest detectable {_num(r['mde'])} with {int(r['pairs'])} seed pair"
            f"{'s' * (r['pairs'] != 1)}"
            + ("." if short else f"; P(improvement) {_num(r['prob_improvement'], 2)}.")
        )
    return out


def contrast_rows(comp: Comparison) -> tuple[list[str], list[list[str]]]:
    """The contrast table of the headline metric: one row per declared (or ad-hoc) contrast."""
    header = [
        "family",
        "contrast",
        "seed pairs",
        f"Δ {_head(comp.spec)} [95% CI]",
        "Holm p (family)",
        "P(improvement)",
        "min. detectable Δ",
    ]
    rows = [
        [
            str(r["family"]),
            f"{r['cell']} − {r['other']}",
            str(int(r["pairs"])),
            _interval(r["delta"], r["low"], r["high"], sign=True),
            _p(r["p_holm"]),
            _num(r["prob_improvement"], 2),
            _num(r["mde"]),
        ]
        for _, r in comp.headline_contrasts().iterrows()
    ]
    return header, rows


def cell_rows(comp: Comparison, headline: bool) -> tuple[list[str], list[list[str]]]:
    """Every (headline or other) metric per cell, value [95% CI], with the constant-prevalence row last."""
    specs = [m for m in list_metrics() if m.headline == headline and m.name in comp.cells.columns]
    rows = []
    for cell, r in comp.cells.iterrows():
        seeds = "–" if pd.isna(r.get("seeds")) else str(int(r["seeds"]))
        row = [str(cell), seeds]
        for m in specs:
            row.append(_interval(r.get(m.name), r.get(f"{m.name} low"), r.get(f"{m.name} high")))
        rows.append(row)
    return ["cell", "seeds", *[_head(m) for m in specs]], rows


def family_rows(comp: Comparison, family: str) -> tuple[list[str], list[list[str]]]:
    """One family's contrasts on every metric: rows metrics, columns contrasts, "Δ [95% CI] p=Holm"."""
    sub = comp.contrasts[comp.contrasts["family"] == family]
    names = list(dict.fromkeys(f"{c} − {o}" for c, o in zip(sub["cell"], sub["other"], strict=True)))
    rows = []
    for metric, part in sub.groupby("metric", sort=False):
        spec = get_metric(str(metric))
        row = [_head(spec), str(part["resample"].iloc[0])]
        by_name = {f"{r['cell']} − {r['other']}": r for _, r in part.iterrows()}
        for name in names:
            r = by_name.get(name)
            row.append(
                "–"
                if r is None
                else f"{_interval(r['delta'], r['low'], r['high'], sign=True)} p={_p(r['p_holm'])}"
            )
        rows.append(row)
    return ["metric", "resampled", *names], rows


def fairness_rows(comp: Comparison) -> tuple[list[str], list[list[str]]]:
    """Per cell: the worst subgroup |TPR gap| [95% CI] and its level when groups do not differ."""
    name = "fair/worst_tpr_gap"
    rows = []
    for cell, f in comp.fairness.iterrows():
        r = comp.cells.loc[cell]
        rows.append(
            [
                str(cell),
                _interval(r.get(name), r.get(f"{name} low"), r.get(f"{name} high")),
                _num(f["null_mean"]),
                _num(f["null_q95"]),
            ]
        )
    return ["cell", "worst |TPR gap| ↓ [95% CI]", "null mean", "null 95th percentile"], rows


def subgroup_rows(comp: Comparison) -> tuple[list[str], list[list[str]]]:
    """Each subgroup's TPR gap (TPR of the group − its reference) per cell, [95% CI]; 0 is no gap."""
    keys = [c for c in comp.fairness.columns if "/tpr_gap/" in c and not c.endswith((" low", " high"))]
    rows = []
    for key in keys:
        attr, group = key.removeprefix("fair/").split("/tpr_gap/")
        row = [f"{attr} {group}"]
        for _, f in comp.fairness.iterrows():
            row.append(_interval(f.get(key), f.get(f"{key} low"), f.get(f"{key} high"), sign=True))
        rows.append(row)
    return ["subgroup", *map(str, comp.fairness.index)], rows


def per_label_rows(comp: Comparison) -> tuple[list[str], list[list[str]]]:
    """Per label (head → tail): group, test positives, each cell's AUROC [95% CI] and Δ vs the reference."""
    rows = []
    cells = list(comp.per_label.index)
    for lab in comp.per_label.columns:
        info = comp.label_info.loc[lab]
        row = [str(lab), str(info["group"]), str(int(info["n_pos"]))]
        for cell in cells:
            text = _interval(
                comp.per_label.at[cell, lab],
                comp.per_label_low.at[cell, lab],
                comp.per_label_high.at[cell, lab],
            )
            delta = comp.label_delta.at[cell, lab]
            if _num(delta) != "–":
                text += (
                    f"; Δ {_interval(delta, comp.label_delta_low.at[cell, lab], comp.label_delta_high.at[cell, lab], True)}"
                    f" p={_p(comp.label_p_holm.at[cell, lab])}"
                )
            row.append(text)
        rows.append(row)
    return ["label", "group", "test positives", *cells], rows


def methods_lines(comp: Comparison) -> list[str]:
    """The methods + provenance block, one item per line."""
    m = comp.methods
    seeds = "; ".join(f"{c}: {', '.join(map(str, s))}" for c, s in m.seeds.items())
    runs = "; ".join(f"{c}: {', '.join(ids)}" for c, ids in m.runs.items())
    lines = [
        "Intervals and tests (one per number, the same in every table): a t-interval over seeds (for a contrast, "
        "over seed pairs k = (cell seed k, other seed k)) with variance s²/K + V, where s² is the seed spread and "
        "V the patient variance every seed shares (all seeds are scored on the same test patients, so it is not "
        "in s²; estimated as the mean cross-seed covariance over patient resamples); Welch–Satterthwaite df. "
        "Type-I error 0.035–0.058 at α = 0.05 for 3–10 seeds in simulation (benchmarks/README.md, Inference). "
        "Intervals of bounded metrics are clipped to their range.",
        f"Patient resamples: {m.unit or 'none'}; B = {m.n_boot}; seed {m.seed}; every run scored on the same "
        "resamples, so differences are paired.",
        "Multiple testing: Holm's step-down within each family of contrasts and metric; per-label Δ p-values "
        "Holm over labels (DeLong's test when a contrast has one seed pair and each patient one image).",
        "Minimum detectable Δ: (t(0.975, df) + t(0.80, df)) × SE, the true Δ this design finds with 80% power. "
        "P(improvement): share of seed pairs where the cell is better (ties ½), in the metric's direction.",
        f"Constant predictor ({CONSTANT}): every image gets the train split's prevalence per label; the floor a "
        "model must beat on MSE, mAP and ECE (its macro AUROC is 0.5 by construction).",
        "Worst subgroup gap: the largest |TPR gap| over sex, age and view subgroups is above 0 even when groups do "
        "not differ; its null level permutes the subgroup labels over images (200 permutations per run).",
        "Subgroup TPR gaps and the worst gap: each attribute's resamples draw patients inside each of its "
        "subgroups (as many as the subgroup has), so a subgroup keeps its size and its interval holds its own "
        "patients' variation.",
        "embed/modality_gap: measured on the image-side features of the first test images; each run logs their "
        "per-patient sums (modality_gap_stats.npz), from which every patient resample's gap is recomputed, so it "
        "is resampled and paired like the metrics of the predictions.",
        "† Seed interval only: embed/mean_offdiag_sim/final is a function of the label embeddings alone (no test "
        "image enters it), so it has no patient variation and the seed interval is its whole interval.",
        f"Seeds: {seeds}.",
        f"Tuning: {m.tuning}.",
        f"Data: {m.data} (data hash {m.data_hash}); backbones: {', '.join(m.backbone_sources) or '?'}.",
        f"Runs: experiment {m.experiment}, matrix {m.matrix}, parent run {m.parent_id or '(none)'}; {runs}.",
        f"Code: runs made with {', '.join(m.code_versions)}; report made with {m.report_code_version}.",
    ]
    return lines + [f"Note: {note}." for note in m.notes]


def _title(comp: Comparison) -> str:
    return f"{comp.methods.experiment}: the study's contrasts on {comp.spec.name} {comp.spec.arrow}"


def _families(comp: Comparison) -> list[str]:
    return list(dict.fromkeys(comp.contrasts["family"])) if len(comp.contrasts) else []


def _sections(comp: Comparison) -> list[tuple[str, tuple[list[str], list[list[str]]]]]:
    """The tables after the answers and the contrast table, in report order."""
    out = [
        ("Headline metrics per cell [95% CI]", cell_rows(comp, True)),
        ("Other metrics per cell [95% CI]", cell_rows(comp, False)),
    ]
    out += [
        (f"Family {fam}: every metric (Δ [95% CI] p=Holm)", family_rows(comp, fam)) for fam in _families(comp)
    ]
    if not comp.fairness.empty:
        out.append(("Worst subgroup TPR gap against its null level", fairness_rows(comp)))
        out.append(
            (
                "TPR gap per subgroup [95% CI] (sex: vs the other sex; age, view: vs the median group)",
                subgroup_rows(comp),
            )
        )
    out.append((f"Test AUROC per label [95% CI]; Δ vs {comp.baseline}", per_label_rows(comp)))
    return out


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:  # a "|" inside a cell (|TPR gap|) would end the cell: escaped
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return [line(header), "|" + "|".join("---" for _ in header) + "|", *[line(row) for row in rows]]


def to_markdown(comp: Comparison, figures: dict[str, str] | None = None) -> str:
    """The report as Markdown (``figures``: name -> PNG file name beside it)."""
    lines = [f"# {_title(comp)}", ""]
    lines += [f"> **Warning.** {w}" for w in comp.methods.warnings] + ([""] if comp.methods.warnings else [])
    lines += ["## Answers", "", *[f"- {a}" for a in answers(comp)], ""]
    lines += ["## Contrasts", "", *_md_table(*contrast_rows(comp)), ""]
    for name, file in (figures or {}).items():
        lines += [f"![{name}]({file})", ""]
    for title, table in _sections(comp):
        lines += [f"## {title}", "", *_md_table(*table), ""]
    lines += ["## Cells", "", *[f"- **{c}**: {d}" for c, d in comp.legend.items()], ""]
    lines += ["## Methods and provenance", "", *[f"- {item}" for item in methods_lines(comp)], ""]
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
_LATEX_SYMBOLS = {
    "Δ": r"$\Delta$",
    "±": r"$\pm$",
    "<": r"$<$",
    "≤": r"$\le$",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "–": "--",
    "−": "$-$",
    "“": "``",
    "”": "''",
}


def _tex(text: str) -> str:
    out = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)
    for symbol, tex in _LATEX_SYMBOLS.items():
        out = out.replace(symbol, tex)
    return out


def to_latex(comp: Comparison) -> str:
    """The contrast table as a LaTeX ``table`` with booktabs rules; the data caveats as a comment and in the caption."""
    header, rows = contrast_rows(comp)
    caveats = " ".join(comp.methods.warnings)
    lines = [
        *[f"% Warning: {w}" for w in comp.methods.warnings],
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{l l " + "r " * (len(header) - 2) + "}",
        r"\toprule",
        " & ".join(_tex(h) for h in header) + r" \\",
        r"\midrule",
        *[" & ".join(_tex(c) for c in row) + r" \\" for row in rows],
        r"\bottomrule",
        r"\end{tabular}",
        r"\caption{"
        + _tex(
            f"{_title(comp)}. Δ: mean over seed pairs with a 95% t-interval over seeds and shared patient variance; "
            f"p Holm-adjusted within each family. {('Note: ' + caveats) if caveats else ''}"
        )
        + "}",
        r"\label{tab:cxrfa-contrasts}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def to_csv(frame: pd.DataFrame, comp: Comparison, **kwargs: Any) -> str:
    """A frame as CSV with the report's warnings in a ``warning`` column on every row, so a table copied out of
    the report keeps its caveat and a plain ``pandas.read_csv`` still reads it."""
    if comp.methods.warnings:
        frame = frame.assign(warning=" ".join(comp.methods.warnings))
    return frame.to_csv(**kwargs)


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def _html_table(header: list[str], rows: list[list[str]], cls: str) -> str:
    # a long metric name wraps after a "_" or "/", never inside a word (as "macro_auc_hea" + "d" did)
    head = "".join(f"<th>{html.escape(h).replace('_', '_<wbr>').replace('/', '/<wbr>')}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# Tables wrap inside 1,400 px (cells break between words); nothing scrolls out of sight.
_CSS = (
    "body{font-family:system-ui,sans-serif;margin:1.2em 2em;max-width:1400px;color:#222}"
    "h1{font-size:1.35em;margin:.2em 0 .5em}h2{font-size:1.1em;margin-top:1.6em}"
    ".warn{background:#fff4ce;border-left:4px solid #e0a800;padding:.4em .8em;margin:.4em 0;font-size:.9em}"
    "table{border-collapse:collapse;max-width:1400px;table-layout:auto}td,th{border-bottom:1px solid #ddd;"
    "padding:4px 8px;text-align:right;white-space:normal;overflow-wrap:anywhere}"
    "td:first-child,th:first-child{text-align:left}th{background:#f3f3f3;overflow-wrap:normal}"
    ".result td:nth-child(2),.result th:nth-child(2){text-align:left}"  # the contrast's name is text
    # the answers and their table share the first screen (1,400 x 900), the full demo's 19 contrasts included
    "h2.lead{margin:.5em 0 .2em}ul.answers{margin:0;padding-left:1.2em}"
    "ul.answers li{font-size:.85em;margin:0;line-height:1.25}"
    ".result{font-size:13px}.result td{padding:1px 8px}.detail{font-size:12px}"
    ".note{font-size:.85em;color:#444;max-width:1250px}img{max-width:100%}li{margin:.2em 0;font-size:.9em}"
)


def to_html(comp: Comparison, figs: dict[str, Any]) -> str:
    """The report as one self-contained HTML page (figures inlined as PNG)."""
    warnings = "".join(
        f'<div class="warn"><b>Warning.</b> {html.escape(w)}</div>' for w in comp.methods.warnings
    )
    head = comp.headline_contrasts()
    families = head["family"] if len(head) else []  # one cell, or no declared contrast: no answers
    answer_items = "".join(
        f"<li><b>{html.escape(str(f))}</b> {html.escape(a)}</li>"
        for f, a in zip(families, answers(comp, short=True), strict=True)
    )
    spec = comp.spec
    images = "".join(
        f'<h2>{html.escape(title)}</h2><img alt="{html.escape(title)}" src="data:image/png;base64,{_png(fig)}"/>'
        for title, fig in figs.items()
    )
    tables = "".join(
        f"<h2>{html.escape(title)}</h2>{_html_table(*table, 'detail')}" for title, table in _sections(comp)
    )
    legend = "".join(f"<li><b>{html.escape(c)}</b>: {html.escape(d)}</li>" for c, d in comp.legend.items())
    methods = "".join(f"<li>{html.escape(item)}</li>" for item in methods_lines(comp))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>cxrfa comparison</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(_title(comp))}</h1>{warnings}"
        f"<h2 class='lead'>Answers: Δ {html.escape(_head(spec))} [95% CI], Holm p within each family</h2>"
        f"<ul class='answers'>{answer_items}</ul>"
        f"<h2 class='lead'>Contrasts</h2>{_html_table(*contrast_rows(comp), 'result')}"
        f"{images}{tables}<h2>Cells</h2><ul>{legend}</ul>"
        f"<h2>Methods and provenance</h2><ul>{methods}</ul></body></html>"
    )


def console_table(comp: Comparison) -> Any:
    """The contrast table for the terminal (rich)."""
    from rich.table import Table

    header, rows = contrast_rows(comp)
    m = comp.methods
    caption = f"B = {m.n_boot}; resampled: seeds x {m.unit}" if m.n_boot else "--n-boot 0: seed spread only"
    table = Table(title=_title(comp), caption=caption)
    for i, col in enumerate(header):
        table.add_column(col, justify="left" if i < 2 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def figures(comp: Comparison) -> dict[str, Any]:
    """Title -> figure: the contrasts of the headline metric and the per-label heatmaps (Δ and absolute)."""
    out: dict[str, Any] = {}
    if len(comp.contrasts):
        out[f"Contrasts: Δ {comp.spec.name} {comp.spec.arrow}"] = contrast_plot(
            comp.headline_contrasts(), comp.spec
        )
    out["Test AUROC per label"] = label_heatmaps(
        comp.per_label, comp.label_delta, comp.label_info, comp.baseline
    )
    table = efficiency(comp)
    if table is not None:
        reference = split_fraction(comp.baseline)[0]
        out[f"Label efficiency: {comp.spec.name}"] = efficiency_figure(table, comp.spec.name, reference)
    return out


def efficiency(comp: Comparison) -> pd.DataFrame | None:
    """The data-efficiency table of a label-fraction ablation (cells named ``<cell>@<fraction>``), else None."""
    if not any(split_fraction(str(cell))[1] is not None for cell in comp.result.index):
        return None
    return efficiency_table(comp.result)


def per_label_long(comp: Comparison) -> pd.DataFrame:
    """One row per cell x label (head → tail): group, test positives, AUROC and its interval, Δ vs the reference."""
    rows = [
        {
            "cell": cell,
            "label": lab,
            "group": comp.label_info.at[lab, "group"],
            "n_pos": comp.label_info.at[lab, "n_pos"],
            "auc": comp.per_label.at[cell, lab],
            "ci_low": comp.per_label_low.at[cell, lab],
            "ci_high": comp.per_label_high.at[cell, lab],
            f"delta_vs_{comp.baseline}": comp.label_delta.at[cell, lab],
            "delta_low": comp.label_delta_low.at[cell, lab],
            "delta_high": comp.label_delta_high.at[cell, lab],
            "p_holm_over_labels": comp.label_p_holm.at[cell, lab],
        }
        for cell in comp.per_label.index
        for lab in comp.per_label.columns
    ]
    return pd.DataFrame(rows)


def aggregates(comp: Comparison) -> dict[str, float]:
    """A handful of parent-run metrics (the per-cell and per-contrast numbers live in the report's files)."""
    head = comp.headline_contrasts()
    if head.empty:
        return {}
    return {
        "compare/contrasts_tested": float(len(head)),
        "compare/contrasts_holm_significant": float((head["p_holm"] < ALPHA).sum()),
        "compare/min_p_holm": float(head["p_holm"].min()),
        "compare/max_mde": float(head["mde"].max()),
    }


def _figure_file(title: str) -> str:
    """The PNG name of a report figure, from its title."""
    for prefix, name in (("Contrasts", "contrasts"), ("Label efficiency", "efficiency")):
        if title.startswith(prefix):
            return name
    return "per_label_auc"


def write_report(comp: Comparison, out: Path, tracker: Tracker | None = None) -> dict[str, Path]:
    """Write ``comparison.{md,csv,tex,html}``, ``cells.csv``, ``per_label.csv`` and the figures into ``out``;
    with a tracker, log them and :func:`aggregates` on the parent run (``tracker=None`` writes nothing there)."""
    out.mkdir(parents=True, exist_ok=True)
    figs = figures(comp)
    names = {title: _figure_file(title) for title in figs}
    paths = {
        "md": out / "comparison.md",
        "csv": out / "comparison.csv",
        "tex": out / "comparison.tex",
        "html": out / "comparison.html",
        "cells": out / "cells.csv",
        "per_label": out / "per_label.csv",
    }
    for title, fig in figs.items():
        paths[names[title]] = out / f"{names[title]}.png"
        fig.savefig(paths[names[title]], dpi=_DPI, bbox_inches="tight")
    atomic_write_text(paths["md"], to_markdown(comp, {t: f"{names[t]}.png" for t in figs}))
    atomic_write_text(paths["csv"], to_csv(comp.contrasts, comp, index=False))
    atomic_write_text(paths["cells"], to_csv(comp.cells.rename_axis("cell"), comp))
    atomic_write_text(paths["per_label"], to_csv(per_label_long(comp), comp, index=False))
    atomic_write_text(paths["tex"], to_latex(comp))
    table = efficiency(comp)
    if table is not None:
        paths["efficiency_table"] = out / "efficiency.csv"
        atomic_write_text(paths["efficiency_table"], to_csv(table, comp, index=False))
    atomic_write_text(paths["html"], to_html(comp, figs))
    if tracker is not None and comp.parent_id is not None:
        run = TrackedRun(tracker, comp.parent_id)
        for path in paths.values():
            run.log_artifact(path, "comparison")
        run.log_metrics(aggregates(comp))
    return paths
