"""Who holds which unit of work, and whether it is still alive: the one home of worker liveness.

Every shared piece of work (a cell x seed of the ablation queue, an Optuna trial, an MLflow run) records its
*owner*, ``host:pid:start`` where ``start`` is the process start time in clock ticks since boot (Linux), so a
recycled pid is not mistaken for the process that died. While it works, the owner refreshes a *heartbeat*.
Work is *stale* (its owner stopped) when the owner is a process of this host that is gone, or when its heartbeat
is older than the grace period: for owners on other machines only a heartbeat can tell.

The ablation queue (:mod:`cxrfa.tuning.queue`, Optuna's RDB heartbeats with these timeouts), the tuning workers
(:mod:`cxrfa.tuning.workers`, a heartbeat attribute beside the owner) and the tracker's clean-up of unfinished
runs (:meth:`cxrfa.tracking.Tracker.abandon_unfinished`) all decide with :func:`is_stale`, under the timeouts of
:func:`timeouts`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from cxrfa.errors import CxrfaError

log = logging.getLogger(__name__)

OWNER = (
    "cxrfa.owner"  # host:pid:start of the process that holds the work (an Optuna attribute, an MLflow tag)
)
HEARTBEAT = (
    "cxrfa.heartbeat"  # Unix time of the holder's last beat, where the storage has no heartbeat of its own
)


class Timeouts(BaseModel):
    """How often a holder beats and how long silence means it stopped; ``CXRFA_HEARTBEAT_S`` and
    ``CXRFA_GRACE_S`` override them (a test cluster, or a shared filesystem slow to show writes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    heartbeat_s: int = Field(10, ge=1)  # a holder refreshes its heartbeat this often
    grace_s: int = Field(60, ge=2)  # silence after which another worker takes the work over
    poll_s: float = Field(2.0, gt=0)  # how often an idle worker looks for work and for stopped holders


def timeouts() -> Timeouts:
    """The timeouts in force (read at each call, so a worker started with other settings uses them).

    Raises:
        CxrfaError: an override is not a whole number of seconds, or the grace period is not longer than
            the heartbeat (every holder would look stopped).
    """
    values: dict[str, int] = {}
    for field, var in (("heartbeat_s", "CXRFA_HEARTBEAT_S"), ("grace_s", "CXRFA_GRACE_S")):
        text = os.environ.get(var)
        if text is None:
            continue
        if not text.strip().isdigit():
            raise CxrfaError(f"{var}={text!r}: expected a whole number of seconds")
        values[field] = int(text)
    out = Timeouts(**values)
    if out.grace_s <= out.heartbeat_s:
        raise CxrfaError(
            f"CXRFA_GRACE_S={out.grace_s} is not longer than CXRFA_HEARTBEAT_S={out.heartbeat_s}: "
            "every worker would look stopped"
        )
    return out


# -- owners ------------------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    """Fields 3.. of /proc/<pid>/stat (state, ppid, ...); [] where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    # the command name (field 2) may hold spaces and parentheses: split after its closing one
    return stat.rpartition(")")[2].split()


def _start_ticks(pid: int) -> str:
    """Start time of ``pid`` in clock ticks since boot (field 22); '' where /proc is not available."""
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else ""


@functools.cache
def _me(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid)}"


def me() -> str:
    """This process's owner id."""
    return _me(os.getpid())


def is_local(owner: str) -> bool:
    """Whether ``owner`` names a process of this host."""
    return owner.split(":", 1)[0] == socket.gethostname()


def alive(owner: str) -> bool:
    """False only when ``owner`` is a process of this host that is gone (or a recycled pid); True otherwise."""
    parts = owner.split(":")
    if len(parts) < 2 or not is_local(owner) or not parts[1].isdigit():
        return True  # another machine, or an id written by something else: only a heartbeat can tell
    pid = int(parts[1])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _stat(pid)
    if fields and fields[0] in ("Z", "X"):  # killed, not yet reaped by its parent
        return False
    started = parts[2] if len(parts) > 2 else ""
    return not started or not fields or fields[19] == started


# -- the stale rule ----------------------------------------------------------------------------------------


def is_stale(owner: str | None, beat: float | None, now: float, grace_s: float | None = None) -> bool:
    """Whether work held by ``owner``, last heard of at ``beat`` (Unix time; None: no heartbeat kept), was
    left by a stopped worker: its process on this host is gone, or it has been silent for the grace period.

    Work with neither an owner nor a heartbeat is stale: nothing could ever show it alive.
    """
    if owner is not None and not alive(owner):
        return True
    if beat is None:
        return owner is None
    return now - float(beat) > (timeouts().grace_s if grace_s is None else grace_s)


@contextlib.contextmanager
def heartbeat(beat: Callable[[], None], name: str) -> Iterator[None]:
    """Call ``beat`` now and every heartbeat period until the block ends (in a daemon thread).

    A failed beat is only logged: it makes the work look stale later, which is the safe side.
    """
    period = timeouts().heartbeat_s
    beat()
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(period):
            try:
                beat()
            except Exception as err:  # noqa: BLE001 - a storage hiccup: the next beat may get through
                log.debug("heartbeat of %s failed: %s", name, err)

    thread = threading.Thread(target=loop, daemon=True, name=f"cxrfa-heartbeat-{name}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
