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


def test_formats_come_from_the_reader_registry(tmp_path: Path) -> None:
    """One list of --format names: `data formats` shows the registry, an unknown name is one line (CLI and
    pipeline recipe alike), and a newly registered reader is indexable at once."""
    import pandas as pd
    import pytest

    from cxrfa.data.indexing import index_dataset
    from cxrfa.data.readers import ReadOptions, list_readers, register_reader
    from cxrfa.data.readers.base import _READERS
    from cxrfa.data.readers.generic import read_generic
    from cxrfa.errors import CxrfaError
    from cxrfa.pipeline import load_recipe

    names = [info.name for info in list_readers()]
    assert names == ["nih", "chexpert", "mimic", "csv"]
    shown = runner.invoke(app, ["data", "formats"])
    assert shown.exit_code == 0 and all(name in shown.output for name in names)
    bad = runner.invoke(
        app, ["data", "index", "--format", "dicom", "--root", str(tmp_path), "--out", "m.csv"]
    )
    assert bad.exit_code == 2 and "unknown --format 'dicom'; known: nih, chexpert, mimic, csv" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nmatrix: smoke\ndata: {index: {format: dicom, root: x, out: m.csv}}\n")
    with pytest.raises(CxrfaError, match=r"data.index.format: unknown --format 'dicom'"):
        load_recipe(recipe)

    from PIL import Image

    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    pd.DataFrame({"file": ["a.png"], "pid": ["p1"], "Mass": [1]}).to_csv(
        tmp_path / "l.tsv", sep="\t", index=False
    )

    @register_reader("tsv")
    def _tsv(o: ReadOptions) -> object:
        """Tab-separated labels."""
        frame = pd.read_csv(o.csv, sep="\t")
        frame.to_csv(tmp_path / "as.csv", index=False)
        return read_generic(
            o.root, tmp_path / "as.csv", o.target, {"path": "file", "patient_id": "pid"}, "ignore", "zero"
        )

    try:
        result = index_dataset("tsv", tmp_path, tmp_path / "l.tsv", check_images=False)
        assert result.manifest.frame["Mass"].tolist() == [1.0]
    finally:
        del _READERS["tsv"]
