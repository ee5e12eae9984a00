"""The links `cxrfa ui` prints to MLflow's chart view: one per experiment with cell runs, sorted by the metric."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from cxrfa.tracking import TAG_CELL, Tracker, chart_views


def test_chart_view_links_point_at_experiments_with_cell_runs(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    cells = Tracker(store, "full")
    parent = cells.parent("full [demo]")
    cells.start("visual-clip/seed=0", {TAG_CELL: "visual-clip"}, parent_id=parent.run_id).log_metrics(
        {"test/macro_auc": 0.7}
    )
    Tracker(store, "tune-only").start("trial 0", {})  # no cell runs: no link

    views = chart_views(cells.uri, "http://127.0.0.1:5000")

    assert [name for name, _ in views] == ["full"]
    parts = urlsplit(views[0][1].replace("/#/", "/"))  # MLflow routes in the fragment
    assert parts.path == f"/experiments/{cells.experiment_id}/runs"
    query = parse_qs(parts.query)
    # Sorted by a metric, MLflow lists child runs flat, so each cell run is a bar of its own.
    assert query == {
        "compareRunsMode": ["CHART"],
        "orderByKey": ["metrics.`test/macro_auc`"],
        "orderByAsc": ["false"],
    }
    assert unquote(views[0][1]).startswith("http://127.0.0.1:5000/#/experiments/")
