"""`cxrfa compare` on a tracking store of hand-made runs: scope, pairing, statistics against explicit references."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from cxrfa.cli import app
from cxrfa.compare import compare, to_latex, to_markdown, write_report
from cxrfa.config import BackboneConfig, DataConfig, ModelConfig, RunConfig
from cxrfa.data.manifest import make_manifest, read_manifest, write_manifest
from cxrfa.stats import holm, label_boot, paired_delta
from cxrfa.tracking import TAG_CELLS, TAG_PREFIX, TrackedRun, Tracker

runner = CliRunner()
LABELS = ["Atelectasis", "Effusion", "Hernia"]
N_TEST = 90
SKILL = {"visual-clip": 0.25, "dual-clip": 0.45, "align-clip": 0.5}


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A manifest with patients of 1-4 images; a store; the working folder."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    n = 150
    patients = np.repeat([f"p{i:03d}" for i in range(n)], rng.integers(1, 5, size=n))[:n]
    frame = pd.DataFrame(
        {
            "path": [f"images/{i:04d}.png" for i in range(n)],
            "patient_id": patients,
            "split": np.where(np.arange(n) < n - N_TEST, "train", "test"),
            "sex": rng.choice(["M", "F"], n),
            "age": rng.integers(20, 90, n),
            "view": rng.choice(["PA", "AP"], n),
        }
    )
    y = (rng.random((n, len(LABELS))) < [0.45, 0.3, 0.12]).astype(float)
    y[rng.random(y.shape) < 0.05] = np.nan
    for j, name in enumerate(LABELS):
        frame[name] = y[:, j]
    write_manifest(make_manifest(frame, tmp_path, LABELS, "custom"), tmp_path / "manifest.csv")
    return tmp_path


def _probs(y: np.ndarray, cell: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng([sum(map(ord, cell)), seed])
    return np.clip(SKILL[cell] * np.nan_to_num(y) + rng.random(y.shape) * 0.7, 0, 1)


def _log_run(
    tracker: Tracker,
    parent: str | None,
    cell: str,
    seed: int,
    manifest: Path,
    *,
    lr: float = 0.001,
    data_hash: str | None = None,
    shuffle: bool = False,
) -> str:
    m = read_manifest(manifest)
    test = m.split("test").frame
    y = test[LABELS].to_numpy(float)
    cfg = RunConfig(
        cell=cell,
        seed=seed,
        data=DataConfig(manifest=str(manifest.resolve()), label_set="custom"),
        model=ModelConfig(visual=BackboneConfig(name="custom", arch="cnn-small", standin=True)),
    )
    tags = {
        f"{TAG_PREFIX}cell": cell,
        f"{TAG_PREFIX}seed": str(seed),
        f"{TAG_PREFIX}config_hash": cfg.config_hash(),
        f"{TAG_PREFIX}data_hash": data_hash or m.data_hash(),
        f"{TAG_PREFIX}backbone.source": "stand-in:cnn-small"
        + (" | text stand-in:tiny-clip" if cell != "visual-clip" else ""),
        f"{TAG_PREFIX}data": str(manifest),
    }
    run = tracker.start(f"{cell}/seed={seed}", tags, parent)
    run.log_params({**cfg.flat(), "train.lr": lr})
    probs = _probs(y, cell, seed)
    aucs = [
        roc_auc_score(y[np.isfinite(y[:, j]), j], probs[np.isfinite(y[:, j]), j]) for j in range(len(LABELS))
    ]
    run.log_metrics(
        {
            "test/macro_auc": float(np.mean(aucs)),
            "test/fair/worst_tpr_gap": 0.01 * (seed + 1),
            **{f"test/auc/{lab}": a for lab, a in zip(LABELS, aucs, strict=True)},
        }
    )
    with run.scratch() as tmp:
        pred = pd.DataFrame(probs, columns=LABELS)
        pred.insert(0, "path", test["path"].to_numpy())
        if shuffle:
            pred = pred.sample(frac=1.0, random_state=seed)  # pairing is by path, not by row
        pred.to_csv(tmp / "test_predictions.csv", index=False)
        test[["path", *LABELS]].to_csv(tmp / "test_labels.csv", index=False, float_format="%.0f")
        (tmp / "config.json").write_text(json.dumps(cfg.model_dump(mode="json")))
        (tmp / "evaluation").mkdir()
        per_label = pd.DataFrame(
            {"label": LABELS, "n_pos": np.nansum(y, axis=0).astype(int), "group": ["head", "medium", "tail"]}
        )
        per_label.to_csv(tmp / "evaluation" / "per_label.csv", index=False)
        for name in ("test_predictions.csv", "test_labels.csv", "config.json"):
            run.log_artifact(tmp / name)
        run.log_artifact(tmp / "evaluation" / "per_label.csv", "evaluation")
    run.finish()
    return run.run_id


def _ablation(
    tracker: Tracker, manifest: Path, cells=tuple(SKILL), seeds=(0, 1, 2), name="full [demo]"
) -> str:
    parent = tracker.parent(name, {f"{TAG_PREFIX}matrix": "full", f"{TAG_PREFIX}data": str(manifest)})
    for cell in cells:
        for seed in seeds:
            _log_run(tracker, parent.run_id, cell, seed, manifest, shuffle=cell == "dual-clip")
    parent.finish()
    return parent.run_id


def test_compare_pairs_seeds_by_path_and_matches_an_independent_computation(lab: Path) -> None:
    tracker = Tracker(str(lab / "store"), "full")
    parent = _ablation(tracker, lab / "manifest.csv")
    comp = compare(tracker, metric="test/macro_auc", baseline="visual-clip", n_boot=200, seed=3)
    assert comp.parent_id == parent and list(comp.result.index) == list(SKILL)

    manifest = read_manifest(lab / "manifest.csv")
    test = manifest.split("test").frame
    y, patients = test[LABELS].to_numpy(float), test["patient_id"].to_numpy()
    assert comp.methods.unit == f"patients ({len(set(patients))} patients, {N_TEST} test images)"
    boot = {
        (c, s): label_boot(y, _probs(y, c, s), 200, 3, patients).macro("macro_auc")
        for c in SKILL
        for s in range(3)
    }
    raw = []
    for cell in ("dual-clip", "align-clip"):
        ref = paired_delta([boot[cell, s] for s in range(3)], [boot["visual-clip", s] for s in range(3)], 3)
        row = comp.result.loc[cell]
        assert (row["delta"], row["delta_low"], row["delta_high"], row["p_value"]) == pytest.approx(
            (ref.value, ref.low, ref.high, ref.p)
        )
        # Δ per seed is the difference of the table's means
        assert row["delta"] == pytest.approx(row["mean"] - comp.result.loc["visual-clip", "mean"], abs=1e-12)
        ens = lambda c: np.mean([_probs(y, c, s) for s in range(3)], axis=0)  # noqa: E731
        ens_ref = paired_delta(
            [label_boot(y, ens(cell), 200, 3, patients).macro("macro_auc")],
            [label_boot(y, ens("visual-clip"), 200, 3, patients).macro("macro_auc")],
            3,
        )
        assert (row["ens_delta"], row["ens_low"], row["ens_high"]) == pytest.approx(
            (ens_ref.value, ens_ref.low, ens_ref.high)
        )
        raw.append(ref.p)
    assert comp.result.loc[["dual-clip", "align-clip"], "p_holm"].tolist() == pytest.approx(list(holm(raw)))
    for cell in SKILL:  # the mean is the mean over seeds of sklearn's macro AUROC
        per_seed = [
            np.mean(
                [
                    roc_auc_score(y[np.isfinite(y[:, j]), j], _probs(y, cell, s)[np.isfinite(y[:, j]), j])
                    for j in range(len(LABELS))
                ]
            )
            for s in range(3)
        ]
        assert comp.result.loc[cell, "mean"] == pytest.approx(np.mean(per_seed), abs=1e-12)
        assert 0 <= comp.result.loc[cell, "ci_low"] <= comp.result.loc[cell, "ci_high"] <= 1
    # bounded: the worst TPR gap (0.01, 0.02, 0.03) gets an interval inside [0, 1]
    assert comp.detail.loc["visual-clip", "test/fair/worst_tpr_gap ci_low"] > 0
    # per-label: head -> tail with test positives
    assert list(comp.per_label.columns) == LABELS and comp.label_info["n_pos"].tolist() == list(
        np.nansum(y, axis=0).astype(int)
    )


def test_report_shows_the_result_first_with_its_method_and_provenance(lab: Path) -> None:
    tracker = Tracker(str(lab / "store"), "full")
    parent = _ablation(tracker, lab / "manifest.csv", seeds=(0, 1))
    comp = compare(tracker, baseline="visual-clip", n_boot=100)
    md = to_markdown(comp)
    header = md.splitlines()[
        md.splitlines().index(next(line for line in md.splitlines() if line.startswith("| cell")))
    ]
    assert (
        header
        == "| cell | seeds | macro_auc mean [95% CI] | Δ per seed [95% CI] | Δ ensemble [95% CI] | p (Holm) |"
    )
    assert "Holm-adjusted across the 2 cells" in md and "two-level bootstrap over seeds and patients" in md
    assert (
        "Stand-in weights (cnn-small, tiny-clip)" in md
    )  # each weight once, visual and text and comp.methods.data_hash in md
    assert all(run_id in md for ids in comp.methods.runs.values() for run_id in ids) and parent in md
    assert "Tuning: not recorded" in md
    hernia = next(line for line in md.splitlines() if line.startswith("| Hernia |"))  # per-label, with its CI
    low, high = comp.per_label_low.at["align-clip", "Hernia"], comp.per_label_high.at["align-clip", "Hernia"]
    assert "| tail |" in hernia and f"[{low:.3f}, {high:.3f}]" in hernia and 0 <= low <= high <= 1
    tex = to_latex(comp)
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex and r"$\Delta$ per seed" in tex
    paths = write_report(comp, lab / "out", tracker)
    page = paths["html"].read_text()
    assert (
        page.index("Δ per seed") < page.index("data:image/png") and page.count("data:image/png;base64") == 2
    )
    table = pd.read_csv(paths["csv"], index_col="cell")
    assert {"test/macro_auc", "test/macro_auc std", "delta", "ens_delta", "p_value", "p_holm"} <= set(
        table.columns
    )
    logged = Tracker(str(lab / "store"), "full").get(parent).metrics
    assert logged["compare/align-clip/test/macro_auc/delta"] == pytest.approx(
        comp.result.loc["align-clip", "delta"]
    )
    assert "compare/visual-clip/test/macro_auc/mean_over_seeds" in logged


def test_p_at_the_floor_is_shown_as_a_bound() -> None:
    from cxrfa.stats import format_p

    assert format_p(2 / 1001, 1000, True) == "≤ 2/1001"
    assert "≈" not in format_p(2 / 1001, 1000, False)


def test_mixing_data_hashes_exits_2_with_one_line_naming_both(lab: Path) -> None:
    store = str(lab / "store")
    tracker = Tracker(store, "mixed")
    parent = tracker.parent("full [demo]", {f"{TAG_PREFIX}matrix": "full"})
    _log_run(tracker, parent.run_id, "visual-clip", 0, lab / "manifest.csv", data_hash="aaaaaaaaaaaa")
    _log_run(tracker, parent.run_id, "align-clip", 0, lab / "manifest.csv", data_hash="bbbbbbbbbbbb")
    result = runner.invoke(app, ["compare", "--experiment", "mixed", "--tracking-uri", store, "--out", "o"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "aaaaaaaaaaaa" in lines[0] and "bbbbbbbbbbbb" in lines[0]
    # runs without a parent are compared only when they share one data hash
    loose = Tracker(store, "loose")
    _log_run(loose, None, "visual-clip", 0, lab / "manifest.csv", data_hash="cccccccccccc")
    _log_run(loose, None, "align-clip", 0, lab / "manifest.csv", data_hash="dddddddddddd")
    result = runner.invoke(app, ["compare", "--experiment", "loose", "--tracking-uri", store, "--out", "o"])
    assert result.exit_code == 2 and "cccccccccccc" in result.output and "dddddddddddd" in result.output


def test_newest_parent_only_and_an_older_config_of_a_cell_is_left_out(lab: Path) -> None:
    tracker = Tracker(str(lab / "store"), "full")
    old = _ablation(
        tracker, lab / "manifest.csv", cells=("visual-clip", "dual-clip"), seeds=(0,), name="full [a]"
    )
    new = _ablation(
        tracker, lab / "manifest.csv", cells=("visual-clip", "align-clip"), seeds=(0, 1), name="full [b]"
    )
    _log_run(
        tracker, new, "align-clip", 2, lab / "manifest.csv", lr=0.01
    )  # a later re-run with another config
    comp = compare(tracker, n_boot=50)
    assert comp.parent_id == new and list(comp.result.index) == ["visual-clip", "align-clip"]
    assert comp.methods.seeds == {"visual-clip": [0, 1], "align-clip": [2]}  # the newest config of align-clip
    assert any("older config left out" in n and "train.lr" in n for n in comp.methods.notes)
    assert "no baseline run with the same seed" in " ".join(comp.methods.warnings)
    assert compare(tracker, parent_id=old, n_boot=50).methods.seeds == {"visual-clip": [0], "dual-clip": [0]}


def test_cells_come_in_matrix_order_and_the_matrixs_first_cell_is_the_baseline(lab: Path) -> None:
    # Workers start the longest cells first, so the run order is not the matrix's.
    tracker = Tracker(str(lab / "store"), "full")
    ran_first = ("align-clip", "dual-clip", "visual-clip")
    parent = _ablation(tracker, lab / "manifest.csv", cells=ran_first, seeds=(0, 1))
    assert list(compare(tracker, n_boot=20).result.index) == list(ran_first)  # no recorded order: as they ran
    # The tag `ablate` sets on its parent: the matrix file's cells in order (here one of them never ran).
    TrackedRun(tracker, parent).set_tags(
        {TAG_CELLS: json.dumps(["visual-clip", "visual-custom", "dual-clip"])}
    )
    comp = compare(tracker, n_boot=20)
    assert list(comp.result.index) == ["visual-clip", "dual-clip", "align-clip"]  # unlisted cells last
    assert comp.baseline == "visual-clip"


def test_without_the_manifest_the_bootstrap_says_it_resamples_images(lab: Path) -> None:
    tracker = Tracker(str(lab / "store"), "full")
    _ablation(tracker, lab / "manifest.csv", cells=("visual-clip", "align-clip"), seeds=(0,))
    (lab / "manifest.csv").unlink()
    comp = compare(tracker, n_boot=50)
    assert comp.methods.unit.startswith("images: patient ids unavailable")
    assert any("too narrow" in w for w in comp.methods.warnings)


def test_a_metric_only_logged_per_run_gets_a_bounded_interval_over_seeds_and_no_test(lab: Path) -> None:
    tracker = Tracker(str(lab / "store"), "full")
    _ablation(tracker, lab / "manifest.csv", cells=("visual-clip", "align-clip"))
    comp = compare(tracker, metric="test/fair/worst_tpr_gap", n_boot=50)
    gaps = [0.01, 0.02, 0.03]  # logged per seed; a plain t-interval would reach below 0
    assert comp.result.loc["align-clip", "mean"] == pytest.approx(np.mean(gaps))
    assert (
        0
        < comp.result.loc["align-clip", "ci_low"]
        < np.mean(gaps)
        < comp.result.loc["align-clip", "ci_high"]
        < 1
    )
    assert "delta" not in comp.result.columns and not comp.methods.paired
    md = to_markdown(comp)
    assert "no paired test" in md.splitlines()[0] and "Bootstrap: none" in md
