"""``compare``: the cells of one ablation on the study's declared contrasts, with statistics you can publish.

* :mod:`cxrfa.compare.runs` picks the runs (one parent, one data hash, one config per cell) and pairs their test
  predictions by image path;
* :mod:`cxrfa.compare.analysis` tests the matrix's contrasts on every compared metric (seed spread plus shared
  patient variance, Holm within each family), scores each cell and the constant-prevalence predictor, per-label
  AUROC and the worst subgroup gap against its null level;
* :mod:`cxrfa.compare.report` writes it as Markdown, CSV, LaTeX and HTML, answers first, and logs it on the parent.
"""

from cxrfa.compare.analysis import CONSTANT, Comparison, Methods, compare
from cxrfa.compare.report import console_table, figures, to_html, to_latex, to_markdown, write_report
from cxrfa.compare.runs import Selection, select_runs

__all__ = [
    "CONSTANT",
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
