"""Label fractions: nested, patient-level, data-determined subsets that keep the rare labels; a matrix crossed
with fractions; the smoke ablation at three fractions and its data-efficiency curve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from cxrfa.cli import app
from cxrfa.compare import compare
from cxrfa.compare.efficiency import efficiency_figure, efficiency_table
from cxrfa.compare.report import write_report
from cxrfa.config import DEMO_BACKBONES, expand, load_matrix, split_fraction
from cxrfa.data.fractions import TAG_SUBSET_HASH, patient_order, subsample_train
from cxrfa.data.manifest import Manifest, make_manifest
from cxrfa.errors import CxrfaError
from cxrfa.prompts import TAG_PROMPTS, TAG_PROMPTS_HASH, load_prompt_set
from cxrfa.tracking import TAG_CELL, TAG_CELLS, TAG_DATA_HASH, Tracker

runner = CliRunner()
LABELS = ["Common", "Medium", "Rare", "Rarer", "Single"]
PREVALENCE = [0.4, 0.1, 0.03, 0.01, 0.0]  # per image; `Single` gets exactly one positive patient below
FRACTIONS = [0.01, 0.05, 0.1, 0.3, 1.0]


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    """400 train patients with 1-3 images each (labels per image), plus val and test patients."""
    rng = np.random.default_rng(7)
    rows = []
    for p in range(480):
        split = "train" if p < 400 else ("val" if p < 440 else "test")
        for k in range(int(rng.integers(1, 4))):
            labels = {lab: float(rng.random() < prev) for lab, prev in zip(LABELS, PREVALENCE, strict=True)}
            labels["Medium"] = np.nan if rng.random() < 0.05 else labels["Medium"]  # some unknowns
            rows.append({"path": f"img/{p}_{k}.png", "patient_id": f"P{p:04d}", "split": split, **labels})
    rows[37]["Single"] = 1.0  # one positive image of one train patient
    return make_manifest(pd.DataFrame(rows), "/data", LABELS, "custom")


def _train_patients(m: Manifest) -> set[str]:
    return set(m.frame.loc[m.frame["split"] == "train", "patient_id"])


def test_fractions_are_nested_patient_level_and_keep_the_rare_labels(manifest: Manifest) -> None:
    subsets = [subsample_train(manifest, f) for f in FRACTIONS]
    kept = [_train_patients(s.manifest) for s in subsets]
    for small, large in zip(kept, kept[1:], strict=False):
        assert small < large  # nested, strictly growing
    all_train = manifest.frame[manifest.frame["split"] == "train"]
    for subset, patients in zip(subsets, kept, strict=True):
        frame = subset.manifest.frame
        # patient-level: a kept patient keeps every train image, a dropped one none
        train = frame[frame["split"] == "train"]
        assert set(train["path"]) == set(all_train.loc[all_train["patient_id"].isin(patients), "path"])
        # val and test never shrink, and rows keep their order
        for split in ("val", "test"):
            pd.testing.assert_frame_equal(subset.manifest.split(split).frame, manifest.split(split).frame)
        assert subset.patients == len(patients) and subset.images == len(train)
        # every label with a positive in the split keeps one, at any fraction
        for lab in LABELS:
            assert (train[lab] == 1).sum() >= 1
            assert subset.positives[lab] == int((train[lab] == 1).sum())
        metrics = subset.metrics()
        assert metrics["data/train_size"] == len(train)
        assert metrics["data/train_positives/Single"] == 1.0
    assert len(kept[1]) == 20 and len(kept[2]) == 40 and len(kept[-1]) == 400
    assert subsample_train(manifest, 0.07).patients == 28  # 0.07 x 400 = 28.000000000000004 in floating point
    assert subsets[-1].manifest is manifest  # fraction 1: the manifest itself
    assert len({s.subset_hash for s in subsets}) == len(FRACTIONS)


def test_the_subset_depends_on_the_data_only(manifest: Manifest) -> None:
    np.random.seed(1)
    first = subsample_train(manifest, 0.1)
    np.random.seed(2)
    again = subsample_train(manifest, 0.1)
    assert first.subset_hash == again.subset_hash
    # the same rows in another order are another manifest (another data hash), so another draw
    shuffled = Manifest(manifest.frame.iloc[::-1].reset_index(drop=True), manifest.root, LABELS, "custom")
    assert patient_order(shuffled) != patient_order(manifest)
    assert set(patient_order(shuffled)) == set(patient_order(manifest)) == _train_patients(manifest)


def test_a_prefix_keeps_the_label_mix(manifest: Manifest) -> None:
    """Each stratum (a patient's rarest positive label) is kept in proportion to its size at every fraction."""
    order = patient_order(manifest)
    train = manifest.frame[manifest.frame["split"] == "train"]
    pos = train[LABELS].eq(1).groupby(train["patient_id"]).any()
    counts = pos.sum()
    rarest = pos.apply(
        lambda row: min((counts[lab], lab) for lab in LABELS if row[lab])[1] if row.any() else "-", axis=1
    )
    sizes = rarest.value_counts()
    for n in (40, 120, 200):
        got = rarest.loc[order[:n]].value_counts().reindex(sizes.index, fill_value=0)
        expected = sizes * n / len(order)
        assert (np.abs(got - expected) <= 2).all(), (n, got.to_dict(), expected.to_dict())


def test_a_bad_fraction_is_one_line(manifest: Manifest, tmp_path: Path) -> None:
    with pytest.raises(CxrfaError, match=r"label_fraction=0.0: expected a fraction in \(0, 1\]"):
        subsample_train(manifest, 0.0)
    path = tmp_path / "m.yaml"
    path.write_text(
        yaml.safe_dump({"name": "m", "cells": {"a": {"model": {"visual": "clip"}}}, "fractions": [0.1, 1.5]})
    )
    with pytest.raises(CxrfaError, match=r"m.yaml: fractions: .*1.5 is not a fraction"):
        load_matrix(str(path))


def test_a_matrix_with_fractions_crosses_every_cell(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    raw = {
        "name": "m",
        "seeds": [0, 1],
        "fractions": [0.01, 0.1, 1.0],
        "cells": {"a": {"model": {"visual": "clip"}}, "b": {"model": {"visual": "custom"}}},
    }
    path.write_text(yaml.safe_dump(raw))
    runs = expand(load_matrix(str(path)), DEMO_BACKBONES)
    assert [r.cell for r in runs[::2]] == ["a@0.01", "a@0.1", "a@1", "b@0.01", "b@0.1", "b@1"]
    assert {(r.cell, r.seed, r.train.label_fraction, r.axes["fraction"]) for r in runs[:2]} == {
        ("a@0.01", 0, 0.01, "0.01"),
        ("a@0.01", 1, 0.01, "0.01"),
    }
    assert split_fraction("a@0.01") == ("a", 0.01) and split_fraction("plain") == ("plain", None)
    # --fractions replaces the file's list
    assert [r.cell for r in expand(load_matrix(str(path)), DEMO_BACKBONES, seeds=[0], fractions=[0.5])] == [
        "a@0.5",
        "b@0.5",
    ]


@pytest.fixture(scope="module")
def smoke_at_three_fractions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Tracker]:
    """`cxrfa ablate --matrix smoke --cells align-clip --fractions 0.05,0.3,1` with one epoch and CheXzero's
    prompts, in a private store (one cell keeps it fast; the grouping of several cells is checked on a table
    below)."""
    lab = tmp_path_factory.mktemp("lab")
    repo = Path(__file__).resolve().parents[1]
    smoke = yaml.safe_load((repo / "ablations" / "smoke.yaml").read_text())
    smoke["base"]["train"]["epochs"] = 1
    smoke["cells"]["align-clip"]["model"]["prompts"] = "chexzero"  # the runs must record their prompt set
    (lab / "ablations").mkdir()
    (lab / "ablations" / "smoke.yaml").write_text(yaml.safe_dump(smoke, sort_keys=False))
    store = f"sqlite:///{lab / 'mlruns' / 'mlflow.db'}"
    (lab / "mlruns").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(lab)
        args = ["ablate", "--matrix", "smoke", "--cells", "align-clip", "--fractions", "0.05,0.3,1"]
        result = runner.invoke(app, [*args, "--explore", "", "--tracking-uri", store])
    assert result.exit_code == 0, result.output
    return lab, Tracker(store, "smoke")


@pytest.mark.slow
def test_smoke_ablation_at_three_fractions_and_its_efficiency_curve(
    smoke_at_three_fractions: tuple[Path, Tracker],
) -> None:
    lab, tracker = smoke_at_three_fractions
    runs = tracker.search("tags.`cxrfa.cell` != '' and attributes.status = 'FINISHED'")
    assert sorted(r.tags[TAG_CELL] for r in runs) == [f"align-clip@{f}" for f in ("0.05", "0.3", "1")]
    assert len({r.tags[TAG_DATA_HASH] for r in runs}) == 1  # one data hash: compare can put them side by side
    by_fraction: dict[str, set[str]] = {}
    sizes: dict[str, float] = {}
    for r in runs:
        fraction = r.tags["cxrfa.axis.fraction"]
        assert r.tags["cxrfa.label_fraction"] == fraction
        by_fraction.setdefault(fraction, set()).add(r.tags[TAG_SUBSET_HASH])
        sizes[fraction] = r.metrics["data/train_size"]
        assert all(f"data/train_positives/{lab}" in r.metrics for lab in ("Hernia", "Effusion"))
        assert r.tags[TAG_PROMPTS] == "chexzero"
        assert r.tags[TAG_PROMPTS_HASH] == load_prompt_set("chexzero").content_hash
    assert all(len(hashes) == 1 for hashes in by_fraction.values())  # every cell of a fraction: one subset
    assert len({h for hashes in by_fraction.values() for h in hashes}) == 3
    assert sizes["0.05"] < sizes["0.3"] < sizes["1"]
    (parent,) = tracker.search("tags.`cxrfa.parent` != ''")
    assert json.loads(parent.tags[TAG_CELLS])[:3] == ["align-clip@0.05", "align-clip@0.3", "align-clip@1"]

    comp = compare(tracker, parent.run_id, n_boot=50)
    table = efficiency_table(comp.result)
    assert list(table["cell"]) == ["align-clip"] * 3
    assert list(table["fraction"]) == [0.05, 0.3, 1.0]
    for _, row in table.iterrows():
        cell = f"{row['cell']}@{row['fraction']:g}"
        assert row["mean"] == comp.result.at[cell, "mean"]
        assert row["ci_low"] <= row["mean"] <= row["ci_high"]
    figure = efficiency_figure(table)
    png = lab / "efficiency.png"
    figure.savefig(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(figure.axes[0].get_lines()[0].get_ydata()) == list(table["mean"])
    paths = write_report(comp, lab / "report")  # the report draws the same curve and writes its table
    assert paths["efficiency"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = pd.read_csv(paths["efficiency_table"])
    assert list(written["fraction"]) == [0.05, 0.3, 1.0]
    assert list(written["mean"]) == pytest.approx(list(table["mean"]), rel=1e-12)


def test_the_efficiency_table_groups_cells_by_fraction() -> None:
    result = pd.DataFrame(
        {
            "seeds": [3, 3, 3, 3, 2],
            "mean": [0.70, 0.80, 0.72, 0.85, 0.5],
            "ci_low": [0.6, 0.75, 0.65, 0.8, 0.4],
            "ci_high": [0.8, 0.85, 0.79, 0.9, 0.6],
        },
        index=pd.Index(["dual@0.1", "dual@1", "visual@0.1", "visual@1", "visual"], name="cell"),
    )
    table = efficiency_table(result.loc[["visual@1", "dual@1", "visual@0.1", "dual@0.1", "visual"]])
    assert list(zip(table["cell"], table["fraction"], table["mean"], strict=True)) == [
        ("visual", 0.1, 0.72),
        ("visual", 1.0, 0.85),
        ("dual", 0.1, 0.70),
        ("dual", 1.0, 0.80),
    ]  # cells in the results' order, fractions ascending; a cell without a fraction is left out
    tagged = efficiency_table(result.loc[["visual"]], fractions={"visual": 0.5})
    assert list(tagged["fraction"]) == [0.5] and list(tagged["cell"]) == ["visual"]
    with pytest.raises(CxrfaError, match="no cell has a label fraction"):
        efficiency_table(result.loc[["visual"]])
    figure = efficiency_figure(table, baseline="visual")
    lines = figure.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["visual", "dual"] and lines[0].get_linestyle() == "--"
    assert list(lines[1].get_ydata()) == [0.70, 0.80]
    assert figure.axes[0].get_xscale() == "log"
