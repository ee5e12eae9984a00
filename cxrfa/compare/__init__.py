"""``compare``: the cells of one ablation side by side, with statistics you can publish.

* :mod:`cxrfa.compare.runs` picks the runs (one parent, one data hash, one config per cell) and pairs their test
  predictions by image path;
* :mod:`cxrfa.compare.analysis` computes per cell the mean over seeds, the per-seed-pair Δ against the baseline
  (two-level bootstrap over seed pairs and patients), the seed-ensemble Δ and Holm-adjusted p-values;
* :mod:`cxrfa.compare.report` writes it as Markdown, CSV, LaTeX and HTML and logs it on the parent run.
"""

from cxrfa.compare.analysis import HEADLINE, Comparison, Methods, compare
from cxrfa.compare.report import console_table, figures, to_html, to_latex, to_markdown, write_report
from cxrfa.compare.runs import Selection, select_runs

__all__ = [
    "HEADLINE",
    "Comparison",
    "Methods",
    "Selection",
    "compare",
    "console_table",
    "figures",
    "select_runs",
    "to_html",
    "to_latex",
    "to_markdown",
    "write_report",
]
