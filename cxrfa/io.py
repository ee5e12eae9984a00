"""Small file-system helpers shared by every module that writes: atomic writes, the cxrfa home folder, and
resource exhaustion (a full disk, a quota, a read-only file system) turned into one :class:`DiskFull` line."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cxrfa.errors import CxrfaError

log = logging.getLogger(__name__)

# errno -> what the user can do about it
RESOURCE_ERRNOS = {
    errno.ENOSPC: "free some disk space there",
    errno.EDQUOT: "free some space within your disk quota",
    errno.EROFS: "choose a folder on a writable file system",
}
RESERVE_BYTES = 256 * 1024  # room kept back so a full disk still lets the runs be marked FAILED
RESERVE_NAME = ".cxrfa-reserve"
_SQLITE_FULL = "database or disk is full"


class DiskFull(CxrfaError):
    """A write failed because the disk (or quota) is full or the file system is read-only."""

    def __init__(self, path: str | os.PathLike[str] | None, err: OSError) -> None:
        self.path, self.errno = (Path(path) if path else None), err.errno
        where = Path(path) if path else None
        free = _free_text(where)
        what = err.strerror or os.strerror(err.errno or errno.ENOSPC)
        super().__init__(
            f"{where or 'a file'}: {what}{free}; {RESOURCE_ERRNOS.get(err.errno or errno.ENOSPC)} "
            "(old runs' artifacts, mlruns/checkpoints, the feature cache under CXRFA_HOME) and rerun the same "
            "command: it resumes"
        )


def _free_text(path: Path | None) -> str:
    folder = path
    while folder is not None and not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    if folder is None:
        return ""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return f" ({free // 1024} KiB free on the file system of {folder})"


def resource_error(err: BaseException | None) -> OSError | None:
    """The full-disk, quota or read-only error behind ``err``, if any.

    Follows ``__cause__``/``__context__`` and driver wrappers (``.orig``): torch's writer re-raises a failed
    ``write`` as ``RuntimeError`` and SQLite reports a full disk as "database or disk is full".
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in RESOURCE_ERRNOS:
            return err
        if _SQLITE_FULL in str(err):
            return OSError(errno.ENOSPC, _SQLITE_FULL, getattr(err, "filename", None))
        orig = getattr(err, "orig", None)
        err = orig if isinstance(orig, BaseException) else (err.__cause__ or err.__context__)
    return None


_RESERVES: list[Path] = []  # this process's reserve files (a process-level resource, like its open files)


@contextlib.contextmanager
def reserve_space(folder: str | os.PathLike[str], nbytes: int = RESERVE_BYTES) -> Iterator[None]:
    """Hold ``nbytes`` of ``folder``'s file system in a reserve file for the block.

    When a write fails for lack of space, :func:`release_reserves` deletes it, so marking the runs FAILED (a
    few database pages) still succeeds. Creating the reserve on a disk already full is a :class:`DiskFull`.
    """
    # one per process (ablations may share a store, from several machines)
    path = Path(folder) / f"{RESERVE_NAME}-{socket.gethostname()}-{os.getpid()}"
    _remove_stale_reserves(Path(folder))
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(b"\0" * nbytes)  # real blocks (a sparse file would reserve nothing)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as err:
        with contextlib.suppress(OSError):
            path.unlink()
        if err.errno in RESOURCE_ERRNOS:
            raise DiskFull(folder, err) from None
        raise
    _RESERVES.append(path)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            _RESERVES.remove(path)
        with contextlib.suppress(OSError):
            path.unlink()


def _remove_stale_reserves(folder: Path) -> None:
    """Delete this machine's reserve files whose process is gone (killed before it could delete its own)."""
    if not Path("/proc/self").exists():  # no cheap liveness check here: leave them
        return
    for stale in folder.glob(f"{RESERVE_NAME}-{socket.gethostname()}-*"):
        pid = stale.name.rsplit("-", 1)[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(OSError):
                stale.unlink()


def release_reserves() -> None:
    """Delete this process's reserve files (a write just failed for lack of space)."""
    while _RESERVES:
        path = _RESERVES.pop()
        with contextlib.suppress(OSError):
            path.unlink()
            log.debug("released the disk reserve %s", path)


def as_disk_full(err: BaseException, path: str | os.PathLike[str] | None = None) -> DiskFull | None:
    """``err`` as a :class:`DiskFull` (reserves released, so the caller can still record it), or None."""
    if isinstance(err, DiskFull):
        release_reserves()
        return err
    cause = resource_error(err)
    if cause is None:
        return None
    full = DiskFull(cause.filename or path, cause)
    release_reserves()
    return full


def cxrfa_home() -> Path:
    """Folder for caches shared across runs (demo data, stand-in weights, feature cache).

    ``$CXRFA_HOME`` if set, else ``~/.cache/cxrfa``.
    """
    return Path(os.environ.get("CXRFA_HOME", Path.home() / ".cache" / "cxrfa")).expanduser()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` in one step.

    Readers never see half a file, and concurrent writers of the same content are safe (last rename wins).
    On an exception the temporary file is removed and ``path`` is untouched; a full disk (or quota, or a
    read-only file system) is raised as :class:`DiskFull` naming ``path``.

    Raises:
        DiskFull: the write failed for lack of space or permission to write the file system.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as err:
        if err.errno in RESOURCE_ERRNOS:
            raise DiskFull(target, err) from None
        raise
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; give them the usual permissions
        os.replace(tmp, target)
    except Exception as err:
        cause = resource_error(err)
        if cause is None:
            raise
        full = DiskFull(target, cause)  # says what was free when it failed, before the reserve goes
        release_reserves()
        raise full from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def file_kind(path: str | os.PathLike[str]) -> str | None:
    """``None`` for a regular file (after symlinks), else what it is: ``a named pipe (FIFO)``, ``a folder``, …

    Decided by ``os.stat`` without opening the file: opening a FIFO blocks until someone writes to it, and a
    device may never end.

    Raises:
        FileNotFoundError: nothing is there.
    """
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode):
        return None
    for test, what in (
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return what
    return "not a regular file"


def require_regular(path: str | os.PathLike[str], role: str = "file") -> Path:
    """``path`` if it is a regular file; anything else is one :class:`CxrfaError` line, never opened.

    Raises:
        CxrfaError: missing, or a FIFO, device, socket or folder.
    """
    try:
        kind = file_kind(path)
    except FileNotFoundError:
        raise CxrfaError(f"{path}: {role} not found") from None
    except OSError as err:
        raise CxrfaError(f"{path}: cannot read the {role} ({err.strerror})") from None
    if kind is not None:
        raise CxrfaError(f"{path}: the {role} is {kind}, not a regular file; only regular files are read")
    return Path(path)


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes.

    Raises:
        CxrfaError: ``path`` is not a regular file (a FIFO would block forever).
    """
    require_regular(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
