"""Every kind of bad input is one error line naming file, row and problem; exit 2; no manifest left behind."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from cxrfa.cli import app

FIXTURES = Path(__file__).parent / "fixtures"
runner = CliRunner()
ENTRY = "Data_Entry_2017_v2020.csv"


def _nih(tmp_path: Path) -> Path:
    root = tmp_path / "nih"
    shutil.copytree(FIXTURES / "nih", root)
    return root


def _edit_csv(root: Path, edit: Callable[[list[str]], list[str]]) -> None:
    path = root / ENTRY
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")


def _missing_image(root: Path) -> None:
    (root / "images" / "00000003_000.png").unlink()


def _truncated_image(root: Path) -> None:
    path = root / "images" / "00000002_000.png"
    path.write_bytes(path.read_bytes()[:200])


def _malformed(root: Path) -> None:
    _edit_csv(root, lambda lines: [*lines[:2], lines[2] + ',extra,"unterminated', *lines[3:]])


def _missing_column(root: Path) -> None:
    _edit_csv(root, lambda lines: [ln.replace("Patient ID", "Patient") for ln in lines])


def _unknown_label(root: Path) -> None:
    _edit_csv(root, lambda lines: [*lines[:3], lines[3].replace("Hernia", "Hernia|Pneumonitis"), *lines[4:]])


def _duplicate(root: Path) -> None:
    _edit_csv(root, lambda lines: [*lines, lines[1]])


def _escaping(root: Path) -> None:
    _edit_csv(
        root, lambda lines: [*lines[:4], lines[4].replace("00000005_000.png", "../../etc/passwd.png", 1)]
    )


CASES = {
    "missing image": (_missing_image, ("row 4", "image not found", "00000003_000.png")),
    "truncated image": (_truncated_image, ("row 3", "cannot decode image", "00000002_000.png")),
    "malformed csv": (_malformed, (ENTRY, "malformed CSV")),
    "missing column": (_missing_column, (ENTRY, "missing column", "'Patient ID'")),
    "unknown label": (_unknown_label, (ENTRY, "row 4", "unknown label 'Pneumonitis'")),
    "duplicate row": (_duplicate, (ENTRY, "row 6", "duplicate row", "row 2")),
    "path escapes root": (_escaping, (ENTRY, "row 5", "escapes the dataset root")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_with_exit_2_and_no_manifest(tmp_path: Path, case: str) -> None:
    root = _nih(tmp_path)
    damage, needles = CASES[case]
    damage(root)
    out = tmp_path / "out" / "manifest.csv"
    result = runner.invoke(app, ["data", "index", "--format", "nih", "--root", str(root), "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not out.parent.exists() or not any(out.parent.iterdir())


@pytest.mark.parametrize(
    "case", ["missing image", "truncated image", "unknown label", "duplicate row", "path escapes root"]
)
def test_skip_bad_drops_the_rows_and_reports_why(tmp_path: Path, case: str) -> None:
    root = _nih(tmp_path)
    CASES[case][0](root)
    out = tmp_path / "manifest.csv"
    result = runner.invoke(
        app, ["data", "index", "--format", "nih", "--root", str(root), "--out", str(out), "--skip-bad"]
    )
    assert result.exit_code == 0, result.output
    assert "dropped 1 row(s): 1 " + case.replace("truncated", "corrupt") in result.output
    kept = 4 if case == "duplicate row" else 3  # a duplicate's first row stays
    assert out.is_file() and len(out.read_text().splitlines()) == 2 + kept


def test_empty_dataset_after_filtering_is_an_error(tmp_path: Path) -> None:
    root = _nih(tmp_path)
    for png in (root / "images").glob("*.png"):
        png.unlink()
    out = tmp_path / "manifest.csv"
    result = runner.invoke(
        app, ["data", "index", "--format", "nih", "--root", str(root), "--out", str(out), "--skip-bad"]
    )
    assert result.exit_code == 2
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: ") and "no usable images left" in last and "4 missing image" in last
    assert not out.exists()


def test_frontal_only_can_empty_a_generic_dataset(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"")
    Image.new("L", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "l.csv").write_text("path,patient_id,view,Mass\na.png,p1,LL,1\n")
    out = tmp_path / "m.csv"
    result = runner.invoke(app, ["data", "index", "--format", "csv", "--root", str(tmp_path), "--csv", str(tmp_path / "l.csv"),
                                 "--out", str(out), "--frontal-only"])  # fmt: skip
    assert result.exit_code == 2 and "1 non-frontal view" in result.output and not out.exists()


def test_generic_csv_unknown_label_in_mapping(tmp_path: Path) -> None:
    (tmp_path / "l.csv").write_text("path,patient_id,x\na.png,p1,1\n")
    result = runner.invoke(app, ["data", "index", "--format", "csv", "--root", str(tmp_path), "--csv", str(tmp_path / "l.csv"),
                                 "--out", str(tmp_path / "m.csv"), "--columns", "Pneumonitis=x"])  # fmt: skip
    assert result.exit_code == 2 and "unknown label 'Pneumonitis'" in result.output
    assert len(result.output.strip().splitlines()) == 1
