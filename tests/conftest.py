"""Test-session setup: offline, a private cxrfa home shared by the session (demo data, stand-ins, feature cache),
and the session-wide fixtures built once per run."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.pop("MLFLOW_TRACKING_URI", None)
# One home for the session: the smoke demo data and stand-in backbones are built once and shared by every test.
# Set here, before `-n` starts its workers, so they inherit it and share it too: a stand-in is pretrained under a
# file lock (the second worker waits and loads it) and demo data is renamed into place whole.
os.environ.setdefault("CXRFA_HOME", tempfile.mkdtemp(prefix="cxrfa-test-home-"))

REPO = Path(__file__).resolve().parents[1]

if TYPE_CHECKING:
    from cxrfa.config import BackboneConfig


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Test files with services tests first, then those with slow tests, then the rest; each file's tests kept
    together and in their order.

    Under ``-n 2`` each worker takes whole files in this order: a long file handed out last would run on one
    worker while the other sits idle (the end-to-end files take minutes, most others seconds). The services
    files go first because their time is the longest in wall clock for their CPU (a Slurm cluster's tasks,
    servers started and waited for), so none of them can be the one left running at the end."""
    services = {item.path for item in items if item.get_closest_marker("services")}
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: (item.path not in services, item.path not in slow))  # stable within a group


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (no oversubscription on a small CPU); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory (so ./mlruns is private) that can still find the shipped matrices."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ablations").symlink_to(REPO / "ablations")
    return tmp_path


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private working folder with its own copy of ablations/smoke.yaml (tuned overlays are written beside it,
    never into the repository)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ablations").mkdir()
    shutil.copy(REPO / "ablations" / "smoke.yaml", tmp_path / "ablations" / "smoke.yaml")
    return tmp_path


@pytest.fixture(scope="session")
def smoke_standin() -> BackboneConfig:
    """The clip stand-in (the smoke matrix's one backbone) pretrained on the smoke data in the session home,
    resolved: built here once per run, on one thread as every test runs, so a test that needs it ready, or
    links a second home to it, never pretrains it again."""
    from _helpers import SMOKE

    from cxrfa.config import DEMO_BACKBONES, DataConfig
    from cxrfa.data.load import load_data
    from cxrfa.standins import ensure_standin

    data = DataConfig(demo_n=SMOKE["data.demo_n"], demo_size=SMOKE["data.demo_size"])
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return ensure_standin(DEMO_BACKBONES.backbones["clip"], load_data(data, progress=False))
    finally:
        torch.set_num_threads(before)
