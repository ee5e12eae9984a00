"""Image loading (8/16-bit gray, RGB, RGBA PNG, JPEG), the manifest Dataset, and augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrfa.data.dataset import CXRDataset, load_image, train_augment
from cxrfa.data.manifest import make_manifest, read_manifest, write_manifest
from cxrfa.errors import CxrfaError

FIXTURES = Path(__file__).parent / "fixtures"


def _gradient(dtype: type, top: int) -> np.ndarray:
    return (np.linspace(0, 1, 16 * 16).reshape(16, 16) * top).astype(dtype)


def test_8bit_gray(tmp_path: Path) -> None:
    Image.fromarray(_gradient(np.uint8, 200), mode="L").save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    arr = np.asarray(img)
    assert img.mode == "RGB" and arr.shape == (16, 16, 3) and arr[..., 0].max() == 200
    assert (arr[..., 0] == arr[..., 1]).all()


@pytest.mark.parametrize(("top", "expected_max"), [(65535, 255), (4095, 255), (2047, 255)])
def test_16bit_gray_is_scaled_by_its_bit_depth(tmp_path: Path, top: int, expected_max: int) -> None:
    data = _gradient(np.uint16, top)
    Image.fromarray(data).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as raw:
        assert raw.mode.startswith("I")  # really stored as 16-bit
    arr = np.asarray(load_image(tmp_path / "g16.png"))[..., 0]
    assert arr.max() == expected_max and arr.min() == 0
    mid = data[8, 8] / top * 255  # linear, not clipped
    assert abs(int(arr[8, 8]) - mid) <= 1.5


def test_16bit_dark_film_stays_dark(tmp_path: Path) -> None:
    data = _gradient(np.uint16, 3000)  # a 12-bit detector: scaled by 4095, not stretched to 255
    Image.fromarray(data).save(tmp_path / "d.png")
    arr = np.asarray(load_image(tmp_path / "d.png"))[..., 0]
    assert 180 <= arr.max() <= 190


def test_rgb_rgba_and_jpeg(tmp_path: Path) -> None:
    rgb = load_image(FIXTURES / "nih" / "images" / "00000001_000.png")  # real NIH image, RGB PNG
    assert rgb.mode == "RGB" and rgb.size == (128, 128)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 120, 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    assert np.asarray(load_image(tmp_path / "a.png")).tolist()[0][0] == [120, 120, 120]
    Image.fromarray(_gradient(np.uint8, 255), mode="L").save(tmp_path / "j.jpg", quality=95)
    jpg = load_image(tmp_path / "j.jpg")
    assert jpg.mode == "RGB" and jpg.size == (16, 16)


def test_missing_and_corrupt_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CxrfaError, match="nope.png: image not found"):
        load_image(tmp_path / "nope.png")
    Image.new("L", (64, 64), 7).save(tmp_path / "t.png")
    (tmp_path / "t.png").write_bytes((tmp_path / "t.png").read_bytes()[:60])
    with pytest.raises(CxrfaError, match="t.png: cannot decode image"):
        load_image(tmp_path / "t.png")
    (tmp_path / "x.jpg").write_text("not an image")
    with pytest.raises(CxrfaError, match="x.jpg"):
        load_image(tmp_path / "x.jpg")


def _manifest(tmp_path: Path) -> object:
    for k in range(3):
        Image.new("L", (20, 20), 50 * k).save(tmp_path / f"{k}.png")
    frame = pd.DataFrame(
        {
            "path": [f"{k}.png" for k in range(3)],
            "patient_id": ["a", "b", "c"],
            "split": ["train"] * 3,
            "domain": ["site-b", "site-a", pd.NA],
            "report": ["Cardiomegaly.", pd.NA, "Clear."],
            "Mass": [1, 0, None],
            "Nodule": [0, 0, 1],
        }
    )
    return make_manifest(frame, tmp_path, ["Mass", "Nodule"], "custom")


def test_dataset_items(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    to_tensor = lambda img: torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1) / 255  # noqa: E731
    ds = CXRDataset(manifest, to_tensor)
    assert len(ds) == 3
    item = ds[1]
    assert item["image"].shape == (3, 20, 20) and abs(float(item["image"].max()) - 50 / 255) < 1e-6
    assert item["labels"].dtype == torch.float32 and item["labels"].tolist() == [0.0, 0.0]
    assert item["index"] == 1 and item["report"] == "" and ds[0]["report"] == "Cardiomegaly."
    assert torch.isnan(ds[2]["labels"][0]) and ds[2]["labels"][1] == 1
    assert [ds[i]["domain"] for i in range(3)] == [2, 1, 0]  # sorted unique: "", site-a, site-b
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 20, 20) and batch["labels"].shape == (2, 2)
    fixed = CXRDataset(manifest, to_tensor, domains=np.array([5, 6, 7]))
    assert fixed[2]["domain"] == 7


def test_a_report_is_a_cell_with_text_in_memory_and_read_back(tmp_path: Path) -> None:
    reports = ["Cardiomegaly.", None, "", "   ", "Effusion.", "No acute disease."]
    frame = pd.DataFrame(
        {
            "path": [f"{k}.png" for k in range(6)],
            "patient_id": [str(k) for k in range(6)],
            "split": "train",
            "report": reports,
            "Mass": 0,
        }
    )
    manifest = make_manifest(frame, tmp_path, ["Mass"], "custom")
    rows = [True, False, False, False, True, True]  # missing, empty and blank are no report
    assert manifest.report_rows().tolist() == rows and manifest.has_reports()
    back = read_manifest(write_manifest(manifest, tmp_path / "m.csv"))
    assert back.report_rows().tolist() == rows
    silent = make_manifest(frame.assign(report=[None, "", " ", None, None, ""]), tmp_path, ["Mass"], "custom")
    assert not silent.has_reports() and not silent.report_rows().any()
    assert not make_manifest(frame.drop(columns="report"), tmp_path, ["Mass"], "custom").has_reports()


def test_train_augment_is_light_and_keeps_laterality(tmp_path: Path) -> None:
    arr = np.zeros((64, 64), np.uint8)
    arr[:, 40:] = 255  # bright right half: a flip would move it left
    img = Image.fromarray(arr, mode="L").convert("RGB")
    augment = train_augment(48)
    torch.manual_seed(0)
    for _ in range(10):
        out = np.asarray(augment(img), dtype=np.float32)[..., 0]
        assert out.shape == (48, 48)
        assert out[:, 32:].mean() > out[:, :16].mean() + 100
