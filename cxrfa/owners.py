"""Who runs what: an owner id per process, and whether an owner on this machine is still alive.

An owner is ``host:pid:start`` where ``start`` is the process start time in clock ticks since boot (Linux), so
a recycled pid is not mistaken for the process that died. Only owners on this host can be checked directly;
for other machines only a heartbeat can tell (:mod:`cxrfa.scheduler`, :mod:`cxrfa.tuning.workers`).
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path


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
