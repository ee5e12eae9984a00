"""The store as cxrfa uses it: a :class:`Tracker` (one store and experiment: queries, parent and child runs,
stale-run cleanup) and a :class:`TrackedRun` (params, tags, metrics and artifacts of one run).

Conventions (DESIGN.md "Tracking conventions"): one experiment per matrix; a parent run per matrix invocation,
reused on resume; one child run per cell x seed named ``<cell>/seed=<k>`` with ``cxrfa.*`` tags; params are the
flattened resolved config; credentials in URIs are never logged.
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

from cxrfa import __version__
from cxrfa.errors import CxrfaError
from cxrfa.tracking.redaction import redact, redact_text
from cxrfa.tracking.store import (
    _retry_first_use,
    check_reachable,
    check_writable,
    creation_lock,
    require_store,
    resolve_uri,
)
from cxrfa.tracking.tags import (
    MLFLOW_EXPERIMENT_KIND,
    MLFLOW_NOTE,
    MLFLOW_PARENT,
    MLFLOW_RUN_NAME,
    TAG_CODE_VERSION,
    TAG_CONFIG_HASH,
    TAG_FAILURE,
    TAG_OWNER,
    TAG_PARENT,
    TRAINING_KIND,
)


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
    start_time: int = 0  # ms since the epoch


class Tracker:
    """An MLflow store + experiment.

    Args:
        uri: tracking URI or folder; ``None`` = ``MLFLOW_TRACKING_URI`` or ``./mlruns``.
        experiment: experiment name (created with an explicit artifact location when missing); None only
            with ``create=False``, for reading runs by id.
        create: False for the commands that only read (``explore --run``, ``evaluate --run``): the store and
            the experiment must exist, and neither is created (no folder, database, lock file or experiment).

    Raises:
        CxrfaError: the store cannot be reached or the URI is malformed; with ``create=False`` also a store or
            experiment that does not exist (the line lists the experiments there are).
    """

    def __init__(self, uri: str | None, experiment: str | None, create: bool = True) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        logging.getLogger("alembic").setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        if create and experiment is None:
            raise ValueError("a Tracker that may create needs an experiment name")
        self.uri, self.artifact_root = resolve_uri(uri, create=create)
        try:
            check_reachable(self.uri)
            if create:
                check_writable(self.uri)
                # A new store is created (schema migrations) on first use: serialise that across processes.
                with creation_lock(self.uri):
                    self._client = _retry_first_use(lambda: MlflowClient(tracking_uri=self.uri), self.uri)
                    self.experiment_id = _retry_first_use(lambda: self._experiment(str(experiment)), self.uri)
            else:
                require_store(self.uri)
                self._client = MlflowClient(tracking_uri=self.uri)
                self.experiment_id = self._existing(experiment) if experiment is not None else ""
        except CxrfaError:
            raise
        except Exception as err:  # noqa: BLE001 - any backend failure is a store the user pointed us at
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CxrfaError(
                f"cannot use tracking store {redact(self.uri)}: {redact_text(first, self.uri)[:300]}"
            ) from None
        self.experiment = experiment or ""

    @property
    def is_local(self) -> bool:
        """Whether the store is a SQLite file on this machine (its artifacts and checkpoints beside it)."""
        return self.uri.startswith("sqlite:///")

    @property
    def shown(self) -> str:
        """The store's URI as it may be printed (credentials hidden)."""
        return redact(self.uri)

    def _experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        exp = self._client.get_experiment_by_name(name)
        if exp is None:
            location = f"{self.artifact_root}/{name}" if self.artifact_root else None
            try:
                # A training experiment: MLflow otherwise opens a new experiment in its GenAI view.
                return self._client.create_experiment(
                    name, artifact_location=location, tags={MLFLOW_EXPERIMENT_KIND: TRAINING_KIND}
                )
            except MlflowException:  # another process created it first
                exp = self._client.get_experiment_by_name(name)
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            self._client.restore_experiment(exp.experiment_id)
        if (
            MLFLOW_EXPERIMENT_KIND not in exp.tags
        ):  # created elsewhere: say what it is, keep a kind a user chose
            self._client.set_experiment_tag(exp.experiment_id, MLFLOW_EXPERIMENT_KIND, TRAINING_KIND)
        return exp.experiment_id

    def _existing(self, name: str) -> str:
        exp = self._client.get_experiment_by_name(name)
        if exp is not None and exp.lifecycle_stage == "active":
            return exp.experiment_id
        known = sorted(e.name for e in self._client.search_experiments())
        raise CxrfaError(
            f"no experiment {name!r} in tracking store {self.shown}; known: {', '.join(known) or 'none'}"
        )

    def _error(self, what: str, err: BaseException) -> CxrfaError:
        return CxrfaError(f"{what} in tracking store {self.shown} ({redact_text(str(err), self.uri)[:200]})")

    # -- queries -----------------------------------------------------------------------------------------

    def search(self, filter_string: str = "", max_results: int = 10_000) -> list[RunInfo]:
        """Runs of this experiment matching an MLflow filter string, newest first."""
        runs = self._client.search_runs(
            [self.experiment_id],
            filter_string=filter_string,
            max_results=max_results,
            order_by=["attributes.start_time DESC"],
        )
        return [_info(r) for r in runs]

    def finished(self, config_hash: str) -> RunInfo | None:
        """The FINISHED child run with this config hash, if any."""
        found = self.search(f"tags.`{TAG_CONFIG_HASH}` = '{config_hash}' and attributes.status = 'FINISHED'")
        return found[0] if found else None

    def get(self, run_id: str) -> RunInfo:
        """One run by id, from any experiment of the store."""
        try:
            return _info(self._client.get_run(run_id))
        except Exception:  # noqa: BLE001
            raise CxrfaError(f"no run {run_id!r} in tracking store {self.shown}") from None

    def experiment_of(self, run_id: str) -> str:
        """Name of the experiment a run belongs to."""
        try:
            return self._client.get_experiment(self._client.get_run(run_id).info.experiment_id).name
        except Exception:  # noqa: BLE001
            raise CxrfaError(f"no run {run_id!r} in tracking store {self.shown}") from None

    def children(self, parent_id: str) -> list[RunInfo]:
        return self.search(f"tags.`{MLFLOW_PARENT}` = '{parent_id}'")

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[str]:
        """Paths of a run's artifacts directly under ``path`` (folders included)."""
        try:
            return [a.path for a in self._client.list_artifacts(run_id, path)]
        except Exception as err:  # noqa: BLE001
            raise self._error(f"cannot list the artifacts of run {run_id}", err) from None

    def download(self, run_id: str, artifact_path: str, dst: Path) -> Path:
        """Download one artifact (file or folder) of a run into ``dst``; returns the local path."""
        from mlflow.artifacts import download_artifacts

        try:
            return Path(
                download_artifacts(
                    run_id=run_id, artifact_path=artifact_path, dst_path=str(dst), tracking_uri=self.uri
                )
            )
        except Exception as err:  # noqa: BLE001
            raise CxrfaError(
                f"run {run_id}: cannot fetch artifact {artifact_path!r} ({redact_text(str(err), self.uri)[:200]})"
            ) from None

    # -- writing -----------------------------------------------------------------------------------------

    def parent(
        self, name: str, tags: Mapping[str, str] | None = None, description: str | None = None
    ) -> TrackedRun:
        """The parent run named ``name``: reused when it exists, so a resumed matrix keeps one parent.

        Several workers may ask at once. On a local store a file lock makes that exact; on a server each
        creates one if none exists, then all keep the oldest and the others delete their own.
        """
        key = f"tags.`{TAG_PARENT}` = '{name}'"
        with creation_lock(self.uri, "parent"):
            found = self.search(key)
            if not found:
                mine = self.start(name, {TAG_PARENT: name, **(tags or {})}, description=description)
                found = self._oldest_wins(key, mine)
        run = TrackedRun(self, found[-1].run_id)
        run.reopen()
        return run

    def _oldest_wins(self, key: str, mine: TrackedRun) -> list[RunInfo]:
        if self.is_local:
            return [self.get(mine.run_id)]
        time.sleep(1.0)  # let concurrent creations land before choosing
        found = sorted(self.search(key), key=lambda r: (r.start_time, r.run_id), reverse=True)
        if found[-1].run_id != mine.run_id:
            self.delete_run(mine.run_id)
        return found

    def start(
        self,
        name: str,
        tags: Mapping[str, str],
        parent_id: str | None = None,
        description: str | None = None,
    ) -> TrackedRun:
        """Create a RUNNING run owned by this process (nested under ``parent_id`` when given)."""
        from cxrfa.claims import me

        all_tags = {TAG_CODE_VERSION: code_version(), MLFLOW_RUN_NAME: name, TAG_OWNER: me(), **tags}
        if parent_id:
            all_tags[MLFLOW_PARENT] = parent_id
        if description:
            all_tags[MLFLOW_NOTE] = description
        run = self._client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        return TrackedRun(self, run.info.run_id)

    def delete_run(self, run_id: str) -> None:
        self._client.delete_run(run_id)

    def abandon_unfinished(self, config_hash: str, claimed: bool = False) -> list[RunInfo]:
        """Mark RUNNING runs of this config hash left by stopped processes KILLED; returns them.

        A run is stale by :func:`cxrfa.claims.is_stale` with no heartbeat of its own (a run keeps none): its
        owner is a dead process of this machine, or it has none. Any run is, when ``claimed``: the caller holds
        this config's queue claim, so the engine has declared the run's worker dead (no heartbeat), wherever it
        was.
        """
        from cxrfa.claims import is_stale

        stale = []
        now = time.time()
        for run in self.search(
            f"tags.`{TAG_CONFIG_HASH}` = '{config_hash}' and attributes.status = 'RUNNING'"
        ):
            if claimed or is_stale(run.tags.get(TAG_OWNER), None, now):
                TrackedRun(self, run.run_id).end("KILLED", "its worker stopped; the cell was run again")
                stale.append(run)
        return stale


class TrackedRun:
    """A handle to log into one run. Nothing here raises on a value that MLflow would reject silently."""

    def __init__(self, tracker: Tracker, run_id: str) -> None:
        self.tracker = tracker
        self._client = tracker._client
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self._client.get_run(self.run_id).data.params
        items = [Param(k, redact(str(v))[:6000]) for k, v in params.items() if k not in existing]
        for i in range(0, len(items), 100):
            self._client.log_batch(self.run_id, params=items[i : i + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._client.log_batch(self.run_id, tags=[RunTag(k, redact(str(v))[:5000]) for k, v in tags.items()])

    def describe(self, text: str) -> None:
        """The run's description (Markdown), shown on its page in the MLflow UI."""
        self.set_tags({MLFLOW_NOTE: text})

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log finite metrics (NaN/inf are skipped: MLflow can't chart them and they'd poison averages).

        Final results go at step 0 (the default), so MLflow's chart view draws one bar per run; per-epoch
        curves pass their epoch as ``step``.
        """
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_metric_key(k), float(v), now, step) for k, v in metrics.items() if _finite(v)]
        for i in range(0, len(items), 500):
            self._client.log_batch(self.run_id, metrics=items[i : i + 500])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: Path, artifact_path: str | None = None) -> None:
        self._client.log_artifacts(self.run_id, str(folder), artifact_path)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self._client.log_figure(self.run_id, figure, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._client.log_text(self.run_id, text, artifact_file)

    def reopen(self) -> None:
        """Mark RUNNING again (a resumed parent run)."""
        self._client.update_run(self.run_id, status="RUNNING")

    def finish(self) -> None:
        self._client.set_terminated(self.run_id, status="FINISHED")

    def fail(self, reason: str) -> None:
        """Mark FAILED with the reason in the ``cxrfa.failure`` tag."""
        self.end("FAILED", reason)

    def end(self, status: str, reason: str | None = None) -> None:
        """End with any MLflow status (FINISHED, FAILED, KILLED), recording ``reason`` in ``cxrfa.failure``."""
        if reason is not None:
            self._client.set_tag(self.run_id, TAG_FAILURE, reason[:5000])
        self._client.set_terminated(self.run_id, status=status)

    @contextmanager
    def scratch(self) -> Iterator[Path]:
        """A temporary folder for files to log."""
        with tempfile.TemporaryDirectory(prefix="cxrfa-") as tmp:
            yield Path(tmp)


def _info(r: Any) -> RunInfo:
    return RunInfo(
        r.info.run_id,
        r.info.run_name or "",
        r.info.status,
        dict(r.data.tags),
        dict(r.data.params),
        dict(r.data.metrics),
        r.info.artifact_uri,
        r.info.start_time or 0,
    )


def _finite(v: Any) -> bool:
    try:
        return float(v) == float(v) and abs(float(v)) != float("inf")
    except (TypeError, ValueError):
        return False


def _metric_key(key: str) -> str:
    # MLflow keys allow alphanumerics, _ - . space : / ; label names may carry other characters.
    return re.sub(r"[^\w\-. :/]", "_", key)
