"""`cxrfa compare` on a tracking store of hand-made runs: scope, pairing, the declared contrasts and their statistics
against explicit references, the report's order and caveats, a read-only store."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from cxrfa.cli import app
from cxrfa.compare import CONSTANT, Comparison, compare, to_latex, to_markdown, write_report
from cxrfa.compare.report import (
    cell_rows,
    contrast_rows,
    fairness_rows,
    family_rows,
    per_label_rows,
    subgroup_rows,
)
from cxrfa.config import BackboneConfig, DataConfig, ModelConfig, RunConfig, load_matrix
from cxrfa.data.manifest import make_manifest, read_manifest, write_manifest
from cxrfa.errors import CxrfaError
from cxrfa.metrics import GAP_STATS, gap_statistics, list_metrics, save_gap_stats, weighted_gap
from cxrfa.stats import holm, label_boot, paired_seed_test, seed_patient_t
from cxrfa.tracking import TAG_CELLS, TAG_CONTRASTS, TAG_PREFIX, TrackedRun, Tracker

pytestmark = pytest.mark.slow

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
    # train and test patients drawn apart, so no patient straddles the split (a run would re-split them)
    patients = np.concatenate(
        [
            np.repeat([f"{s}{i:03d}" for i in range(m)], rng.integers(1, 5, size=m))[:m]
            for s, m in (("p", n - N_TEST), ("t", N_TEST))
        ]
    )
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
    gap_shift: float | None = None,
    gap_patients: str = "",
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
    gap = 0.01 * (seed + 1)  # a logged number only, as runs logged it before they logged its per-patient sums
    if gap_shift is not None:  # what a dual-branch run logs: the gap and the sums it is computed from
        ids = gap_patients + test["patient_id"].astype(str)  # a prefix: sums of patients of another test set
        stats = gap_statistics(*_gap_features(len(y), gap_shift, cell, seed), y, ids.to_numpy())
        gap = float(weighted_gap(stats, np.ones((1, stats["patients"].size)))[0])
    run.log_metrics(
        {
            "test/macro_auc": float(np.mean(aucs)),
            "embed/modality_gap": gap,
            **{f"test/auc/{lab}": a for lab, a in zip(LABELS, aucs, strict=True)},
        }
    )
    with run.scratch() as tmp:
        if gap_shift is not None:
            run.log_artifact(save_gap_stats(stats, tmp / GAP_STATS))
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


def _gap_features(
    n: int, shift: float, cell: str, seed: int, images: np.random.Generator | None = None, d: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """(n, C, d) image-side features and (C, d) prototypes: each prototype moved by ``shift`` along one direction,
    an effect of each image (the same in every run unless ``images`` draws new ones, so shared by a cell's seeds)
    and a little noise per run."""
    fixed = np.random.default_rng(7)
    protos = fixed.normal(size=(len(LABELS), d))
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    direction = fixed.normal(size=d)
    image = 0.25 * (images or fixed).normal(
        size=(n, len(LABELS), d)
    )  # (n, C, d): its patient's part of the gap
    noise = 0.05 * np.random.default_rng([sum(map(ord, cell)), seed]).normal(size=image.shape)
    return protos[None] + shift * direction / np.linalg.norm(direction) + image + noise, protos


CONTRASTS = {
    "text": ["dual-clip - visual-clip"],
    "alignment": ["align-clip - dual-clip", "align-clip - visual-clip"],
}


def _ablation(
    tracker: Tracker,
    manifest: Path,
    cells=tuple(SKILL),
    seeds=(0, 1, 2),
    name="full [demo]",
    contrasts: dict | None = None,
) -> str:
    parent = tracker.parent(name, {f"{TAG_PREFIX}matrix": "full", f"{TAG_PREFIX}data": str(manifest)})
    if contrasts is not None:  # what `ablate` records from the matrix's contrasts block
        parent.set_tags({TAG_CONTRASTS: json.dumps(contrasts)})
    for cell in cells:
        for seed in seeds:
            _log_run(tracker, parent.run_id, cell, seed, manifest, shuffle=cell == "dual-clip")
    parent.finish()
    return parent.run_id


def _sklearn_macro(y: np.ndarray, p: np.ndarray) -> float:
    return float(
        np.mean(
            [roc_auc_score(y[np.isfinite(y[:, j]), j], p[np.isfinite(y[:, j]), j]) for j in range(y.shape[1])]
        )
    )


def test_compare_tests_the_declared_contrasts_against_an_independent_computation(lab: Path) -> None:
    tracker = Tracker(str(lab / "store"), "full")
    parent = _ablation(tracker, lab / "manifest.csv", contrasts=CONTRASTS)
    comp = compare(tracker, n_boot=100, seed=3)
    assert comp.parent_id == parent and list(comp.cells.index) == [*SKILL, CONSTANT]

    test = read_manifest(lab / "manifest.csv").split("test").frame
    y, patients = test[LABELS].to_numpy(float), test["patient_id"].to_numpy()
    n_patients = len(set(patients))
    assert comp.methods.unit == f"patients ({n_patients} patients, {N_TEST} test images)"
    point = {(c, s): _sklearn_macro(y, _probs(y, c, s)) for c in SKILL for s in range(3)}
    boot = {
        (c, s): label_boot(y, _probs(y, c, s), 100, 3, patients).macro("macro_auc").boot
        for c in SKILL
        for s in range(3)
    }
    head = comp.headline_contrasts().set_index(["family", "cell", "other"])
    assert list(head.index) == [
        ("text", "dual-clip", "visual-clip"),
        ("alignment", "align-clip", "dual-clip"),
        ("alignment", "align-clip", "visual-clip"),
    ]  # exactly the declared contrasts, in the file's order; no ad-hoc family
    raw = {}
    for family, items in CONTRASTS.items():
        for item in items:
            a, b = item.split(" - ")
            ref = paired_seed_test(
                [point[a, s] for s in range(3)],
                [point[b, s] for s in range(3)],
                replicates=np.stack([boot[a, s] - boot[b, s] for s in range(3)]),
                n_patients=n_patients,
            )
            row = head.loc[(family, a, b)]
            assert (row["delta"], row["low"], row["high"], row["p"], row["mde"]) == pytest.approx(
                (ref.value, ref.low, ref.high, ref.p, ref.mde), rel=1e-9
            )
            assert row["prob_improvement"] == ref.prob_improvement and row["pairs"] == 3
            raw[family, a, b] = ref.p
    alignment = [raw["alignment", "align-clip", "dual-clip"], raw["alignment", "align-clip", "visual-clip"]]
    assert head.loc["alignment", "p_holm"].tolist() == pytest.approx(
        list(holm(alignment))
    )  # Holm within family
    assert head.loc[("text", "dual-clip", "visual-clip"), "p_holm"] == pytest.approx(
        raw["text", "dual-clip", "visual-clip"]
    )
    for (
        cell
    ) in SKILL:  # each cell: mean over seeds of sklearn's macro AUROC, one seed + shared-patient interval
        mean = np.mean([point[cell, s] for s in range(3)])
        assert comp.cells.loc[cell, "macro_auc"] == pytest.approx(mean, abs=1e-12)
        assert comp.cells.loc[cell, "macro_auc low"] < mean < comp.cells.loc[cell, "macro_auc high"]
    # the constant predictor: train prevalence for every image; AUROC 0.5 by construction, MSE by hand
    train = read_manifest(lab / "manifest.csv").split("train").frame[LABELS].to_numpy(float)
    const = np.broadcast_to(np.nanmean(train, axis=0), y.shape)
    known = np.isfinite(y)
    assert comp.cells.loc[CONSTANT, "mse"] == pytest.approx(np.mean((const[known] - y[known]) ** 2))
    assert comp.cells.loc[CONSTANT, "macro_auc"] == pytest.approx(0.5)
    # runs that logged the gap without its per-patient sums: seeds-only t-interval and a plain paired t-test
    gaps = comp.contrasts[(comp.contrasts["metric"] == "embed/modality_gap")]
    assert (gaps["resample"] == "seeds only").all()
    assert gaps["delta"].abs().max() < 1e-12
    worst = comp.contrasts[comp.contrasts["metric"] == "fair/worst_tpr_gap"]
    assert (worst["resample"] == "seeds and patients inside each subgroup").all()
    ref = seed_patient_t([0.01, 0.02, 0.03], 0.0, null=None)
    assert comp.cells.loc["align-clip", "embed/modality_gap low"] == pytest.approx(max(ref.low, 0.0))


def _readme_columns() -> set[str]:
    """The column names README's "How to read the report" explains (the second-to-last cell of each row)."""
    text = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    section = re.split(r"\n##+ ", text.split("### How to read the report")[1])[0]
    names = set()
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            names.update(cells[-2].split(", "))
    return names


def _report_headers(comp: Comparison) -> list[set[str]]:
    """Each report table's columns, a cell, metric or contrast column named as README names its kind."""
    heads = {f"{m.name} {m.arrow}" + ("" if m.paired else " †") for m in list_metrics()}
    cells = set(comp.cells.index)

    def kind(column: str) -> str:
        if column in cells:
            return "one column per cell"
        if column in heads:
            return "metric ↑/↓"
        if column.startswith("Δ "):
            return "Δ metric ↑/↓ [95% CI]"
        return "`cell − other`" if " − " in column else column

    tables = [
        contrast_rows(comp),
        cell_rows(comp, True),
        cell_rows(comp, False),
        fairness_rows(comp),
        subgroup_rows(comp),
        per_label_rows(comp),
    ] + [family_rows(comp, f) for f in dict.fromkeys(comp.contrasts["family"])]
    return [{kind(c) for c in header} for header, _ in tables]


def test_the_report_answers_first_with_one_interval_per_number_and_keeps_its_caveats(lab: Path) -> None:
    tracker = Tracker(str(lab / "store"), "full")
    parent = _ablation(tracker, lab / "manifest.csv", seeds=(0, 1), contrasts=CONTRASTS)
    comp = compare(tracker, n_boot=50)
    md = to_markdown(comp)
    sections = [line for line in md.splitlines() if line.startswith("## ")]
    assert sections[:2] == ["## Answers", "## Contrasts"]
    answer = next(line for line in md.splitlines() if line.startswith("- text (dual-clip − visual-clip"))
    assert "Holm p = " in answer and "smallest detectable" in answer and "[" in answer
    header = next(line for line in md.splitlines() if line.startswith("| family"))
    assert header == (
        "| family | contrast | seed pairs | Δ macro_auc ↑ [95% CI] | Holm p (family) | P(improvement) | "
        "min. detectable Δ |"
    )
    cells_header = next(line for line in md.splitlines() if line.startswith("| cell | seeds | macro_auc ↑"))
    assert "mse ↓" in cells_header and "ece ↓" in cells_header
    constant = next(line for line in md.splitlines() if line.startswith(f"| {CONSTANT} |"))
    mse = comp.cells.loc[CONSTANT]
    assert f"{mse['mse']:.3f} [{mse['mse low']:.3f}, {mse['mse high']:.3f}]" in constant
    # one interval per number: the macro AUROC of a cell reads the same wherever it appears
    auc = comp.cells.loc["align-clip"]
    text = f"{auc['macro_auc']:.3f} [{auc['macro_auc low']:.3f}, {auc['macro_auc high']:.3f}]"
    assert text in md
    assert "Stand-in weights (cnn-small, tiny-clip)" in md.splitlines()[2]  # the caveat before any number
    assert all(run_id in md for ids in comp.methods.runs.values() for run_id in ids) and parent in md
    assert "Tuning: not recorded" in md and "## Cells" in md
    # every subgroup's TPR gap with its interval, and the worst gap beside its permutation null
    sex = comp.fairness.loc["visual-clip"]  # align-clip finds every positive at 0.5: no gap at all
    assert sex["fair/sex/tpr_gap/F"] == pytest.approx(-sex["fair/sex/tpr_gap/M"])  # F vs M and M vs F
    assert sex["fair/sex/tpr_gap/F low"] < sex["fair/sex/tpr_gap/F"] < sex["fair/sex/tpr_gap/F high"]
    assert 0 < sex["null_mean"] <= sex["null_q95"]
    assert "## TPR gap per subgroup" in md and "## Worst subgroup TPR gap against its null level" in md
    # every Markdown table row has as many cells as its header ("|" inside a cell escaped)
    widths: list[set[int]] = [set()]
    for line in md.splitlines():
        if line.startswith("|"):
            widths[-1].add(len(re.split(r"(?<!\\)\|", line)))
        elif widths[-1]:
            widths.append(set())
    assert len(widths) > 5 and all(len(w) <= 1 for w in widths), widths
    assert "| cell | worst \\|TPR gap\\| ↓ [95% CI] | null mean | null 95th percentile |" in md
    # README's "How to read the report" names every column of every table
    readme = _readme_columns()
    for header in _report_headers(comp):
        assert header <= readme, header - readme
    tex = to_latex(comp)
    assert r"\toprule" in tex and r"$\uparrow$" in tex and tex.startswith("% Warning: Stand-in")
    assert "stand-in" in tex.split(r"\caption{")[1].lower()
    paths = write_report(comp, lab / "out", tracker)
    table = pd.read_csv(paths["csv"])
    assert table["warning"].str.lower().str.contains("stand-in").all()  # every row keeps the caveat
    assert {
        "family",
        "cell",
        "other",
        "metric",
        "delta",
        "low",
        "high",
        "p_holm",
        "prob_improvement",
        "mde",
    } <= set(table.columns)
    page = paths["html"].read_text()
    assert page.index("Answers") < page.index("Contrasts") < page.index("data:image/png")
    assert "overflow-x" not in page and "white-space:nowrap" not in page  # tables wrap, nothing scrolls away
    logged = Tracker(str(lab / "store"), "full").get(parent).metrics
    compare_keys = [k for k in logged if k.startswith("compare/")]
    assert 0 < len(compare_keys) <= 5 and logged["compare/contrasts_tested"] == 3
    # --baseline adds an ad-hoc family after the declared ones
    adhoc = compare(tracker, baseline="dual-clip", n_boot=20).headline_contrasts()
    assert adhoc["family"].unique().tolist() == ["text", "alignment", "ad hoc: vs dual-clip"]


def test_one_seed_pair_per_label_uses_delong_when_each_patient_has_one_image(lab: Path) -> None:
    from cxrfa.stats import delong_test

    manifest = read_manifest(lab / "manifest.csv")
    frame = manifest.frame.copy()
    frame["patient_id"] = [f"q{i}" for i in range(len(frame))]  # one image per patient
    write_manifest(make_manifest(frame, lab, LABELS, "custom"), lab / "manifest.csv")
    tracker = Tracker(str(lab / "store"), "full")
    _ablation(tracker, lab / "manifest.csv", cells=("visual-clip", "align-clip"), seeds=(0,))
    comp = compare(tracker, n_boot=30)
    y = read_manifest(lab / "manifest.csv").split("test").frame[LABELS].to_numpy(float)
    p = []
    for j in range(len(LABELS)):
        known = np.isfinite(y[:, j])
        p.append(
            delong_test(
                y[known, j], _probs(y, "visual-clip", 0)[known, j], _probs(y, "align-clip", 0)[known, j]
            )[2]
        )
    assert comp.label_p_holm.loc["align-clip", LABELS].tolist() == pytest.approx(list(holm(p)))


def test_a_contrast_naming_an_unknown_cell_fails_at_load_listing_the_cells(tmp_path: Path) -> None:
    text = (lab_matrix := tmp_path / "m.yaml")
    text.write_text(
        "name: m\nbase:\n  model: {visual: clip}\ncells:\n  a: {}\n  b: {}\ncontrasts:\n  text: [a - b, a - c]\n"
    )
    with pytest.raises(CxrfaError) as err:
        load_matrix(str(lab_matrix))
    message = str(err.value)
    assert "'c'" in message and "cells: a, b" in message and "m.yaml" in message and "\n" not in message
    assert load_matrix("smoke").contrast_pairs() == {"alignment": [("align-clip", "visual-clip")]}
    full = load_matrix("full").contrast_pairs()
    assert ("dual-clip", "dual-learned") in full["text"] and ("align-clip", "dual-clip") in full["alignment"]


def _store_state(store: Path) -> tuple[list[str], bytes]:
    import sqlite3

    db = store / "mlflow.db"
    with sqlite3.connect(db) as con:
        names = sorted(r[0] for r in con.execute("select name from experiments"))
        rows = repr(
            [con.execute(f"select * from {t}").fetchall() for t in ("runs", "tags", "metrics", "params")]
        ).encode()
    files = sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.name != "mlflow.db")
    return names, rows + repr(files).encode()


def test_compare_reads_the_store_without_creating_anything(lab: Path) -> None:
    store = lab / "store"
    tracker = Tracker(str(store), "full")
    _ablation(tracker, lab / "manifest.csv", cells=("visual-clip", "align-clip"), seeds=(0,), contrasts={})
    before = _store_state(store)
    typo = runner.invoke(app, ["compare", "--experiment", "ful", "--tracking-uri", str(store), "--out", "o"])
    assert typo.exit_code == 2
    lines = typo.output.strip().splitlines()
    assert len(lines) == 1 and "'ful'" in lines[0] and "known:" in lines[0] and "full" in lines[0]
    assert _store_state(store) == before  # no experiment 'ful'
    args = ["compare", "--experiment", "full", "--tracking-uri", str(store), "--out", "o", "--n-boot", "20"]
    quiet = runner.invoke(app, [*args, "--no-log"])
    assert quiet.exit_code == 0, quiet.output
    assert _store_state(store) == before and (lab / "o" / "comparison.md").is_file()
    assert runner.invoke(app, args).exit_code == 0
    assert _store_state(store) != before  # without --no-log the report is logged on the parent
    (lab / "empty").mkdir()
    missing = runner.invoke(app, ["compare", "--tracking-uri", str(lab / "empty"), "--out", "o"])
    assert missing.exit_code == 2 and "no tracking store" in missing.output
    assert list((lab / "empty").iterdir()) == []  # no database created


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
    comp = compare(tracker, n_boot=20)
    assert comp.parent_id == new and list(comp.cells.index) == ["visual-clip", "align-clip", CONSTANT]
    assert comp.methods.seeds == {"visual-clip": [0, 1], "align-clip": [2]}  # the newest config of align-clip
    assert any("older config left out" in n and "train.lr" in n for n in comp.methods.notes)
    assert "not in both cells and not paired" in " ".join(comp.methods.warnings)
    assert compare(tracker, parent_id=old, n_boot=20).methods.seeds == {"visual-clip": [0], "dual-clip": [0]}


def test_cells_come_in_matrix_order_and_the_matrixs_first_cell_is_the_baseline(lab: Path) -> None:
    # Workers start the longest cells first, so the run order is not the matrix's.
    tracker = Tracker(str(lab / "store"), "full")
    ran_first = ("align-clip", "dual-clip", "visual-clip")
    parent = _ablation(tracker, lab / "manifest.csv", cells=ran_first, seeds=(0,))
    assert list(compare(tracker, n_boot=20).cells.index)[:3] == list(
        ran_first
    )  # no recorded order: as they ran
    # The tag `ablate` sets on its parent: the matrix file's cells in order (here one of them never ran).
    TrackedRun(tracker, parent).set_tags(
        {TAG_CELLS: json.dumps(["visual-clip", "visual-custom", "dual-clip"])}
    )
    comp = compare(tracker, n_boot=20)
    assert list(comp.cells.index) == [
        "visual-clip",
        "dual-clip",
        "align-clip",
        CONSTANT,
    ]  # unlisted cells last
    assert comp.baseline == "visual-clip"
    # no declared contrasts: every cell is tested against the first cell, as an ad-hoc family
    head = comp.headline_contrasts()
    assert head["family"].unique().tolist() == ["ad hoc: vs visual-clip"] and len(head) == 2


def test_without_the_manifest_the_bootstrap_says_it_resamples_images(lab: Path) -> None:
    tracker = Tracker(str(lab / "store"), "full")
    _ablation(tracker, lab / "manifest.csv", cells=("visual-clip", "align-clip"), seeds=(0,))
    (lab / "manifest.csv").unlink()
    comp = compare(tracker, n_boot=20)
    assert comp.methods.unit.startswith("images: patient ids unavailable")
    assert any("too narrow" in w for w in comp.methods.warnings)
    assert CONSTANT not in comp.cells.index and any("no manifest" in n for n in comp.methods.notes)


def test_a_label_fraction_ablation_tests_each_declared_family_at_each_fraction() -> None:
    from cxrfa.compare.analysis import Methods, _families
    from cxrfa.compare.runs import Selection
    from cxrfa.tracking import TAG_CONTRASTS, RunInfo

    def run(tags: dict[str, str]) -> RunInfo:
        return RunInfo("r", "r", "FINISHED", tags, {}, {}, "")

    parent = run({TAG_CONTRASTS: json.dumps({"text": ["dual - visual", "dual - learned"]})})
    cells = [f"{c}@{f}" for f in ("0.1", "1") for c in ("visual", "dual")] + ["learned@1"]
    sel = Selection(parent, {c: [run({})] for c in cells}, "h")
    methods = Methods(100, 0, "patients", True, {}, "h", "demo", "m", "e", None, {}, [], [], "", "")
    families = _families(sel, None, methods)
    assert families == {
        "text @ 10% labels": [("dual@0.1", "visual@0.1")],
        "text @ 100% labels": [("dual@1", "visual@1"), ("dual@1", "learned@1")],
    }
    assert methods.notes == [
        "contrast dual − learned (text @ 10% labels) not tested: a cell has no finished runs"
    ]


def test_a_two_seed_difference_interval_stays_inside_the_range_a_difference_can_take() -> None:
    """Two seeds that disagree wildly give a t interval (t = 12.7) far past ±1; a Δ AUROC cannot leave [−1, 1]."""
    from cxrfa.compare.analysis import _clip, _delta_bounds

    res = paired_seed_test([0.95, 0.05], [0.05, 0.95])
    assert res.low < -1 and res.high > 1  # the raw interval
    assert _clip(res, _delta_bounds((0.0, 1.0))) == (-1.0, 1.0)
    assert _clip(res, _delta_bounds(None)) == (res.low, res.high)  # an unbounded metric keeps its interval


def test_one_cell_without_contrasts_still_writes_the_whole_report(lab: Path, tmp_path: Path) -> None:
    """A store with one cell (a first run, a smoke test) has nothing to contrast: the report says so, no crash."""
    tracker = Tracker(str(lab / "store"), "full")
    _ablation(tracker, lab / "manifest.csv", cells=("visual-clip",), seeds=(0,))
    comp = compare(tracker, n_boot=20, seed=0)
    assert comp.headline_contrasts().empty
    paths = write_report(comp, tmp_path / "out", None)
    assert "visual-clip" in paths["html"].read_text(encoding="utf-8")


GAP_SHIFT = {"visual-clip": 0.3, "dual-clip": 0.3, "align-clip": 0.6}  # align-clip's gap planted wider


def test_the_modality_gap_is_resampled_over_patients_and_paired_like_the_predictions(lab: Path) -> None:
    tracker = Tracker(str(lab / "store"), "full")
    manifest = lab / "manifest.csv"
    parent = tracker.parent("gap [demo]", {f"{TAG_PREFIX}matrix": "full", f"{TAG_PREFIX}data": str(manifest)})
    parent.set_tags(
        {TAG_CONTRASTS: json.dumps({"gap": ["align-clip - dual-clip", "dual-clip - visual-clip"]})}
    )
    logged = {}
    for cell, shift in GAP_SHIFT.items():
        for seed in range(3):
            run_id = _log_run(tracker, parent.run_id, cell, seed, manifest, gap_shift=shift)
            logged[cell, seed] = tracker.get(run_id).metrics["embed/modality_gap"]
    parent.finish()
    comp = compare(tracker, n_boot=200, seed=1)
    rows = comp.contrasts[comp.contrasts["metric"] == "embed/modality_gap"].set_index(["cell", "other"])
    assert (rows["resample"] == "seeds and patients (of the explored test images)").all()
    planted, null = rows.loc["align-clip", "dual-clip"], rows.loc["dual-clip", "visual-clip"]
    assert planted["p_holm"] < 0.01 and planted["low"] > 0  # the planted difference is found
    assert null["p_holm"] > 0.05 and null["low"] < 0 < null["high"]  # equal gaps are not told apart
    cell = comp.cells.loc["align-clip"]
    points = [logged["align-clip", s] for s in range(3)]
    assert cell["embed/modality_gap"] == pytest.approx(np.mean(points), abs=1e-15)  # the logged numbers
    # the interval covers the gap expected of such a test set (fresh images, these labels) ...
    test = read_manifest(manifest).split("test").frame
    y = test[LABELS].to_numpy(float)
    rng = np.random.default_rng(5)
    expected = []
    for i in range(200):
        feats, protos = _gap_features(len(y), GAP_SHIFT["align-clip"], "align-clip", 10 + i, images=rng)
        stats = gap_statistics(feats, protos, y, np.arange(len(y)))
        expected.append(weighted_gap(stats, np.ones((1, stats["patients"].size)))[0])
    assert cell["embed/modality_gap low"] < np.mean(expected) < cell["embed/modality_gap high"]
    # ... which the seeds alone miss: the images' own part of the gap is the same in every seed
    seeds_only = seed_patient_t(points, 0.0, null=None)
    assert not seeds_only.low < np.mean(expected) < seeds_only.high
    assert cell["embed/modality_gap high"] - cell["embed/modality_gap low"] > 2 * (
        seeds_only.high - seeds_only.low
    )
    text = to_markdown(comp)  # no † (seed interval only) on the gap any more
    assert "embed/modality_gap ↓" in text and "embed/modality_gap ↓ †" not in text


def test_a_run_whose_gap_sums_do_not_match_the_test_set_counts_by_its_seeds_and_says_so(lab: Path) -> None:
    tracker = Tracker(str(lab / "store"), "full")
    manifest = lab / "manifest.csv"
    parent = tracker.parent("gap [demo]", {f"{TAG_PREFIX}matrix": "full", f"{TAG_PREFIX}data": str(manifest)})
    parent.set_tags({TAG_CONTRASTS: json.dumps({"gap": ["align-clip - dual-clip"]})})
    for cell in ("dual-clip", "align-clip"):
        for seed in range(2):
            foreign = "other-" if (cell, seed) == ("align-clip", 1) else ""
            _log_run(tracker, parent.run_id, cell, seed, manifest, gap_shift=0.3, gap_patients=foreign)
    parent.finish()
    comp = compare(tracker, n_boot=50, seed=1)
    row = comp.contrasts[comp.contrasts["metric"] == "embed/modality_gap"].iloc[0]
    assert row["resample"] == "seeds only"
    notes = [n for n in comp.methods.notes if "modality_gap_stats.npz lacks patients" in n]
    assert len(notes) == 1 and "by its seed only" in notes[0]  # the one run whose sums are of other patients
