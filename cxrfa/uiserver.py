"""Run a local server (the MLflow UI) as a child process group: announced once it answers, stopped whole.

The MLflow server starts a uvicorn master and its workers (and sometimes a job runner); killing only the
process we started leaves the others listening. So the server runs in its own session and every stop (Ctrl-C,
SIGTERM, SIGHUP) signals the whole group, then kills what is left after a grace period.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from types import FrameType

from cxrfa.errors import CxrfaError

STARTUP_S = 180.0  # a cold MLflow server on a busy machine takes tens of seconds
STOP_GRACE_S = 10.0


class _Stop(BaseException):  # not an Exception: a broad `except Exception` in on_ready must not swallow it
    """A stop signal arrived."""


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


def serve(cmd: Sequence[str], env: Mapping[str, str], port: int, on_ready: Callable[[str], None]) -> int:
    """Run ``cmd`` until it ends or this process is told to stop; returns the exit status to use.

    ``on_ready(url)`` is called once ``http://127.0.0.1:<port>/health`` answers, not before.

    Raises:
        CxrfaError: the port is taken, or the server ended before it answered.
    """
    if not port_free(port):
        raise CxrfaError(f"port {port} on 127.0.0.1 is in use; pass another --port")
    url = f"http://127.0.0.1:{port}"
    quiet = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    proc = subprocess.Popen(list(cmd), env={**os.environ, **quiet, **env}, start_new_session=True)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise _Stop()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        deadline = time.monotonic() + STARTUP_S
        while not answers(f"{url}/health"):
            if proc.poll() is not None:
                raise CxrfaError(
                    f"the MLflow server ended (exit {proc.returncode}) before it answered; see above"
                )
            if time.monotonic() > deadline:
                raise CxrfaError(f"the MLflow server did not answer on {url} within {STARTUP_S:.0f} s")
            time.sleep(0.25)
        on_ready(url)
        return proc.wait()
    except (_Stop, KeyboardInterrupt):
        return 0
    finally:
        stop_group(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
