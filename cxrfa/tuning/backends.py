"""Where studies live and how they search: storage URLs, samplers, pruners."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from urllib.parse import urlparse

import optuna

from cxrfa.errors import CxrfaError
from cxrfa.tracking import Tracker, check_reachable, creation_lock, redact, redact_text, side_path
from cxrfa.tuning.workers import count_states

log = logging.getLogger(__name__)


JOURNAL_NAME = "optuna.journal"
SAMPLERS = ("tpe", "random", "cmaes")
PRUNERS = ("median", "hyperband", "none")


def default_storage_path(tracker: Tracker | str | None) -> Path:
    """``optuna.journal`` beside a local SQLite tracking store (a Tracker, or its resolved URI), else
    ``./mlruns/optuna.journal``."""
    uri = tracker.uri if isinstance(tracker, Tracker) else tracker
    local = side_path(uri, JOURNAL_NAME) if uri is not None else None
    return local if local is not None else Path("mlruns") / JOURNAL_NAME


def open_storage(url: str | None, tracker: Tracker | None = None) -> tuple[optuna.storages.BaseStorage, str]:
    """Open ``--storage``: a journal file (a path or ``journal:PATH``) or an SQLAlchemy URL.

    Returns:
        The storage and its display form (credentials hidden; a journal as its absolute path).

    Raises:
        CxrfaError: an unknown scheme, a folder that does not exist, or a database that cannot be opened.
    """
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    if url is None:
        path = default_storage_path(tracker)
        path.parent.mkdir(parents=True, exist_ok=True)
    else:
        scheme = urlparse(url).scheme.split("+")[0]
        if scheme in ("sqlite", "postgresql", "mysql", "mssql", "oracle"):
            if scheme == "sqlite" and not Path(url.removeprefix("sqlite:///")).parent.is_dir():
                raise CxrfaError(
                    f"--storage {url!r}: folder {Path(url.removeprefix('sqlite:///')).parent} does not exist"
                )
            check_reachable(url)  # a wrong host or password fails in seconds, not after minutes of retries
            try:
                with creation_lock(url):  # two workers creating a new SQLite study database at once
                    return RDBStorage(url), redact(url)
            except Exception as err:  # noqa: BLE001 - driver missing, server down, bad credentials
                first = (redact_text(str(err), url).strip().splitlines() or [type(err).__name__])[0]
                hint = ""
                if scheme == "sqlite" and any(w in first for w in ("not a database", "malformed", "corrupt")):
                    db = url.removeprefix("sqlite:///")
                    hint = f"; the file is damaged: move it aside (mv {db} {db}.corrupt) and rerun to start afresh"
                raise CxrfaError(
                    f"--storage {redact(url)}: cannot open the database ({first[:200]}){hint}"
                ) from None
        if scheme == "journal":
            path = Path(url.removeprefix("journal:").removeprefix("//"))
        elif scheme == "" or (len(scheme) == 1 and os.name == "nt"):
            path = Path(url)
        else:
            raise CxrfaError(
                f"--storage {redact(url)!r}: unknown scheme {scheme!r}; use a journal file path (e.g. mlruns/optuna.journal), "
                "sqlite:///study.db or postgresql://user@host/db"
            )
        if path.is_dir():
            raise CxrfaError(
                f"--storage {url!r} is a folder; give a journal file, e.g. {path / JOURNAL_NAME}"
            )
        if not path.parent.is_dir():
            raise CxrfaError(
                f"--storage {url!r}: folder {path.parent} does not exist; create it or use another path"
            )
    path = path.resolve()
    check_journal(path)
    # The open-file lock works on every local file system and NFS; the default symlink lock fails on some.
    backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
    return JournalStorage(backend), str(path)


def check_journal(path: Path) -> None:
    """Refuse a damaged Optuna journal with one line that says how to recover, instead of Optuna's traceback.

    Every complete line of a journal is one JSON object; Optuna itself skips an unfinished last line (a writer
    stopped mid-write), so that one is allowed here too.

    Raises:
        CxrfaError: a line that is not UTF-8 JSON; the message names the file and the line, and gives the
            commands that keep the readable lines before it (or move the whole file aside).
    """
    if not path.is_file():
        return
    lines = path.read_bytes().split(b"\n")[:-1]  # the part after the last newline is an unfinished write
    for number, line in enumerate(lines, start=1):
        try:
            op = json.loads(line.decode("utf-8"))
            if not isinstance(op, dict) or "op_code" not in op:
                raise ValueError("not an Optuna journal entry")
        except (UnicodeDecodeError, ValueError) as err:
            what = "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else f"not a journal entry ({err})"
            keep = number - 1
            fix = (
                f"head -n {keep} {path} > {path}.fixed && mv {path} {path}.corrupt && mv {path}.fixed {path}"
            )
            raise CxrfaError(
                f"{path}: the Optuna journal is damaged at line {number} ({what[:120]}); keep the {keep} readable "
                f"line(s) before it with `{fix}`, or move it aside (`mv {path} {path}.corrupt`) to start the "
                "studies afresh (finished trials stay in MLflow)"
            ) from None


def build_sampler(name: str, seed: int | None, trials: int) -> optuna.samplers.BaseSampler:
    """``tpe`` (random start then TPE, constant liar for parallel workers), ``random`` or ``cmaes``."""
    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=min(10, max(2, trials // 4)), constant_liar=True
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        try:
            return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        except ImportError:
            raise CxrfaError("--sampler cmaes needs the 'cmaes' package: pip install cmaes") from None
    raise CxrfaError(f"--sampler {name!r}: known samplers: {', '.join(SAMPLERS)}")


def build_pruner(
    name: str | optuna.pruners.BasePruner, epochs: int, startup: int = 2, warmup: int = 0
) -> optuna.pruners.BasePruner:
    """``median`` (vs earlier trials at the same epoch), ``hyperband`` (1..epochs), ``none``, or a pruner as is."""
    if isinstance(name, optuna.pruners.BasePruner):
        return name
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs), reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise CxrfaError(f"--pruner {name!r}: known pruners: {', '.join(PRUNERS)}")


def study_progress(name: str, storage: str | None, tracker: Tracker | None = None) -> int:
    """Finished (COMPLETE + PRUNED) trials of a study; 0 when it does not exist yet."""
    opened, _ = open_storage(storage, tracker)
    try:
        study = optuna.load_study(study_name=name, storage=opened)
    except KeyError:
        return 0
    counts = count_states(study)
    return counts["COMPLETE"] + counts["PRUNED"]
