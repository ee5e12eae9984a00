"""Tracking store resolution: defaults, bad URLs as one clear line, credentials never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrfa.errors import CxrfaError
from cxrfa.tracking import Tracker, redact, resolve_uri


def test_default_store_is_sqlite_under_mlruns_with_explicit_artifacts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri, artifacts = resolve_uri(None)
    assert uri == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert artifacts == (tmp_path / "mlruns" / "artifacts").as_uri()
    tracker = Tracker(None, "exp")
    run = tracker.start("r", {"cxrfa.cell": "c"})
    run.log_metrics({"a": 1.0, "b": float("nan")})
    run.finish()
    (info,) = tracker.search("tags.`cxrfa.cell` = 'c'")
    assert info.status == "FINISHED" and info.metrics == {"a": 1.0}
    assert info.artifact_uri.startswith((tmp_path / "mlruns" / "artifacts").as_uri())


def test_bad_uris_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(CxrfaError, match="unknown scheme 'ftp'"):
        resolve_uri("ftp://example/x")
    with pytest.raises(CxrfaError, match="does not exist"):
        resolve_uri(f"sqlite:///{tmp_path}/missing/dir/mlflow.db")
    with pytest.raises(
        CxrfaError, match=r"cannot use tracking store postgresql://\*\*\*@127\.0\.0\.1:1/db"
    ) as err:
        Tracker("postgresql://user:secret@127.0.0.1:1/db", "x")
    assert "secret" not in str(err.value) and "\n" not in str(err.value)


def test_redact() -> None:
    assert redact("http://u:p@host:5000/x") == "http://***@host:5000/x"
    assert redact("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"


def test_parent_is_reused(tmp_path: Path) -> None:
    tracker = Tracker(str(tmp_path / "store"), "exp")
    first = tracker.parent("m [demo]")
    first.finish()
    again = tracker.parent("m [demo]")
    assert again.run_id == first.run_id
