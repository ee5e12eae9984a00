"""The numbers of a comparison: per cell, the headline metric's mean over seeds, the per-seed-pair Δ against the
baseline, the seed-ensemble Δ, Holm-adjusted p-values, per-label AUROC, and every logged metric over seeds."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cxrfa.compare.runs import Selection, TestSet, gather, select_runs
from cxrfa.errors import CxrfaError
from cxrfa.metrics import percentile_ci
from cxrfa.stats import (
    Estimate,
    LabelBoot,
    hierarchical_replicates,
    holm,
    holm_at_floor,
    label_boot,
    mean_std_ci,
    metric_range,
    paired_delta,
    seed_patient_mean,
)
from cxrfa.tracking import (
    TAG_BACKBONE_SOURCE,
    TAG_CODE_VERSION,
    TAG_DATA,
    TAG_MATRIX,
    TAG_SEED,
    TAG_TUNED_TRIALS,
    TAG_TUNING,
    Tracker,
    code_version,
)

log = logging.getLogger(__name__)

HEADLINE = (
    "test/macro_auc",
    "test/map",
    "test/mse",
    "test/macro_f1",
    "test/macro_auc_head",
    "test/macro_auc_medium",
    "test/macro_auc_tail",
    "test/fair/worst_tpr_gap",
    "embed/modality_gap",
    "embed/mean_offdiag_sim/final",
)
PAIRED = ("test/macro_auc", "test/map")  # metrics recomputable from the logged predictions
GROUP_ORDER = {"head": 0, "medium": 1, "tail": 2}


@dataclass
class Methods:
    """How the numbers were made and what they were made from (the report's methods + provenance block)."""

    n_boot: int
    seed: int
    unit: str  # what a bootstrap resample draws
    paired: bool  # Δ and p were computed (the metric is recomputable from predictions)
    seeds: dict[str, list[int]]  # cell -> seeds
    pairs: dict[str, list[int]]  # cell -> seeds paired with the baseline's
    data_hash: str
    data: str
    matrix: str
    experiment: str
    parent_id: str | None
    runs: dict[str, list[str]]  # cell -> run ids
    backbone_sources: list[str]
    code_versions: list[str]
    report_code_version: str
    tuning: str
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    """A comparison of the cells of one ablation.

    Attributes:
        metric: the headline metric (e.g. ``test/macro_auc``).
        baseline: the cell every other is tested against.
        result: one row per cell: ``seeds``, ``pairs``, ``mean``/``ci_low``/``ci_high`` (seeds x patients for a
            paired metric, else over seeds), ``delta``/``delta_low``/``delta_high`` (mean per-seed-pair Δ),
            ``ens_delta``/``ens_low``/``ens_high`` (Δ of the seed-averaged predictions), ``p_value`` (raw),
            ``p_holm``, ``p_floor``/``p_holm_floor`` (the value is a bootstrap floor, i.e. a bound).
        detail: one row per cell: every logged headline metric's ``mean``, ``std``, ``ci_low``, ``ci_high`` over
            seeds (t-interval, on the logit scale of the metric's range when it has one).
        per_label: cells x labels mean test AUROC over seeds, labels ordered head -> tail.
        per_label_low, per_label_high: its 95% interval (seeds x patients; NaN without predictions).
        label_info: per label ``group`` and ``n_pos`` (test positives), in ``per_label`` order.
        methods: see :class:`Methods`.
    """

    metric: str
    baseline: str
    result: pd.DataFrame
    detail: pd.DataFrame
    per_label: pd.DataFrame
    per_label_low: pd.DataFrame
    per_label_high: pd.DataFrame
    label_info: pd.DataFrame
    methods: Methods

    @property
    def parent_id(self) -> str | None:
        return self.methods.parent_id

    @property
    def table(self) -> pd.DataFrame:
        """Everything per cell in one frame (the CSV): result columns, then ``<metric>``, ``<metric> std``, ..."""
        return self.result.join(self.detail)


def compare(
    tracker: Tracker,
    parent_id: str | None = None,
    metric: str = "test/macro_auc",
    baseline: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> Comparison:
    """Compare the cells of one ablation (``parent_id``, or the experiment's newest) against a baseline cell.

    Args:
        tracker: the store and experiment.
        parent_id: the ablation's parent run; None = the newest parent (or, without parents, one data hash).
        metric: headline metric; ``test/macro_auc`` and ``test/map`` get paired tests from the predictions.
        baseline: the cell the others are tested against (default: the matrix's first cell).
        n_boot: bootstrap replicates.
        seed: seed of the bootstrap.
        progress: show a progress bar while fetching runs.

    Raises:
        CxrfaError: no runs, mixed data hashes, an unknown baseline, or runs whose test sets disagree.
    """
    sel = select_runs(tracker, parent_id)
    cells = list(sel.by_cell)
    if baseline is not None and baseline not in sel.by_cell:
        raise CxrfaError(f"--baseline {baseline!r}: no finished runs of that cell; cells: {', '.join(cells)}")
    baseline = baseline or cells[0]
    detail = _detail(sel, metric)
    paired = metric in PAIRED and n_boot > 0
    seeds = {c: [int(r.tags.get(TAG_SEED, "0")) for r in runs] for c, runs in sel.by_cell.items()}
    base_seeds = set(seeds[baseline])
    pairs = {c: [s for s in seeds[c] if s in base_seeds] for c in cells if c != baseline}
    methods = _methods(tracker, sel, n_boot, seed, paired, seeds, pairs)
    if paired:
        test = gather(tracker, sel, progress)
        methods.unit = test.unit
        if test.patients is None:
            methods.warnings.append(f"Bootstrap over {test.unit}.")
        result, per_label, low, high = _paired(sel, test, metric, baseline, pairs, n_boot, seed, progress)
        info = test.label_info
    else:
        result = _seed_only(sel, detail, metric)
        per_label, low, high, info = _logged_per_label(sel)
    order = sorted(
        info.index, key=lambda lab: (GROUP_ORDER.get(info.at[lab, "group"], 3), -info.at[lab, "n_pos"])
    )
    return Comparison(
        metric, baseline, result, detail, per_label[order], low[order], high[order], info.loc[order], methods
    )


def _detail(sel: Selection, metric: str) -> pd.DataFrame:
    metrics = [metric, *[m for m in HEADLINE if m != metric]]
    rows = []
    for cell, runs in sel.by_cell.items():
        row: dict[str, object] = {"cell": cell}
        for m in metrics:
            vals = [r.metrics[m] for r in runs if m in r.metrics]
            if vals:
                mean, std, lo, hi, _ = mean_std_ci(vals, metric_range(m))
                row.update({m: mean, f"{m} std": std, f"{m} ci_low": lo, f"{m} ci_high": hi})
        rows.append(row)
    return pd.DataFrame(rows).set_index("cell")


def _paired(
    sel: Selection,
    test: TestSet,
    metric: str,
    baseline: str,
    pairs: dict[str, list[int]],
    n_boot: int,
    seed: int,
    progress: bool,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per-seed, seed-ensemble and per-label numbers from the predictions; Holm across the tested cells."""
    key = "macro_auc" if metric == "test/macro_auc" else "map"
    models = {r.run_id: test.probs[r.run_id] for runs in sel.by_cell.values() for r in runs}
    models.update(
        {
            f"ensemble:{c}": np.mean([test.probs[r.run_id] for r in runs], axis=0)
            for c, runs in sel.by_cell.items()
        }
    )
    scored = _score_all(test, models, n_boot, seed, progress)
    boot = {r.run_id: scored[r.run_id] for runs in sel.by_cell.values() for r in runs}
    ensemble = {c: scored[f"ensemble:{c}"] for c in sel.by_cell}
    by_seed = {
        c: {int(r.tags.get(TAG_SEED, "0")): boot[r.run_id] for r in runs} for c, runs in sel.by_cell.items()
    }
    rows, per_label, low, high = [], {}, {}, {}
    for cell, runs in sel.by_cell.items():
        scores = [boot[r.run_id].macro(key) for r in runs]
        mean = seed_patient_mean(scores, seed)
        row: dict[str, object] = {
            "cell": cell,
            "seeds": len(runs),
            "pairs": len(pairs.get(cell, [])),
            "mean": mean.value,
            "ci_low": mean.low,
            "ci_high": mean.high,
        }
        if cell != baseline and pairs[cell]:
            delta = paired_delta(
                [by_seed[cell][s].macro(key) for s in pairs[cell]],
                [by_seed[baseline][s].macro(key) for s in pairs[cell]],
                seed,
            )
            ens = paired_delta([ensemble[cell].macro(key)], [ensemble[baseline].macro(key)], seed)
            row.update(_delta_columns(delta, ens))
        rows.append(row)
        per_label[cell], low[cell], high[cell] = _per_label_auc([boot[r.run_id] for r in runs], seed)
    result = pd.DataFrame(rows).set_index("cell")
    if "p_value" in result.columns:
        result["p_holm"] = holm(result["p_value"].to_numpy(float))
        result["p_holm_floor"] = holm_at_floor(
            result["p_value"].to_numpy(float), result["p_floor"].eq(True).to_numpy()
        )

    def frame(values: dict[str, np.ndarray]) -> pd.DataFrame:
        return pd.DataFrame(values, index=test.labels).T  # cells x labels

    return result, frame(per_label), frame(low), frame(high)


def _score_all(test: TestSet, models: dict[str, np.ndarray], n_boot: int, seed: int, progress: bool) -> dict:
    """:func:`label_boot` of every model, on threads (numpy releases the GIL in the ranking loops)."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    def score(prob: np.ndarray) -> LabelBoot:
        return label_boot(test.y, prob, n_boot, seed, test.patients)

    with ThreadPoolExecutor(max_workers=min(len(models), os.cpu_count() or 1, 8)) as pool:
        jobs = pool.map(score, models.values())
        bar = tqdm(jobs, total=len(models), desc="compare: bootstrap", unit="model", disable=not progress)
        return dict(zip(models, bar, strict=True))


def _delta_columns(delta: Estimate, ens: Estimate) -> dict[str, object]:
    return {
        "delta": delta.value,
        "delta_low": delta.low,
        "delta_high": delta.high,
        "ens_delta": ens.value,
        "ens_low": ens.low,
        "ens_high": ens.high,
        "p_value": delta.p,
        "p_floor": delta.at_floor,
        "n_boot": delta.n,
    }


def _per_label_auc(boots: list, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(C,) mean AUROC over seeds per label and its seeds x patients interval."""
    mean = np.mean([b.auc for b in boots], axis=0)
    low, high = np.full(mean.shape, np.nan), np.full(mean.shape, np.nan)
    for j in range(mean.size):
        reps = hierarchical_replicates([b.boot_auc[:, j] for b in boots], seed)
        low[j], high[j] = percentile_ci(reps)
    return mean, low, high


def _seed_only(sel: Selection, detail: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The result table of a metric without predictions: mean and interval over seeds only."""
    result = pd.DataFrame({"seeds": [len(r) for r in sel.by_cell.values()]}, index=detail.index)
    if metric not in detail.columns:
        raise CxrfaError(
            f"--metric {metric!r}: no run logged it; e.g. test/macro_auc, test/map, test/macro_f1"
        )
    result["mean"], result["ci_low"], result["ci_high"] = (
        detail[metric],
        detail[f"{metric} ci_low"],
        detail[f"{metric} ci_high"],
    )
    return result


def _logged_per_label(sel: Selection) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    labels = sorted(
        {k.removeprefix("test/auc/") for r in sel.runs for k in r.metrics if k.startswith("test/auc/")}
    )
    means = pd.DataFrame(
        {
            lab: [
                np.mean(
                    [r.metrics[f"test/auc/{lab}"] for r in runs if f"test/auc/{lab}" in r.metrics] or [np.nan]
                )
                for runs in sel.by_cell.values()
            ]
            for lab in labels
        },
        index=list(sel.by_cell),
    )
    nan = means * np.nan
    info = pd.DataFrame({"group": "", "n_pos": 0}, index=labels)
    return means, nan, nan.copy(), info


def _methods(
    tracker: Tracker,
    sel: Selection,
    n_boot: int,
    seed: int,
    paired: bool,
    seeds: dict[str, list[int]],
    pairs: dict[str, list[int]],
) -> Methods:
    runs = sel.runs
    sources = sorted({r.tags.get(TAG_BACKBONE_SOURCE, "") for r in runs} - {""})
    parent_tags = sel.parent.tags if sel.parent else {}
    data = parent_tags.get(TAG_DATA) or next((r.tags[TAG_DATA] for r in runs if TAG_DATA in r.tags), "?")
    warnings = []
    weights = {part.removeprefix("text ") for s in sources for part in s.split(" | ")}  # "visual | text t"
    standins = sorted(w.removeprefix("stand-in:") for w in weights if w.startswith("stand-in:"))
    if data == "demo" or standins:
        what = "the built-in synthetic chest X-rays" if data == "demo" else data
        warnings.append(
            f"Stand-in weights ({', '.join(standins) or 'none'}) on {what}: small backbones pretrained on the "
            "study's own data. This shows the machinery working; it is not a finding about real chest X-rays."
        )
    for cell in pairs:
        missing = sorted(set(seeds[cell]) - set(pairs[cell]))
        if missing:
            warnings.append(
                f"{cell}: seed(s) {missing} have no baseline run with the same seed and are not in Δ."
            )
        if len(pairs[cell]) == 1 and paired:
            warnings.append(f"{cell}: one seed pair, so its Δ interval holds patient variation only.")
    tuning = _tuning(parent_tags, list(sel.by_cell))
    if tuning.startswith("UNEQUAL"):
        warnings.append(f"Tuning budgets differ: {tuning}.")
    return Methods(
        n_boot=n_boot,
        seed=seed,
        unit="",
        paired=paired,
        seeds=seeds,
        pairs=pairs,
        data_hash=sel.data_hash,
        data=data,
        matrix=parent_tags.get(TAG_MATRIX, "?"),
        experiment=tracker.experiment,
        parent_id=sel.parent.run_id if sel.parent else None,
        runs={c: [r.run_id for r in rs] for c, rs in sel.by_cell.items()},
        backbone_sources=sources,
        code_versions=sorted({r.tags.get(TAG_CODE_VERSION, "?") for r in runs}),
        report_code_version=code_version(),
        tuning=tuning,
        warnings=warnings,
        notes=list(sel.notes),
    )


def _tuning(parent_tags: dict[str, str], cells: list[str]) -> str:
    """How the compared cells were tuned, from the tags a study recipe sets on the ablation parent."""
    per_cell = {c: parent_tags.get(TAG_TUNED_TRIALS + c) for c in cells}
    if TAG_TUNING not in parent_tags:
        return "not recorded (runs not made by `cxrfa pipeline run`); check ablations/tuned/ for overlays"
    if len(set(per_cell.values())) == 1:
        return parent_tags[TAG_TUNING]
    shown = ", ".join(f"{c}: {v or 'none'}" for c, v in per_cell.items())
    return f"UNEQUAL between cells ({shown}); Δ may favour the better-tuned cells"
