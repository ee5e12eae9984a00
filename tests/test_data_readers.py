"""Format readers on real fixture rows: NIH, CheXpert (uncertainty/blank policies), MIMIC-CXR, generic CSV."""

from __future__ import annotations

import csv
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrfa.data.indexing import index_dataset
from cxrfa.data.manifest import read_manifest, write_manifest
from cxrfa.data.readers import ReadOptions, get_reader, list_readers
from cxrfa.data.splits import overlapping_patients, stratified_patient_split
from cxrfa.labels import CHEXPERT14, NIH14

FIXTURES = Path(__file__).parent / "fixtures"
CHEXPERT_CSV = FIXTURES / "chexpert" / "train.sample.csv"


def test_nih_reader_on_the_real_rows_and_images(tmp_path: Path) -> None:
    root = tmp_path / "nih"
    shutil.copytree(FIXTURES / "nih", root)
    # the original Data_Entry_2017.csv has a trailing comma on every line and ages like 060Y
    text = (root / "Data_Entry_2017_v2020.csv").read_text().splitlines()
    old = [text[0] + ","] + [ln.replace(",57,", ",057Y,") + "," for ln in text[1:]]
    (root / "Data_Entry_2017_v2020.csv").unlink()
    (root / "Data_Entry_2017.csv").write_text("\n".join(old) + "\n")
    result = index_dataset("nih", root, label_set="nih14")
    frame = result.manifest.frame.set_index("path")
    assert list(frame.index) == [f"images/0000000{k}_000.png" for k in (1, 2, 3, 5)]
    assert frame.loc["images/00000001_000.png", "Cardiomegaly"] == 1
    assert frame.loc["images/00000001_000.png", list(NIH14)].sum() == 1
    assert frame.loc["images/00000003_000.png", "Hernia"] == 1
    assert (frame.loc["images/00000002_000.png", list(NIH14)] == 0).all()  # No Finding = all negative
    assert frame.loc["images/00000001_000.png", "age"] == 57
    assert (
        list(frame["sex"]) == ["M", "M", "F", "F"]
        and set(frame["view"]) == {"PA"}
        and set(frame["domain"]) == {"nih"}
    )


def test_nih_official_lists_are_honoured(tmp_path: Path) -> None:
    root = tmp_path / "nih"
    shutil.copytree(FIXTURES / "nih", root)
    (root / "test_list.txt").write_text("00000002_000.png\n")
    (root / "train_val_list.txt").write_text("00000001_000.png\n00000003_000.png\n00000005_000.png\n")
    frame = index_dataset("nih", root).manifest.frame.set_index("path")
    assert frame.loc["images/00000002_000.png", "split"] == "test"
    assert set(frame.drop("images/00000002_000.png")["split"]) <= {"train", "val"}


def test_nih_to_chexpert_labels_leaves_missing_labels_unknown(tmp_path: Path) -> None:
    manifest = index_dataset("nih", FIXTURES / "nih", label_set="chexpert14").manifest
    frame = manifest.frame
    assert frame["Fracture"].isna().all()  # NIH has no fracture label: unknown, never negative
    assert list(frame["No Finding"]) == [0, 1, 0, 1]
    assert list(frame["Cardiomegaly"]) == [1, 0, 0, 0]


def _chexpert_root(tmp_path: Path) -> Path:
    root = tmp_path / "chex"
    with open(CHEXPERT_CSV, newline="") as handle:
        for row in csv.DictReader(handle):
            image = root / row["Path"]
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", (8, 8), 128).save(image, format="JPEG")
    return root


def _expected(policy: str, blank: str, frontal_only: bool) -> dict[str, tuple[int, int, int]]:
    """(positives, negatives, unknown) per CheXpert label, computed with the csv module."""
    value = {
        "1.0": 1,
        "0.0": 0,
        "-1.0": {"ones": 1, "zeros": 0, "ignore": None}[policy],
        "": 0 if blank == "zero" else None,
    }
    counts = {lab: [0, 0, 0] for lab in CHEXPERT14}
    with open(CHEXPERT_CSV, newline="") as handle:
        for row in csv.DictReader(handle):
            if frontal_only and row["Frontal/Lateral"] == "Lateral":
                continue
            for lab in CHEXPERT14:
                v = value[row[lab].strip()]
                counts[lab][2 if v is None else (0 if v == 1 else 1)] += 1
    return {lab: tuple(c) for lab, c in counts.items()}


@pytest.mark.parametrize(
    ("policy", "blank", "frontal_only"),
    [
        ("ones", "zero", False),
        ("zeros", "zero", False),
        ("ignore", "zero", True),
        ("ignore", "unknown", False),
    ],
)
def test_chexpert_policies_match_an_independent_count(
    tmp_path: Path, policy: str, blank: str, frontal_only: bool
) -> None:
    root = _chexpert_root(tmp_path)
    result = index_dataset("chexpert", root, CHEXPERT_CSV, "chexpert14", policy, blank, frontal_only)  # type: ignore[arg-type]
    y = result.manifest.label_matrix()
    expected = _expected(policy, blank, frontal_only)
    for j, lab in enumerate(CHEXPERT14):
        got = (int((y[:, j] == 1).sum()), int((y[:, j] == 0).sum()), int(np.isnan(y[:, j]).sum()))
        assert got == expected[lab], lab
    frame = result.manifest.frame
    assert frame["patient_id"].str.fullmatch(r"patient\d+").all()
    assert overlapping_patients(frame) == {}
    if frontal_only:
        assert result.filtered["lateral view"] > 0 and "LATERAL" not in set(frame["view"])


def test_chexpert_root_may_be_the_dataset_folder_itself(tmp_path: Path) -> None:
    root = _chexpert_root(tmp_path) / "CheXpert-v1.0-small"
    manifest = index_dataset("chexpert", root, CHEXPERT_CSV, "chexpert14").manifest
    assert manifest.frame["path"].iat[0] == "train/patient00001/study1/view1_frontal.jpg"
    assert manifest.image_path(0).is_file()


def test_split_is_by_patient_seeded_and_stratified() -> None:
    rng = np.random.default_rng(0)
    patients = pd.Series(np.repeat(np.arange(300), 3).astype(str))
    y = (rng.random((900, 4)) < [0.3, 0.1, 0.03, 0.01]).astype(float)
    y[:, 3] = np.repeat(np.arange(300) % 30 == 0, 3)  # a rare label: 10 patients
    split = stratified_patient_split(patients, y, seed=1)
    assert (stratified_patient_split(patients, y, seed=1) == split).all()
    assert not (stratified_patient_split(patients, y, seed=2) == split).all()
    frame = pd.DataFrame({"patient_id": patients, "split": split})
    assert overlapping_patients(frame) == {}
    sizes = frame["split"].value_counts(normalize=True)
    assert (
        abs(sizes["train"] - 0.7) < 0.03
        and abs(sizes["val"] - 0.1) < 0.03
        and abs(sizes["test"] - 0.2) < 0.03
    )
    rare = pd.Series(split[y[:, 3] == 1]).value_counts()
    assert set(rare.index) == {"train", "val", "test"}  # the rare label reaches every split


def test_mimic_reader_joins_the_three_files(tmp_path: Path) -> None:
    root = tmp_path / "mimic"
    root.mkdir()
    rows = [
        ("d1", "10000032", "50414267", "PA", "train"),
        ("d2", "10000032", "50414267", "LATERAL", "train"),
        ("d3", "10000764", "57375967", "AP", "validate"),
        ("d4", "10000898", "50771383", "PA", "test"),
    ]
    pd.DataFrame(
        [(d, s, t, v) for d, s, t, v, _ in rows],
        columns=["dicom_id", "subject_id", "study_id", "ViewPosition"],
    ).to_csv(root / "mimic-cxr-2.0.0-metadata.csv", index=False)
    pd.DataFrame(
        [(d, t, s, sp) for d, s, t, _, sp in rows], columns=["dicom_id", "study_id", "subject_id", "split"]
    ).to_csv(root / "mimic-cxr-2.0.0-split.csv", index=False)
    labels = pd.DataFrame(
        {"subject_id": ["10000032", "10000764", "10000898"], "study_id": ["50414267", "57375967", "50771383"]}
    )
    for lab in CHEXPERT14:
        labels[lab] = ""
    labels.loc[0, "Pleural Effusion"], labels.loc[1, "Edema"], labels.loc[2, "Edema"] = "1.0", "-1.0", "0.0"
    labels.to_csv(root / "mimic-cxr-2.0.0-chexpert.csv", index=False)
    for d, s, t, _, _ in rows:
        image = root / f"files/p{s[:2]}/p{s}/s{t}/{d}.jpg"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (16, 16), 90).save(image)
    result = index_dataset("mimic", root, label_set="nih14", uncertain="ones", frontal_only=True)
    frame = result.manifest.frame.set_index("path")
    assert len(frame) == 3 and result.filtered == {"non-frontal view": 1}
    assert frame.loc["files/p10/p10000032/s50414267/d1.jpg", "Effusion"] == 1
    assert frame.loc["files/p10/p10000764/s57375967/d3.jpg", ["Edema", "split"]].tolist() == [1, "val"]
    assert frame["Infiltration"].isna().all()


def test_generic_csv_with_a_column_mapping(tmp_path: Path) -> None:
    root = tmp_path / "site"
    (root / "img").mkdir(parents=True)
    for k in range(6):
        Image.new("L", (16, 16), 40 * k).save(root / "img" / f"{k}.png")
    pd.DataFrame(
        {
            "file": [f"img/{k}.png" for k in range(6)],
            "pid": ["a", "a", "b", "c", "d", "e"],
            "cardio": ["1", "0", "yes", "", "-1", "0"],
            "Mass": ["0"] * 6,
        }
    ).to_csv(root / "labels.csv", index=False)
    result = index_dataset(
        "csv",
        root,
        root / "labels.csv",
        "nih14",
        uncertain="zeros",
        blank="unknown",
        columns={"path": "file", "patient_id": "pid", "Cardiomegaly": "cardio", "Mass": "Mass"},
    )
    frame = result.manifest.frame
    assert frame["Cardiomegaly"].tolist()[:3] == [1, 0, 1] and np.isnan(frame["Cardiomegaly"].iat[3])
    assert frame["Cardiomegaly"].iat[4] == 0 and frame["Effusion"].isna().all() and (frame["Mass"] == 0).all()
    assert set(frame["domain"]) == {"labels"}
    write_manifest(result.manifest, tmp_path / "m.csv")
    back = read_manifest(tmp_path / "m.csv")
    assert back.image_path(0).is_file() and back.data_hash() == result.manifest.data_hash()


def test_chexpert_valid_csv_becomes_the_test_split(tmp_path: Path) -> None:
    root = _chexpert_root(tmp_path)
    lines = CHEXPERT_CSV.read_text().splitlines()
    (root / "train.csv").write_text("\n".join(lines[:301]) + "\n")
    (root / "valid.csv").write_text("\n".join([lines[0], *lines[301:]]) + "\n")
    frame = index_dataset("chexpert", root, label_set="chexpert14").manifest.frame
    assert len(frame) == 500
    valid_paths = {ln.split(",")[0] for ln in lines[301:]}
    assert set(frame.loc[frame["split"] == "test", "path"]) == valid_paths
    assert set(frame.loc[~frame["path"].isin(valid_paths), "split"]) == {"train", "val"}


def test_generic_csv_mapping_one_label_keeps_the_columns_named_like_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "site"
    (root / "img").mkdir(parents=True)
    for k in range(4):
        Image.new("L", (16, 16), 40 * k).save(root / "img" / f"{k}.png")
    pd.DataFrame(
        {
            "file": [f"img/{k}.png" for k in range(4)],
            "pid": ["a", "b", "c", "d"],
            "cardio": ["1", "0", "0", "1"],
            "Mass": ["0", "1", "0", "0"],
            "Pleural Effusion": ["1", "1", "0", ""],
            "Covid": ["0"] * 4,
        }
    ).to_csv(root / "labels.csv", index=False)
    with caplog.at_level(logging.INFO, logger="cxrfa.data.readers.generic"):
        result = index_dataset(
            "csv",
            root,
            root / "labels.csv",
            "nih14",
            blank="unknown",
            columns={"path": "file", "patient_id": "pid", "Cardiomegaly": "cardio"},
        )
    assert (
        "label column(s) matched by name besides --columns: Effusion=Pleural Effusion, Mass=Mass"
        in caplog.text
    )
    assert "column(s) ignored (not a label of the label set, not a meta key): Covid" in caplog.text
    frame = result.manifest.frame.set_index("path")
    assert frame["Cardiomegaly"].tolist() == [1, 0, 0, 1]
    assert frame["Mass"].tolist() == [0, 1, 0, 0]  # named like the label: kept, not silently unknown
    assert frame["Effusion"].tolist()[:3] == [1, 1, 0] and np.isnan(frame["Effusion"].iat[3])  # via synonym
    assert frame["Nodule"].isna().all()  # not in the CSV: unknown


# Raw label cells and what every reader must make of them: 1, 0, or the uncertain / blank policy; "bad" cells
# make a bad row. The same tokens go through each reader that reads a value per label.
TOKENS: dict[str, int | str] = {
    "1.0": 1,
    "1": 1,
    " 1 ": 1,
    "1.00": 1,
    "true": 1,
    "Yes": 1,
    "0.0": 0,
    "0": 0,
    "FALSE": 0,
    "no": 0,
    "-1.0": "uncertain",
    "-1": "uncertain",
    "": "blank",
    "nan": "blank",
    "NaN": "blank",
    "None": "blank",
    "NONE": "blank",
    "<NA>": "blank",
    "NA": "blank",
    "null": "blank",
    "2": "bad",
    "x": "bad",
    "maybe": "bad",
}


def _token_rows() -> pd.DataFrame:
    """Real CheXpert fixture rows (their own 1.0/0.0/-1.0/blank cells kept), one token each in Cardiomegaly."""
    rows = pd.read_csv(CHEXPERT_CSV, dtype=str, keep_default_na=False).head(len(TOKENS))
    rows["Cardiomegaly"] = list(TOKENS)
    return rows


def _as_chexpert(rows: pd.DataFrame, root: Path) -> ReadOptions:
    rows.to_csv(root / "train.csv", index=False)
    return ReadOptions(root, root / "train.csv", list(CHEXPERT14))


def _as_mimic(rows: pd.DataFrame, root: Path) -> ReadOptions:
    ids = pd.DataFrame(
        {
            "dicom_id": [f"d{k}" for k in range(len(rows))],
            "subject_id": [str(10000000 + k) for k in range(len(rows))],
            "study_id": [str(50000000 + k) for k in range(len(rows))],
        }
    )
    ids.assign(ViewPosition="PA").to_csv(root / "mimic-cxr-2.0.0-metadata.csv", index=False)
    ids.assign(split="train").to_csv(root / "mimic-cxr-2.0.0-split.csv", index=False)
    labels = pd.concat([ids[["subject_id", "study_id"]], rows[list(CHEXPERT14)]], axis=1)
    labels.to_csv(root / "mimic-cxr-2.0.0-chexpert.csv", index=False)
    return ReadOptions(root, None, list(CHEXPERT14))


def _as_csv(rows: pd.DataFrame, root: Path) -> ReadOptions:
    rows.assign(pid=[f"p{k}" for k in range(len(rows))]).to_csv(root / "labels.csv", index=False)
    return ReadOptions(
        root, root / "labels.csv", list(CHEXPERT14), columns={"path": "Path", "patient_id": "pid"}
    )


# Every reader whose source has a value per label; NIH lists finding names instead (no value cells to parse).
VALUE_READERS = {"chexpert": _as_chexpert, "mimic": _as_mimic, "csv": _as_csv}


@pytest.mark.parametrize(("uncertain", "blank"), [("ones", "zero"), ("zeros", "unknown"), ("ignore", "zero")])
def test_every_reader_reads_the_same_label_tokens_alike(tmp_path: Path, uncertain: str, blank: str) -> None:
    assert {info.name for info in list_readers()} == {*VALUE_READERS, "nih"}  # a new reader joins this test
    rows = _token_rows()
    matrices, bad_lines = {}, {}
    for name, build in VALUE_READERS.items():
        (tmp_path / name).mkdir()
        options = replace(build(rows, tmp_path / name), uncertain=uncertain, blank=blank)  # type: ignore[arg-type]
        table = get_reader(name).read(options)
        matrices[name] = table.frame[list(CHEXPERT14)].to_numpy(dtype=np.float32)  # (N, 14), in row order
        bad_lines[name] = [row.line for row in table.bad]
        assert all("'Cardiomegaly'" in row.problem for row in table.bad), table.bad
    policy = {"uncertain": {"ones": 1, "zeros": 0, "ignore": None}[uncertain]}
    policy["blank"] = 0 if blank == "zero" else None
    expected = [policy.get(v, v) if v != "bad" else None for v in TOKENS.values()]  # type: ignore[call-overload]
    lines = [k + 2 for k, v in enumerate(TOKENS.values()) if v == "bad"]
    for name, y in matrices.items():
        got = [None if np.isnan(v) else int(v) for v in y[:, CHEXPERT14.index("Cardiomegaly")]]
        assert got == expected, name
        assert bad_lines[name] == lines, name
        np.testing.assert_array_equal(y, matrices["chexpert"], err_msg=name)  # the real cells too
