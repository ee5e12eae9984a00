"""A source split that puts one patient in two splits is re-split by patient when a run reads it (one log line
with the count); ``data.keep_source_split: true`` keeps it, with the leak warning."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from cxrfa.config import DataConfig, RunConfig
from cxrfa.data.load import load_data
from cxrfa.data.manifest import make_manifest, write_manifest
from cxrfa.data.splits import overlapping_patients

LABELS = ["A", "B"]


def _manifest(tmp_path: Path, rows: list[tuple[str, str]]) -> Path:
    """One image per (patient, split) row."""
    frame = pd.DataFrame(
        {
            "path": [f"img{i}.png" for i in range(len(rows))],
            "patient_id": [p for p, _ in rows],
            "split": [s for _, s in rows],
            "A": [i % 2 for i in range(len(rows))],
            "B": [(i // 2) % 2 for i in range(len(rows))],
        }
    )
    return write_manifest(make_manifest(frame, tmp_path, LABELS, "custom"), tmp_path / "m.csv")


LEAKY = [
    ("p1", "train"), ("p1", "train"), ("p1", "test"),  # most of p1 in train
    ("p2", "val"), ("p2", "test"),  # a tie: the evaluation side keeps it (test)
    ("p3", "train"), ("p4", "val"), ("p5", "test"),
]  # fmt: skip


def test_a_leaking_source_split_is_resplit_by_patient_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _manifest(tmp_path, LEAKY)
    with caplog.at_level(logging.INFO, logger="cxrfa"):
        manifest = load_data(DataConfig(manifest=str(path)))
    assert overlapping_patients(manifest.frame) == {}
    split = dict(zip(manifest.frame["path"], manifest.frame["split"], strict=True))
    assert [split[f"img{i}.png"] for i in range(8)] == ["train"] * 3 + ["test"] * 2 + ["train", "val", "test"]
    lines = [r.getMessage() for r in caplog.records if "split" in r.getMessage()]
    assert len(lines) == 1 and "2 patient(s)" in lines[0] and "keep_source_split" in lines[0], lines
    assert str(path) in lines[0]


def test_keep_source_split_keeps_it_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _manifest(tmp_path, LEAKY)
    with caplog.at_level(logging.INFO, logger="cxrfa"):
        manifest = load_data(DataConfig(manifest=str(path), keep_source_split=True))
    assert set(overlapping_patients(manifest.frame)) == {"p1", "p2"}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2 patient(s)" in warnings[0].getMessage()


def test_a_clean_split_is_untouched_and_the_switch_leaves_config_hashes_alone(tmp_path: Path) -> None:
    path = _manifest(tmp_path, [("p1", "train"), ("p1", "train"), ("p2", "val"), ("p3", "test")])
    before = pd.read_csv(path, comment="#")
    assert load_data(DataConfig(manifest=str(path))).frame["split"].tolist() == before["split"].tolist()
    assert "keep_source_split" not in DataConfig().model_dump()  # existing runs keep their config hashes
    model = {"visual": {"name": "clip", "arch": "x"}}
    kept = RunConfig(model=model, data=DataConfig(keep_source_split=True))  # type: ignore[arg-type]
    assert kept.config_hash() != RunConfig(model=model).config_hash()  # type: ignore[arg-type]
