"""``cxrfa data synth | index | stats`` end to end through the CLI."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from cxrfa.cli import app
from cxrfa.data.manifest import read_manifest, write_manifest
from cxrfa.labels import NIH14

runner = CliRunner()


def test_synth_then_index_the_nih_layout_then_stats(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    result = runner.invoke(
        app, ["data", "synth", "--out", str(out), "--n", "60", "--size", "32", "--seed", "1", "--nih-layout"]
    )
    assert result.exit_code == 0, result.output
    synth = read_manifest(out / "manifest.csv")
    assert len(synth) == 60
    indexed = tmp_path / "nih.csv"
    result = runner.invoke(
        app, ["data", "index", "--format", "nih", "--root", str(out), "--out", str(indexed)]
    )
    assert result.exit_code == 0, result.output
    assert "60 images" in result.output
    nih = read_manifest(indexed)
    # the NIH reader recovers the generator's labels, and keeps its test split (test_list.txt)
    a = synth.frame.set_index("path")[list(NIH14)].sort_index()
    b = nih.frame.set_index("path")[list(NIH14)].sort_index()
    assert (a.to_numpy() == b.to_numpy()).all()
    assert (
        synth.frame.set_index("path")["split"].eq("test") == nih.frame.set_index("path")["split"].eq("test")
    ).all()
    result = runner.invoke(app, ["data", "stats", str(indexed)])
    assert result.exit_code == 0, result.output
    for needle in (
        "Infiltration",
        "head",
        "patients",
        "subgroup: view",
        "subgroup: age",
        "no patient appears in more than one split",
    ):
        assert needle in result.output, needle


def test_stats_reports_patient_leakage(tmp_path: Path) -> None:
    runner.invoke(app, ["data", "synth", "--out", str(tmp_path), "--n", "20", "--size", "32"])
    manifest = read_manifest(tmp_path / "manifest.csv")
    frame = manifest.frame
    pid = frame.groupby("patient_id").size().idxmax()  # a patient with several films
    rows = frame.index[frame["patient_id"] == pid]
    frame.loc[rows[0], "split"], frame.loc[rows[1:], "split"] = "train", "test"
    write_manifest(manifest, tmp_path / "leaky.csv")
    result = runner.invoke(app, ["data", "stats", str(tmp_path / "leaky.csv")])
    assert result.exit_code == 0
    assert "leakage: 1 patient(s) appear in more than one split" in result.output and pid in result.output


def test_stats_on_a_missing_manifest_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "stats", str(tmp_path / "none.csv")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
