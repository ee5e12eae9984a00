"""The MLflow UI over a store: the server command ``cxrfa ui`` starts, the saved view of the cells it links to,
and a link to one run's page."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from cxrfa.errors import CxrfaError
from cxrfa.tracking.redaction import redact
from cxrfa.tracking.store import require_store, resolve_uri
from cxrfa.tracking.tags import TAG_CELL, TAG_SEED, TAG_TRIAL
from cxrfa.tracking.tracker import Tracker


def ui_command(uri: str | None, port: int, workers: int | None = None) -> tuple[list[str], dict[str, str]]:
    """The MLflow server command for the project's store, bound to 127.0.0.1, and the environment it needs.

    The store URI travels in the environment (``MLFLOW_BACKEND_STORE_URI``), never on the command line, where
    any user of the machine could read its credentials in ``ps``. ``workers`` defaults to one per two cores
    (at most 4): a UI for one person needs no more.

    The UI only reads: a local store must exist (nothing is created for a mistyped path).

    Raises:
        CxrfaError: ``uri`` is already a tracking server (open it in a browser instead), or no store is there.
    """
    import sys

    tracking, artifacts = resolve_uri(uri, create=False)
    require_store(tracking)
    if urlparse(tracking).scheme in ("http", "https", "databricks"):
        raise CxrfaError(
            f"tracking URI {redact(tracking)} is already a server: open it in a browser; "
            "`cxrfa ui` serves a local folder or a database"
        )
    workers = workers or max(1, min(4, (os.cpu_count() or 1) // 2))
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", str(workers)]
    env = {"MLFLOW_BACKEND_STORE_URI": tracking, "MLFLOW_REGISTRY_STORE_URI": tracking}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # GenAI job runners (7 processes): unused here
    if artifacts:
        env["MLFLOW_DEFAULT_ARTIFACT_ROOT"] = artifacts
        cmd.append("--no-serve-artifacts")  # local artifacts are read in place
    return cmd, env


UI_PORT = 5000  # `cxrfa ui`'s default port
HEADLINE_METRICS = ("test/macro_auc", "test/map")
VIEW_KEY = "cxrfa-cells"  # the shared view `cxrfa ui` links to
MLFLOW_SHARED_VIEW = "mlflow.sharedViewState."  # + key: an experiment tag holding a saved runs-page view
# MLflow 3.x opens an experiment in its GenAI view unless the URL (or the browser's last choice) says otherwise.
_ML_VIEW = "workflowType=machine_learning"


@dataclass(frozen=True)
class CellView:
    """Links into MLflow's runs page of one experiment, opened on the cells (the view ``cxrfa ui`` saves)."""

    experiment: str
    table: str  # runs grouped by cxrfa.cell, headline metrics as columns
    charts: str  # the chart view: one bar per cell (mean over seeds), headline charts only


def cell_view_state(metrics: tuple[str, ...] = HEADLINE_METRICS) -> dict[str, Any]:
    """The runs-page state of MLflow 3.17's UI (its search facets and persisted view keys) that shows cells:
    the ablations' cell runs only (not their parents, nor tuning trials, which carry a cell tag too), grouped
    by ``cxrfa.cell`` (mean over the seeds), ``metrics`` and the seed as columns, every run shown (MLflow shows
    the first 10 otherwise), sorted by the first metric, charts filtered to ``metrics``."""
    columns = [f"metrics.`{m}`" for m in metrics] + [f"tags.`{TAG_SEED}`"]
    return {
        "searchFilter": f"tags.`{TAG_CELL}` IS NOT NULL and tags.`{TAG_TRIAL}` IS NULL",
        "orderByKey": f"metrics.`{metrics[0]}`",
        "orderByAsc": False,
        "selectedColumns": columns,
        "groupBy": {
            "aggregateFunction": "average",
            "groupByKeys": [{"mode": "tag", "groupByData": TAG_CELL}],
        },
        "groupsExpanded": {},
        "useGroupedValuesInCharts": True,
        "runsHiddenMode": "SHOW_ALL",
        "hideEmptyCharts": True,
        # a regular expression over chart names: the headline metrics, not the compare/<cell>/... sections
        "chartsSearchFilter": "^(" + "|".join(re.escape(m) for m in metrics) + ")$",
    }


def cell_views(uri: str, base_url: str, metrics: tuple[str, ...] = HEADLINE_METRICS) -> list[CellView]:
    """Links, into the MLflow UI at ``base_url``, to the cells of every experiment of ``uri`` (the store, or
    that UI's server) that holds cell runs.

    The view is saved on the experiment as MLflow's own shared view (tag ``mlflow.sharedViewState.cxrfa-cells``,
    listed among the experiment's saved views as "cxrfa: cells"), written only when missing or different; the
    links name it (``viewStateShareKey``) and open the classic training view, not the GenAI one.
    """
    import json

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    state = json.dumps(cell_view_state(metrics), sort_keys=True)
    views = []
    for exp in client.search_experiments():
        if not client.search_runs([exp.experiment_id], f"tags.`{TAG_CELL}` != ''", max_results=1):
            continue
        saved = exp.tags.get(MLFLOW_SHARED_VIEW + VIEW_KEY)
        if saved is None or json.loads(saved).get("state") != state:
            now = int(time.time() * 1000)
            envelope = {"name": "cxrfa: cells", "createdAt": now, "updatedAt": now, "state": state}
            client.set_experiment_tag(exp.experiment_id, MLFLOW_SHARED_VIEW + VIEW_KEY, json.dumps(envelope))
        page = f"{base_url}/#/experiments/{exp.experiment_id}/runs?{_ML_VIEW}&viewStateShareKey={VIEW_KEY}"
        views.append(CellView(exp.name, page, f"{page}&compareRunsMode=CHART"))
    return views


def run_link(tracker: Tracker, run_id: str) -> str:
    """A link to a run's page in the MLflow UI: on the tracking server itself, or, for a local store or a
    database, as ``cxrfa ui`` serves it on its default port."""
    scheme = urlparse(tracker.uri).scheme
    base = tracker.uri.rstrip("/") if scheme in ("http", "https") else f"http://127.0.0.1:{UI_PORT}"
    return f"{redact(base)}/#/experiments/{tracker.experiment_id}/runs/{run_id}?{_ML_VIEW}"
