"""Where a tracking store lives and its first use: URIs and the default folder store, side files beside a
SQLite database, reachability and writability checks, and the creation lock and retry that let several
processes open a new store at once.

The default store is ``./mlruns``: a SQLite database (``mlruns/mlflow.db``) with artifacts beside it
(``mlruns/artifacts``), the artifact location always set explicitly so it never depends on the working directory.
Any other SQLite file keeps its side files (artifacts, checkpoints, queue and study databases, worker logs, locks)
in one folder beside it, ``<db stem>.cxrfa/`` (:func:`side_path`), never loose among the user's files.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from cxrfa.errors import CxrfaError
from cxrfa.tracking.redaction import redact, redact_text

DEFAULT_STORE = Path("mlruns")
_KNOWN_SCHEMES = {"sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks", "file"}
_DB_SCHEMES = {"postgresql", "mysql", "mssql"}


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
