"""Run a local server (the MLflow UI) as a child process group: announced once it answers, stopped whole.

The MLflow server starts a uvicorn master and its workers (and sometimes a job runner); killing only the
process we started leaves the others listening. So the server runs in its own session and every stop (Ctrl-C,
SIGTERM, SIGHUP) signals the whole group, then kills what is left after a grace period. A stop that cannot be
caught (SIGKILL) is covered by the kernel: on Linux the server gets SIGTERM when its parent dies
(``PR_SET_PDEATHSIG``), which ``mlflow server`` forwards to uvicorn.

The server's output (its access log) goes to a file, so the links printed in the terminal stay on screen; a
small record per port (``<cxrfa home>/ui/<port>.json``) names the server that holds it, so a server left by an
older, killed ``cxrfa ui`` is named as such instead of "port in use".
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType

from cxrfa.errors import CxrfaError
from cxrfa.io import cxrfa_home

STARTUP_S = 180.0  # a cold MLflow server on a busy machine takes tens of seconds
STOP_GRACE_S = 10.0


class _Stop(BaseException):  # not an Exception: a broad `except Exception` in on_ready must not swallow it
    """A stop signal arrived."""


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def check_port(port: int, flag: str = "--port") -> int:
    """``port`` if it is one (1-65535), else a free port of 127.0.0.1 when it is 0.

    Raises:
        CxrfaError: outside 0-65535 (one line naming the flag).
    """
    if not 0 <= port <= 65535:
        raise CxrfaError(f"{flag} {port}: a port is a number from 1 to 65535 (0 picks a free one)")
    if port:
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def answers(url: str) -> bool:
    """Whether ``url`` answers 200 within a second."""
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:  # noqa: S310 - a local http URL we built
            return response.status == 200
    except OSError:
        return False


def ui_folder() -> Path:
    """Where ``cxrfa ui`` keeps its servers' logs and port records: ``<cxrfa home>/ui``."""
    return cxrfa_home() / "ui"


def log_path(port: int) -> Path:
    """The log file (access log and errors) of the server on ``port``."""
    return ui_folder() / f"mlflow-{port}.log"


def check_port_free(port: int, what: str = "--port") -> None:
    """Fail in one line when ``port`` is taken, naming a server an earlier ``cxrfa ui`` left running.

    Raises:
        CxrfaError: the port is in use.
    """
    if port_free(port):
        return
    holder = _recorded_server(port)
    if holder is not None:
        raise CxrfaError(
            f"port {port} on 127.0.0.1 is held by an MLflow server that an earlier `cxrfa ui` started "
            f"(pid {holder}) and that outlived it: stop it with `kill -- -{holder}`, or pass another {what}"
        )
    raise CxrfaError(f"port {port} on 127.0.0.1 is in use; pass another {what} (0 picks a free one)")


def serve(cmd: Sequence[str], env: Mapping[str, str], port: int, on_ready: Callable[[str], None]) -> int:
    """Run ``cmd`` until it ends or this process is told to stop; returns the exit status to use.

    ``on_ready(url)`` is called once ``http://127.0.0.1:<port>/health`` answers, not before. The server's
    output goes to :func:`log_path`.

    Raises:
        CxrfaError: the port is taken, or the server ended before it answered.
    """
    check_port_free(port)
    url = f"http://127.0.0.1:{port}"
    quiet = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    log = log_path(port)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            list(cmd),
            env={**os.environ, **quiet, **env},
            start_new_session=True,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with(os.getpid()),  # noqa: PLW1509 - only prctl/kill, no locks taken
        )
    record = _record(port, proc.pid)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise _Stop()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        deadline = time.monotonic() + STARTUP_S
        while not answers(f"{url}/health"):
            if proc.poll() is not None:
                raise CxrfaError(
                    f"the MLflow server ended (exit {proc.returncode}) before it answered: {_last_line(log)} "
                    f"(full log: {log})"
                )
            if time.monotonic() > deadline:
                raise CxrfaError(
                    f"the MLflow server did not answer on {url} within {STARTUP_S:.0f} s (log: {log})"
                )
            time.sleep(0.25)
        on_ready(url)
        return proc.wait()
    except (_Stop, KeyboardInterrupt):
        return 0
    finally:
        stop_group(proc)
        with contextlib.suppress(FileNotFoundError):
            record.unlink()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _die_with(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send the child SIGTERM when ``parent`` dies (Linux), even by
    SIGKILL, which no handler of the parent can see."""
    if not sys.platform.startswith("linux"):
        return None

    def hook() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


def _record(port: int, pid: int) -> Path:
    path = ui_folder() / f"{port}.json"
    path.write_text(json.dumps({"pid": pid, "port": port}))
    return path


def _recorded_server(port: int) -> int | None:
    """The process group of the server a ``cxrfa ui`` started on ``port``, if any of it still runs (the
    ``mlflow server`` process, or a uvicorn it started)."""
    try:
        group = int(json.loads((ui_folder() / f"{port}.json").read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if os.getpgid(int(proc.name)) == group and b"mlflow" in (proc / "cmdline").read_bytes():
                return group
        except OSError:
            continue
    return None


def _last_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no output"
    return lines[-1][:300] if lines else "no output"


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group of ``proc``; SIGKILL whatever still runs after :data:`STOP_GRACE_S`."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        proc.poll()  # reap the leader so the group can empty
        time.sleep(0.1)
    else:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
