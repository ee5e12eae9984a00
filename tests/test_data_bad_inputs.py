"""Every kind of bad input is one error line naming file, row and problem; exit 2; no manifest left behind."""

from __future__ import annotations

import os
import shutil
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result
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


def _nan_patient(root: Path) -> None:
    # pandas reads "NaN" back as missing: a manifest holding it would be refused by every later command
    _edit_csv(root, lambda lines: [lines[0], lines[1].replace(",0,1,57,", ",0,NaN,57,"), *lines[2:]])


def _fifo_image(root: Path) -> None:
    path = root / "images" / "00000003_000.png"
    path.unlink()
    os.mkfifo(path)  # opening it would block until someone writes: it must never be opened


CASES = {
    "missing image": (_missing_image, ("row 4", "image not found", "00000003_000.png")),
    "truncated image": (_truncated_image, ("row 3", "cannot decode image", "00000002_000.png")),
    "malformed csv": (_malformed, (ENTRY, "malformed CSV")),
    "missing column": (_missing_column, (ENTRY, "missing column", "'Patient ID'")),
    "unknown label": (_unknown_label, (ENTRY, "row 4", "unknown label 'Pneumonitis'")),
    "duplicate row": (_duplicate, (ENTRY, "row 6", "duplicate row", "row 2")),
    "path escapes root": (_escaping, (ENTRY, "row 5", "escapes the dataset root")),
    "no patient id": (_nan_patient, (ENTRY, "row 2", "patient id 'NaN' reads as missing")),
    "not a regular file": (_fifo_image, (ENTRY, "row 4", "named pipe (FIFO)", "00000003_000.png")),
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
    "case",
    [
        "missing image",
        "truncated image",
        "unknown label",
        "duplicate row",
        "path escapes root",
        "no patient id",
        "not a regular file",
    ],
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
    args = ["data", "index", "--format", "csv", "--root", str(tmp_path), "--csv", str(tmp_path / "l.csv")]
    result = runner.invoke(app, [*args, "--out", str(out), "--frontal-only"])
    assert result.exit_code == 2 and "1 non-frontal view" in result.output and not out.exists()


def test_generic_csv_unknown_label_in_mapping(tmp_path: Path) -> None:
    (tmp_path / "l.csv").write_text("path,patient_id,x\na.png,p1,1\n")
    args = ["data", "index", "--format", "csv", "--root", str(tmp_path), "--csv", str(tmp_path / "l.csv")]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "m.csv"), "--columns", "Pneumonitis=x"])
    assert result.exit_code == 2 and "unknown label 'Pneumonitis'" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_semicolon_separated_csv_names_the_separator_not_internal_columns(tmp_path: Path) -> None:
    (tmp_path / "l.csv").write_text("path;patient_id;Mass\na.png;p1;1\n")
    args = ["data", "index", "--format", "csv", "--root", str(tmp_path), "--csv", str(tmp_path / "l.csv")]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "m.csv")])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert "found: path;patient_id;Mass (" in line and "separated by ';'" in line, line
    assert "_file" not in line and "_line" not in line


def test_a_fifo_as_the_label_csv_or_manifest_is_refused_unopened(workdir: Path) -> None:
    tmp_path = workdir
    fifo = tmp_path / "l.csv"
    os.mkfifo(fifo)  # opening it would block this test forever
    args = ["data", "index", "--format", "csv", "--root", str(tmp_path), "--csv", str(fifo)]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "m.csv")])
    assert result.exit_code == 2 and "named pipe (FIFO)" in result.output, result.output
    result = runner.invoke(app, ["train", "-m", "smoke", "--cell", "visual-clip", "--data", str(fifo)])
    assert result.exit_code == 2 and "named pipe (FIFO)" in result.output, result.output
    assert not (workdir / "mlruns").exists()  # refused in preflight, before any run


# ---------------------------------------------------------------------------------------------------------
# images too large to decode, paths that leave the root, manifests checked when read


def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` pixels (a few bytes on disk: a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _index(root: Path, out: Path, *extra: str) -> Result:
    return runner.invoke(
        app, ["data", "index", "--format", "nih", "--root", str(root), "--out", str(out), *extra]
    )


def test_huge_image_header_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    root = _nih(tmp_path)
    _png_header(root / "images" / "00000002_000.png", 100_000, 100_000)
    result = _index(root, tmp_path / "m.csv")
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(
        f"error: {ENTRY}: row 3: image has 10,000,000,000 pixels, over the 89,478,485-pixel"
    )
    assert str(root / "images" / "00000002_000.png") in line
    skipped = _index(root, tmp_path / "m.csv", "--skip-bad")
    assert skipped.exit_code == 0, skipped.output
    assert (
        "dropped 1 bad row(s): 1 image too large" in skipped.output and "00000002_000.png" in skipped.output
    )
    assert "00000002_000.png" not in (tmp_path / "m.csv").read_text()


def test_image_over_the_pixel_limit_but_under_pils_error_is_refused_too(tmp_path: Path) -> None:
    from cxrfa.data.dataset import load_image
    from cxrfa.errors import CxrfaError

    path = tmp_path / "big.png"
    _png_header(path, 10_000, 10_000)  # 100 M pixels: PIL only warns
    with (
        pytest.warns(Image.DecompressionBombWarning),
        pytest.raises(CxrfaError, match=rf"^{path}: image is 10000x10000 pixels"),
    ):
        load_image(path)
    _png_header(path, 100_000, 100_000)
    with pytest.raises(CxrfaError, match=rf"^{path}: image has 10,000,000,000 pixels"):
        load_image(path)


def _manifest(tmp_path: Path) -> Path:
    out = tmp_path / "data" / "m.csv"
    assert _index(_nih(tmp_path), out).exit_code == 0
    return out


def _stats(manifest: Path) -> Result:
    return runner.invoke(app, ["data", "stats", str(manifest)])


MANIFEST_CASES = {
    "dotdot": (("images/00000001_000.png", "../x.png"), "row 1 (line 3): column 'path' has '../x.png'"),
    "absolute": (
        ("images/00000001_000.png", "/etc/passwd"),
        "row 1 (line 3): column 'path' has '/etc/passwd'",
    ),
    "root /": (('"root": "../nih"', '"root": "/"'), "line 1: header root '/' is the file-system root"),
}


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_manifest_leaving_its_root_exits_2_with_one_line(tmp_path: Path, case: str) -> None:
    manifest = _manifest(tmp_path)
    (old, new), needle = MANIFEST_CASES[case]
    text = manifest.read_text()
    assert old in text
    manifest.write_text(text.replace(old, new, 1))
    result = _stats(manifest)
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: {manifest}: {needle}"), line


@pytest.mark.parametrize("value", ["-1", "2", "x", "0.5"])
def test_manifest_label_outside_0_1_blank_names_file_row_and_column(tmp_path: Path, value: str) -> None:
    manifest = _manifest(tmp_path)
    lines = manifest.read_text().splitlines()
    header = lines[1].split(",")
    col = header.index("Hernia")
    row = lines[4].split(",")  # the 3rd row
    row[col] = value
    manifest.write_text("\n".join([*lines[:4], ",".join(row), *lines[5:]]) + "\n")
    result = _stats(manifest)
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(
        f"error: {manifest}: row 3 (line 5): column 'Hernia' has '{value}'; labels must be 1, 0"
    )


def test_manifest_blank_and_float_labels_are_read(tmp_path: Path) -> None:
    from cxrfa.data.manifest import read_manifest

    manifest = _manifest(tmp_path)
    lines = manifest.read_text().splitlines()
    col = lines[1].split(",").index("Hernia")
    rows = [ln.split(",") for ln in lines[2:4]]
    rows[0][col], rows[1][col] = "", "1.0"
    manifest.write_text("\n".join([*lines[:2], *(",".join(r) for r in rows), *lines[4:]]) + "\n")
    hernia = read_manifest(manifest).frame["Hernia"]
    assert np.isnan(hernia.iat[0]) and hernia.iat[1] == 1


def test_bad_manifest_stops_an_ablation_before_any_run(workdir: Path) -> None:
    manifest = _manifest(workdir)
    manifest.write_text(manifest.read_text().replace("images/00000001_000.png", "../x.png", 1))
    result = runner.invoke(app, ["ablate", "-m", "smoke", "--data", str(manifest)])
    assert result.exit_code == 2, result.output
    assert (
        result.output.strip().splitlines()[-1].startswith(f"error: {manifest}: row 1 (line 3): column 'path'")
    )
    assert not (workdir / "mlruns").exists()  # failed before the store was even opened: no run, no parent


def test_symlink_out_of_the_root_is_never_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cxrfa.data.dataset as dataset_mod
    from cxrfa.data.manifest import read_manifest
    from cxrfa.errors import CxrfaError

    manifest = _manifest(tmp_path)
    outside = tmp_path / "secret.png"
    Image.new("L", (8, 8)).save(outside)
    link = tmp_path / "nih" / "images" / "00000003_000.png"
    link.unlink()
    link.symlink_to(outside)
    opened: list[Path] = []
    real_open = dataset_mod.Image.open
    monkeypatch.setattr(
        dataset_mod.Image, "open", lambda p, *a, **k: opened.append(Path(p)) or real_open(p, *a, **k)
    )
    m = read_manifest(manifest)
    ds = dataset_mod.CXRDataset(m, lambda img: img)
    row = list(m.frame["path"]).index("images/00000003_000.png")
    with pytest.raises(
        CxrfaError, match=rf"^{manifest}: path 'images/00000003_000.png' leads outside the image root"
    ):
        ds[row]
    assert outside not in [p.resolve() for p in opened]
    assert ds[(row + 1) % len(ds)]["report"] == "" and opened  # an ordinary row still loads
    # data index refuses it too (and --skip-bad drops it)
    result = _index(tmp_path / "nih", tmp_path / "again.csv")
    assert result.exit_code == 2 and "escapes the dataset root through a symlink" in result.output
    assert "1 path escapes root" in _index(tmp_path / "nih", tmp_path / "again.csv", "--skip-bad").output


def test_huge_image_met_in_a_loader_worker_is_still_one_line(tmp_path: Path) -> None:
    import torch

    from cxrfa.cli._common import one_line
    from cxrfa.data.dataset import CXRDataset
    from cxrfa.data.manifest import read_manifest
    from cxrfa.errors import CxrfaError

    manifest = _manifest(tmp_path)
    image = tmp_path / "nih" / "images" / "00000002_000.png"
    _png_header(image, 100_000, 100_000)  # replaced after indexing: met only when training reads it
    loader = torch.utils.data.DataLoader(CXRDataset(read_manifest(manifest), lambda img: 0), num_workers=1)
    with pytest.raises(CxrfaError) as err:
        list(loader)
    assert "\n" in str(err.value)  # the worker's traceback, folded into the message by the DataLoader
    assert one_line(str(err.value)) == (
        f"{image.resolve()}: image has 10,000,000,000 pixels, over the 89,478,485-pixel limit "
        "(a decompression bomb?); remove the row or downscale the image"
    )


def test_confinement_resolves_symlinked_folders_too(tmp_path: Path) -> None:
    from cxrfa.data.manifest import confined
    from cxrfa.errors import CxrfaError

    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "real").mkdir(parents=True)
    outside.mkdir()
    (root / "inside").symlink_to(root / "real")  # a link that stays inside: fine
    (root / "away").symlink_to(outside)  # a folder link that leaves: refused, whatever the file
    folders: dict[str, str] = {}
    assert confined(root, "inside/a.png", folders=folders) == root / "real" / "a.png"
    assert confined(root, "real/sub/../a.png", folders=folders) == root / "real" / "a.png"
    for rel in ("away/a.png", "real/../away/a.png"):
        with pytest.raises(
            CxrfaError, match=rf"path '{rel}' leads outside the image root {root} \(a symlink to"
        ):
            confined(root, rel, folders=folders)
