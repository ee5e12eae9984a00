"""MLflow tracking: the only module that imports mlflow.

Conventions (DESIGN.md "Tracking conventions"): one experiment per matrix; a parent run per matrix invocation,
reused on resume; one child run per cell x seed named ``<cell>/seed=<k>`` with ``cxrfa.*`` tags; params are the
flattened resolved config; credentials in URIs are never logged.

The default store is ``./mlruns``: a SQLite database (``mlruns/mlflow.db``) with artifacts beside it
(``mlruns/artifacts``), the artifact location always set explicitly so it never depends on the working directory.
Any other SQLite file keeps its side files (artifacts, checkpoints, queue and study databases, worker logs, locks)
in one folder beside it, ``<db stem>.cxrfa/`` (:func:`side_path`), never loose among the user's files.
"""

from __future__ import annotations

import logging
import os
import random
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
from cxrfa.claims import OWNER
from cxrfa.errors import CxrfaError

log = logging.getLogger(__name__)

DEFAULT_STORE = Path("mlruns")
_KNOWN_SCHEMES = {"sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "file"}
_DB_SCHEMES = {"postgresql", "mysql", "mssql"}

# Tag names: every tag cxrfa writes or reads is named here, nowhere else.
TAG_PREFIX = "cxrfa."
TAG_CELL = "cxrfa.cell"  # marks a cell run (what `compare` gathers)
TAG_SEED = "cxrfa.seed"
TAG_CONFIG_HASH = "cxrfa.config_hash"  # resume key of a cell run; trials carry a ".trial<N>" suffix
TAG_DATA_HASH = "cxrfa.data_hash"
TAG_DATA = "cxrfa.data"
TAG_BACKBONE_SOURCE = "cxrfa.backbone.source"
TAG_AXIS_PREFIX = "cxrfa.axis."
TAG_CODE_VERSION = "cxrfa.code_version"
TAG_FAILURE = "cxrfa.failure"
TAG_OWNER = OWNER  # host:pid:start of the process that runs (or ran) it
TAG_RESUMED_FROM = "cxrfa.resumed_from"
TAG_THREADS = "cxrfa.threads"  # torch CPU threads the run trained with
TAG_PARENT = "cxrfa.parent"  # name of a matrix invocation's parent run
TAG_MATRIX = "cxrfa.matrix"
TAG_CELLS = "cxrfa.cells"  # on an ablation parent: the matrix's cells in file order (JSON list)
TAG_CONTRASTS = "cxrfa.contrasts"  # on an ablation parent: the matrix's contrasts (JSON {family: ["a - b"]})
TAG_TUNING = "cxrfa.tuning"  # on an ablation parent: how its cells were tuned (set by study recipes)
TAG_TUNED_TRIALS = "cxrfa.tuned_trials."  # + cell: finished trials of the cell's study, or "none"
TAG_BACKBONES = "cxrfa.backbones"
TAG_STUDY = "cxrfa.study"
TAG_TRIAL = "cxrfa.trial"
TAG_TRIAL_STATE = "cxrfa.trial_state"
TAG_TRIAL_CONFIG_HASH = "cxrfa.trial_config_hash"
TAG_STUDY_PARENT = "cxrfa.study_parent"
TAG_TUNED_CELL = "cxrfa.tuned_cell"
TAG_STORAGE = "cxrfa.storage"
TAG_METRIC = "cxrfa.metric"
TAG_SAMPLER = "cxrfa.sampler"
TAG_PRUNER = "cxrfa.pruner"
TAG_BEST_TRIAL = "cxrfa.best_trial"
TAG_BEST_RUN = "cxrfa.best_run"
TAG_PRETRAIN = "cxrfa.pretrain"
TAG_PIPELINE = "cxrfa.pipeline"
MLFLOW_PARENT = "mlflow.parentRunId"
MLFLOW_RUN_NAME = "mlflow.runName"
MLFLOW_NOTE = "mlflow.note.content"  # a run's (or experiment's) description in the UI
MLFLOW_EXPERIMENT_KIND = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"  # opens experiments in the model-training view, not the GenAI one

_SCHEME_AUTHORITY = re.compile(r"^([A-Za-z][\w+.-]*://)(.*)@", re.DOTALL)
# Query parameters that carry a secret in SQLAlchemy, libpq and HTTP URLs (…?password=…&sslpassword=…).
SECRET_PARAMS = (
    "password",
    "passwd",
    "pwd",
    "sslpassword",
    "token",
    "access_token",
    "auth_token",
    "id_token",
    "refresh_token",
    "api_key",
    "apikey",
    "secret",
    "client_secret",
    "sig",
    "signature",
)
_SECRET_QUERY = re.compile(r"([?&;](?:" + "|".join(SECRET_PARAMS) + r")=)[^&;#\s'\"]*", re.IGNORECASE)
# Environment variables whose values are secrets (PGPASSWORD, MLFLOW_TRACKING_TOKEN, AWS_SECRET_ACCESS_KEY, …):
# never printed or stored. Matched at the end of the name: TOKENIZERS_PARALLELISM=false is no secret, and
# hiding every "false" would garble params and tags.
_SECRET_ENV = re.compile(r"(PASSWORD|PASSWD|TOKEN|SECRET|SECRET_KEY|ACCESS_KEY|API_KEY)$", re.IGNORECASE)
_HIDDEN = "***"


def redact(uri: str) -> str:
    """Hide credentials: ``postgresql://user:secret@host/db?sslpassword=x`` -> ``postgresql://***@host/db?sslpassword=***``.

    The one place that decides what a secret looks like; every sink (errors, logs, tags, params, overlays,
    reports) goes through it or :func:`redact_text`. Hidden are: the userinfo (everything between ``//`` and
    the *last* ``@``, so a password holding ``/`` or ``@`` is hidden whole), the values of secret query
    parameters (:data:`SECRET_PARAMS`, any scheme), and the values of secret environment variables
    (``PGPASSWORD``, ``MLFLOW_TRACKING_TOKEN``, …) wherever they appear. File-based stores (``sqlite:``,
    ``file:``, journal paths) keep their userinfo-like ``@`` (a path may hold one).
    """
    if uri.split(":", 1)[0].split("+")[0].lower() not in ("sqlite", "file"):
        uri = _SCHEME_AUTHORITY.sub(rf"\1{_HIDDEN}@", uri)
    return _env_secrets_hidden(_SECRET_QUERY.sub(rf"\1{_HIDDEN}", uri))


def redact_text(text: str, *uris: str | None) -> str:
    """``text`` (an error message, a log line) with every secret hidden: those of ``uris`` wherever they
    appear (raw, percent-encoded or decoded), those of secret environment variables, and any URL-embedded ones.
    """
    from urllib.parse import parse_qsl, quote, unquote

    for uri in uris:
        secrets: set[str] = set()
        found = _SCHEME_AUTHORITY.match(uri or "")
        if found is not None and redact(uri or "") != uri:
            userinfo = found.group(2)
            user, _, password = userinfo.partition(":")
            # a database's user name is no secret (and may be a common word); an http userinfo is a token
            token = not password and urlparse(uri or "").scheme.startswith("http")
            secrets |= {password, userinfo if password or token else password}
        query = urlparse(uri or "").query
        secrets |= {v for k, v in parse_qsl(query, keep_blank_values=False) if k.lower() in SECRET_PARAMS}
        secrets |= {m.group(0).split("=", 1)[1] for m in _SECRET_QUERY.finditer(uri or "")}
        secrets |= {unquote(x) for x in secrets} | {quote(x, safe="") for x in secrets}
        for secret in sorted((x for x in secrets if len(x) >= 3), key=len, reverse=True):
            text = text.replace(secret, _HIDDEN)
    text = re.sub(r"([A-Za-z][\w+.-]*://)[^\s'\"]*@", rf"\1{_HIDDEN}@", text)
    return _env_secrets_hidden(_SECRET_QUERY.sub(rf"\1{_HIDDEN}", text))


def _env_secrets_hidden(text: str) -> str:
    # a password given as PGPASSWORD never shows in a URL, but a driver may quote it back in an error
    for name, value in os.environ.items():
        if len(value) >= 4 and _SECRET_ENV.search(name) and value in text:
            text = text.replace(value, _HIDDEN)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that hides secrets (:func:`redact_text`) in every record it passes, arguments included."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        hidden = redact_text(message)
        if hidden != message:
            record.msg, record.args = hidden, None
        if record.exc_info and record.exc_info[1] is not None:
            # a traceback's last line quotes the exception: format it now, hidden, and drop the original
            import traceback

            record.exc_text = redact_text("".join(traceback.format_exception(*record.exc_info)).rstrip())
            record.exc_info = None
        return True


STORE_DB = "mlflow.db"  # the database of a folder store
SIDE_SUFFIX = ".cxrfa"  # <db stem>.cxrfa/: the side folder of any other SQLite store


def side_path(uri: str, name: str) -> Path | None:
    """Where the local SQLite store ``uri`` keeps its side file or folder ``name`` (``artifacts``,
    ``checkpoints``, ``queue.db``, ``optuna.journal``, ``workers``, lock files); None for other stores.

    A folder store (``<folder>/mlflow.db``) owns its folder, so ``name`` sits in it. Any other database file
    may share its folder with the user's files, so its side files go to one folder beside it,
    ``<db stem>.cxrfa/``, unless an older store already has ``name`` beside the database (read where it is).
    """
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///"))
    if _owns_folder(db):
        return db.parent / name
    loose = db.parent / name
    if name != "artifacts" and loose.exists():  # artifact locations are recorded per experiment in the db
        return loose
    return db.parent / f"{db.stem}{SIDE_SUFFIX}" / name


def _owns_folder(db: Path) -> bool:
    # a folder store, or a database that is itself a side file (the queue.db of a store)
    return db.name == STORE_DB or db.parent.name.endswith(SIDE_SUFFIX)


def default_store(root: Path = DEFAULT_STORE, create: bool = True) -> tuple[str, str]:
    """(tracking URI, artifact root URI) of the local SQLite store under ``root``.

    Raises:
        CxrfaError: the folder cannot be created (``create=False`` creates nothing).
    """
    root = root.resolve()
    if not create:
        return f"sqlite:///{root / STORE_DB}", (root / "artifacts").as_uri()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CxrfaError(
            f"tracking store {root}: cannot create the folder ({err.strerror}); "
            "pass --tracking-uri with a folder you can write"
        ) from None
    return f"sqlite:///{root / STORE_DB}", (root / "artifacts").as_uri()


def resolve_uri(uri: str | None, create: bool = True) -> tuple[str, str | None]:
    """Turn ``--tracking-uri`` / ``MLFLOW_TRACKING_URI`` / the default into (uri, artifact root or None).

    A bare folder path means a SQLite store in that folder. With ``create=False`` (the commands that only
    read) no folder is created.

    Raises:
        CxrfaError: an unknown scheme or a missing folder.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return default_store(create=create)
    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme == "" or (len(scheme) == 1 and os.name == "nt"):
        return default_store(Path(uri), create=create)
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
        return uri, side_path(uri, "artifacts").resolve().as_uri()  # type: ignore[union-attr]
    if scheme == "file":
        raise CxrfaError(
            "tracking URI 'file:' stores are deprecated by MLflow; pass the folder path instead (a SQLite store)"
        )
    return uri, None


def require_store(uri: str) -> None:
    """A local SQLite store must exist before a command that only reads opens it (MLflow would create it).

    Raises:
        CxrfaError: no database file there (the line says how to make one).
    """
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri.removeprefix("sqlite:///"))
    if not db.is_file():
        raise CxrfaError(
            f"no tracking store at {db}: run `cxrfa ablate` or `cxrfa train` first, or pass --tracking-uri with "
            "the store they used"
        )


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


@contextmanager
def creation_lock(uri: str, what: str = "store") -> Iterator[None]:
    """Serialise first use of a SQLite file store across the processes of this machine (a no-op otherwise).

    Two processes creating a new SQLite store at once race in its schema migrations; the lock file sits beside
    the database. Server databases are handled by :func:`_retry_first_use` instead.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    from filelock import FileLock

    db = Path(uri.removeprefix("sqlite:///"))
    lock = side_path(uri, f".{db.name}.{what}.lock")
    assert lock is not None  # a sqlite URI
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock), timeout=600):
        yield


_RACE = re.compile(r"already exists|duplicate|unique|deadlock|could not serialize", re.IGNORECASE)


def _transient(scheme: str, message: str) -> bool:
    """An error another process caused and will clear: a schema creation race on a server database, or SQLite's
    write lock held elsewhere (a read transaction that must turn into a write fails at once with "database is
    locked", busy timeout or not: seen when a requeued Slurm task and a re-run opened the queue together)."""
    if scheme == "sqlite":
        return "database is locked" in message
    return scheme in _DB_SCHEMES and bool(_RACE.search(message))


def _retry_first_use(fn: Any, uri: str, attempts: int = 4) -> Any:
    """Call ``fn``; retry while another process holds what it needs (:func:`_transient`)."""
    scheme = urlparse(uri).scheme.split("+")[0]
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - re-raised unless another process caused it
            if attempt == attempts - 1 or not _transient(scheme, str(err)):
                raise
            time.sleep(0.5 + random.random() * 1.5 * (attempt + 1))
    raise AssertionError("unreachable")


def check_reachable(uri: str, timeout: int = 10) -> None:
    """Connect once to a server database, so a wrong host, port or password fails in seconds (MLflow itself
    retries for about two minutes before it gives up).

    Raises:
        CxrfaError: one line naming the database (credentials hidden) and the driver's reason.
    """
    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme not in _DB_SCHEMES:
        return
    import sqlalchemy

    args = {"connect_timeout": timeout} if scheme in ("postgresql", "mysql") else {}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=args, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect():
            pass
    except Exception as err:  # noqa: BLE001 - no driver, refused, bad credentials: all the user's to fix
        lines = redact_text(str(getattr(err, "orig", None) or err), uri).strip().splitlines() or [
            type(err).__name__
        ]
        raise CxrfaError(f"cannot reach database {redact(uri)}: {lines[0][:200]}") from None


def _finite(v: Any) -> bool:
    try:
        return float(v) == float(v) and abs(float(v)) != float("inf")
    except (TypeError, ValueError):
        return False


def _metric_key(key: str) -> str:
    # MLflow keys allow alphanumerics, _ - . space : / ; label names may carry other characters.
    return re.sub(r"[^\w\-. :/]", "_", key)


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
