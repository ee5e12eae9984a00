"""MLflow tracking: the only module that imports mlflow.

Conventions (DESIGN.md "Tracking conventions"): one experiment per matrix; a parent run per matrix invocation,
reused on resume; one child run per cell x seed named ``<cell>/seed=<k>`` with ``cxrfa.*`` tags; params are the
flattened resolved config; credentials in URIs are never logged.

The default store is ``./mlruns``: a SQLite database (``mlruns/mlflow.db``) with artifacts beside it
(``mlruns/artifacts``), the artifact location always set explicitly so it never depends on the working directory.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from cxrfa import __version__
from cxrfa.errors import CxrfaError

log = logging.getLogger(__name__)

DEFAULT_STORE = Path("mlruns")
_KNOWN_SCHEMES = {"sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "file"}
TAG_PREFIX = "cxrfa."


def redact(uri: str) -> str:
    """Hide credentials: ``postgresql://user:secret@host/db`` -> ``postgresql://***@host/db``."""
    return re.sub(r"//[^/@]+@", "//***@", uri)


def default_store(root: Path = DEFAULT_STORE) -> tuple[str, str]:
    """(tracking URI, artifact root URI) of the local SQLite store under ``root``."""
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()


def resolve_uri(uri: str | None) -> tuple[str, str | None]:
    """Turn ``--tracking-uri`` / ``MLFLOW_TRACKING_URI`` / the default into (uri, artifact root or None).

    A bare folder path means a SQLite store in that folder. Unknown schemes are a :class:`CxrfaError`.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return default_store()
    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme == "" or (len(scheme) == 1 and os.name == "nt"):
        return default_store(Path(uri))
    if scheme not in _KNOWN_SCHEMES:
        raise CxrfaError(
            f"tracking URI {redact(uri)!r}: unknown scheme {scheme!r}; use a folder, sqlite:///path/mlflow.db, "
            "http(s)://host:port or postgresql://user@host/db"
        )
    if scheme == "sqlite":
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.parent.is_dir():
            raise CxrfaError(
                f"tracking URI {uri!r}: folder {db.parent} does not exist; create it or use another path"
            )
        return uri, (db.parent / "artifacts").resolve().as_uri()
    if scheme == "file":
        raise CxrfaError(
            "tracking URI 'file:' stores are deprecated by MLflow; pass the folder path instead (a SQLite store)"
        )
    return uri, None


def check_writable(uri: str) -> None:
    """A local SQLite store must be writable; MLflow would otherwise retry for minutes, then fail in 250 lines.

    Raises:
        CxrfaError: its folder (or the database file) cannot be written.
    """
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri.removeprefix("sqlite:///"))
    try:
        with tempfile.TemporaryFile(dir=db.parent):
            pass
        if db.exists():
            with open(db, "r+b"):
                pass
    except OSError as err:
        raise CxrfaError(
            f"tracking store {db.parent} is read-only ({err.strerror}); fix its permissions or pass "
            "--tracking-uri with a folder you can write"
        ) from None


def code_version() -> str:
    """cxrfa's version plus the git commit of the working tree when there is one."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


@dataclass(frozen=True)
class RunInfo:
    """A tracked run as cxrfa sees it."""

    run_id: str
    name: str
    status: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    artifact_uri: str


class Tracker:
    """An MLflow store + experiment.

    Args:
        uri: tracking URI or folder; ``None`` = ``MLFLOW_TRACKING_URI`` or ``./mlruns``.
        experiment: experiment name (created with an explicit artifact location when missing).

    Raises:
        CxrfaError: the store cannot be reached or the URI is malformed.
    """

    def __init__(self, uri: str | None, experiment: str) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        logging.getLogger("alembic").setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        self.uri, self.artifact_root = resolve_uri(uri)
        check_writable(self.uri)
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            self.experiment_id = self._experiment(experiment)
        except CxrfaError:
            raise
        except Exception as err:  # noqa: BLE001 - any backend failure is a store the user pointed us at
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CxrfaError(f"cannot use tracking store {redact(self.uri)}: {first[:300]}") from None
        self.experiment = experiment

    def _experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            location = f"{self.artifact_root}/{name}" if self.artifact_root else None
            try:
                return self.client.create_experiment(name, artifact_location=location)
            except MlflowException:  # another process created it first
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            self.client.restore_experiment(exp.experiment_id)
        return exp.experiment_id

    # -- queries -----------------------------------------------------------------------------------------

    def search(self, filter_string: str = "", max_results: int = 10_000) -> list[RunInfo]:
        """Runs of this experiment matching an MLflow filter string, newest first."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=filter_string,
            max_results=max_results,
            order_by=["attributes.start_time DESC"],
        )
        return [
            RunInfo(r.info.run_id, r.info.run_name or "", r.info.status, dict(r.data.tags), dict(r.data.params),
                    dict(r.data.metrics), r.info.artifact_uri)
            for r in runs
        ]  # fmt: skip

    def finished(self, config_hash: str) -> RunInfo | None:
        """The FINISHED child run with this config hash, if any."""
        found = self.search(f"tags.`cxrfa.config_hash` = '{config_hash}' and attributes.status = 'FINISHED'")
        return found[0] if found else None

    def get(self, run_id: str) -> RunInfo:
        """One run by id, from any experiment of the store."""
        try:
            r = self.client.get_run(run_id)
        except Exception:  # noqa: BLE001
            raise CxrfaError(f"no run {run_id!r} in tracking store {redact(self.uri)}") from None
        return RunInfo(r.info.run_id, r.info.run_name or "", r.info.status, dict(r.data.tags), dict(r.data.params),
                       dict(r.data.metrics), r.info.artifact_uri)  # fmt: skip

    def experiment_of(self, run_id: str) -> str:
        """Name of the experiment a run belongs to."""
        try:
            return self.client.get_experiment(self.client.get_run(run_id).info.experiment_id).name
        except Exception:  # noqa: BLE001
            raise CxrfaError(f"no run {run_id!r} in tracking store {redact(self.uri)}") from None

    def children(self, parent_id: str) -> list[RunInfo]:
        return self.search(f"tags.`mlflow.parentRunId` = '{parent_id}'")

    def download(self, run_id: str, artifact_path: str, dst: Path) -> Path:
        """Download one artifact (file or folder) of a run into ``dst``; returns the local path."""
        from mlflow.artifacts import download_artifacts

        try:
            return Path(download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(dst),
                                           tracking_uri=self.uri))  # fmt: skip
        except Exception as err:  # noqa: BLE001
            raise CxrfaError(
                f"run {run_id}: cannot fetch artifact {artifact_path!r} ({str(err)[:200]})"
            ) from None

    # -- writing -----------------------------------------------------------------------------------------

    def parent(self, name: str, tags: Mapping[str, str] | None = None) -> TrackedRun:
        """The parent run named ``name`` (reused when it exists, so a resumed matrix keeps one parent)."""
        found = self.search(f"tags.`cxrfa.parent` = '{name}'")
        if found:
            run = TrackedRun(self, found[0].run_id)
            self.client.update_run(run.run_id, status="RUNNING")
        else:
            run = self.start(name, {f"{TAG_PREFIX}parent": name, **(tags or {})})
        return run

    def start(self, name: str, tags: Mapping[str, str], parent_id: str | None = None) -> TrackedRun:
        """Create a RUNNING run (nested under ``parent_id`` when given)."""
        all_tags = {f"{TAG_PREFIX}code_version": code_version(), "mlflow.runName": name, **tags}
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        return TrackedRun(self, run.info.run_id)

    def abandon_unfinished(self, config_hash: str) -> int:
        """Mark RUNNING runs of this config hash (left by a killed process) KILLED; returns how many."""
        stale = self.search(f"tags.`cxrfa.config_hash` = '{config_hash}' and attributes.status = 'RUNNING'")
        for run in stale:
            self.client.set_tag(run.run_id, f"{TAG_PREFIX}failure", "interrupted; re-run started")
            self.client.set_terminated(run.run_id, status="KILLED")
        return len(stale)


class TrackedRun:
    """A handle to log into one run. Nothing here raises on a value that MLflow would reject silently."""

    def __init__(self, tracker: Tracker, run_id: str) -> None:
        self.tracker = tracker
        self.client = tracker.client
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        items = [Param(k, redact(str(v))[:6000]) for k, v in params.items() if k not in existing]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log finite metrics (NaN/inf are skipped: MLflow can't chart them and they'd poison averages)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_metric_key(k), float(v), now, step) for k, v in metrics.items() if _finite(v)]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def finish(self) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED")

    def fail(self, reason: str) -> None:
        """Mark FAILED with the reason in the ``cxrfa.failure`` tag."""
        self.client.set_tag(self.run_id, f"{TAG_PREFIX}failure", reason[:5000])
        self.client.set_terminated(self.run_id, status="FAILED")

    @contextmanager
    def scratch(self) -> Iterator[Path]:
        """A temporary folder for files to log."""
        with tempfile.TemporaryDirectory(prefix="cxrfa-") as tmp:
            yield Path(tmp)


def _finite(v: Any) -> bool:
    try:
        return float(v) == float(v) and abs(float(v)) != float("inf")
    except (TypeError, ValueError):
        return False


def _metric_key(key: str) -> str:
    # MLflow keys allow alphanumerics, _ - . space : / ; label names may carry other characters.
    return re.sub(r"[^\w\-. :/]", "_", key)


def ui_command(uri: str | None, port: int) -> list[str]:
    """The ``mlflow ui`` command line for the project's store, bound to 127.0.0.1."""
    tracking, artifacts = resolve_uri(uri)
    cmd = ["mlflow", "ui", "--backend-store-uri", tracking, "--host", "127.0.0.1", "--port", str(port)]
    if artifacts:
        cmd += ["--default-artifact-root", artifacts]
    return cmd
