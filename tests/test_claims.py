"""The one liveness rule: owner ids, heartbeats, the stale rule and its timeouts (``cxrfa.claims``)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from cxrfa.claims import alive, heartbeat, is_stale, me, timeouts
from cxrfa.errors import CxrfaError


def _dead_owner() -> str:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return f"{socket.gethostname()}:{proc.pid}:1"


def test_a_dead_process_of_this_host_is_stale_at_once_and_a_live_one_never() -> None:
    now = time.time()
    assert is_stale(_dead_owner(), now, now)  # beat a moment ago, but its process is gone
    assert alive(me()) and not alive(_dead_owner())
    assert not is_stale(me(), None, now)  # a run keeps no heartbeat: a live owner is enough


def test_another_machine_is_stale_only_after_the_grace_period(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRFA_GRACE_S", "5")
    monkeypatch.setenv("CXRFA_HEARTBEAT_S", "1")
    now, elsewhere = time.time(), "elsewhere:4242:1"
    assert not is_stale(elsewhere, now - 4, now)
    assert is_stale(elsewhere, now - 6, now)
    assert not is_stale(elsewhere, None, now)  # no heartbeat kept: only its owner could tell
    assert is_stale(None, None, now)  # nothing could ever show it alive


def test_timeouts_come_from_one_place_and_bad_values_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CXRFA_GRACE_S", raising=False)
    monkeypatch.delenv("CXRFA_HEARTBEAT_S", raising=False)
    assert (timeouts().heartbeat_s, timeouts().grace_s) == (10, 60)
    monkeypatch.setenv("CXRFA_GRACE_S", "soon")
    with pytest.raises(CxrfaError, match="CXRFA_GRACE_S"):
        timeouts()
    monkeypatch.setenv("CXRFA_GRACE_S", "5")
    monkeypatch.setenv("CXRFA_HEARTBEAT_S", "5")
    with pytest.raises(CxrfaError, match="not longer than"):
        timeouts()


def test_the_heartbeat_beats_at_its_period_until_the_block_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRFA_HEARTBEAT_S", "1")
    monkeypatch.setenv("CXRFA_GRACE_S", "3")
    beats: list[float] = []
    with heartbeat(lambda: beats.append(time.monotonic()), "test"):
        time.sleep(2.5)
    count = len(beats)
    time.sleep(1.2)
    assert count >= 2 and len(beats) == count  # one at the start, one a second; none after the block
