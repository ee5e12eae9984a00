"""The numbers of a comparison: the matrix's declared contrasts on every compared metric (Holm within each family),
each cell's metrics with one interval each, the constant-prevalence baseline, per-label AUROC and its Δ, the worst
subgroup gap against its null level.

Every interval and test is :func:`cxrfa.stats.seed_patient_t` / :func:`cxrfa.stats.paired_seed_test`: a t-interval
over seeds (or seed pairs) whose variance adds the patient variance all seeds share, from one set of patient
resamples used for every run (so differences are paired). The metrics are the :class:`cxrfa.metrics.MetricSpec`
registry: a metric recomputable from the logged predictions, or from a per-run file of per-patient sums (the
modality gap), is resampled over patients (the subgroup gaps inside each subgroup); one only logged per run (the
label-prototype similarity) gets the seed part alone, and says why (:attr:`cxrfa.metrics.MetricSpec.resample`).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrfa.compare.runs import Selection, TestSet, gather, select_runs
from cxrfa.config import FRACTION_SEP, flatten, fraction_name, parse_contrast, read_yaml, split_fraction
from cxrfa.errors import CxrfaError
from cxrfa.metrics import (
    MetricSpec,
    cluster_codes,
    get_metric,
    list_metrics,
    row_counts,
    score_weighted,
    worst_gap_null,
)
from cxrfa.stats import SeedTest, delong_test, holm, paired_seed_test, seed_patient_t, shared_patient_var
from cxrfa.tracking import (
    TAG_BACKBONE_SOURCE,
    TAG_CODE_VERSION,
    TAG_CONTRASTS,
    TAG_DATA,
    TAG_MATRIX,
    TAG_SEED,
    TAG_TUNED_TRIALS,
    TAG_TUNING,
    Tracker,
    code_version,
)

log = logging.getLogger(__name__)

GROUP_ORDER = {"head": 0, "medium": 1, "tail": 2}
CONSTANT = "constant (train prevalence)"  # the row of the constant predictor
CONSTANT_METRICS = ("macro_auc", "map", "map_head", "map_medium", "map_tail", "mse", "ece")  # defined for it
N_PERM = 200  # subgroup-label permutations for the worst gap's null level
ADHOC = "ad hoc"  # family of --baseline contrasts


@dataclass
class Methods:
    """How the numbers were made and what they were made from (the report's methods + provenance block)."""

    n_boot: int
    seed: int
    unit: str  # what a bootstrap resample draws
    paired: bool  # predictions were read (patient-resampled intervals and paired tests)
    seeds: dict[str, list[int]]  # cell -> seeds
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
    n_patients: int = 0
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    """A comparison of the cells of one ablation.

    Attributes:
        metric: the headline metric (``test/macro_auc``); the report's answers and contrast table use it.
        baseline: the reference cell of the per-label Δ (``--baseline``, else the matrix's first cell).
        cells: one row per cell (then the constant predictor): ``seeds`` and per metric ``<m>``, ``<m> low``,
            ``<m> high`` (the one interval of that number).
        contrasts: one row per family x contrast x metric: ``family``, ``cell``, ``other``, ``metric``,
            ``pairs``, ``delta``, ``low``, ``high``, ``se``, ``df``, ``p``, ``p_holm`` (within family and metric),
            ``prob_improvement``, ``mde`` (minimum detectable Δ, 80% power), ``resample``.
        per_label, per_label_low, per_label_high: cells x labels mean test AUROC and its interval.
        label_delta, label_delta_low, label_delta_high, label_p_holm: cells x labels Δ AUROC vs ``baseline``,
            its interval and p Holm-adjusted over labels (NaN for the baseline itself).
        fairness: per cell each subgroup's TPR gap with its interval (``fair/sex/tpr_gap/F``, ``... low``,
            ``... high``) and the worst gap's level under no group difference (``null_mean``, ``null_q95``: mean
            and 95th percentile of the permutation null, averaged over seeds).
        label_info: per label ``group`` and ``n_pos`` (test positives), in ``per_label`` order.
        legend: cell -> what defines it (its overrides of the matrix's base config).
        methods: see :class:`Methods`.
    """

    metric: str
    baseline: str
    cells: pd.DataFrame
    contrasts: pd.DataFrame
    per_label: pd.DataFrame
    per_label_low: pd.DataFrame
    per_label_high: pd.DataFrame
    label_delta: pd.DataFrame
    label_delta_low: pd.DataFrame
    label_delta_high: pd.DataFrame
    label_p_holm: pd.DataFrame
    fairness: pd.DataFrame
    label_info: pd.DataFrame
    legend: dict[str, str]
    methods: Methods

    @property
    def parent_id(self) -> str | None:
        return self.methods.parent_id

    @property
    def spec(self) -> MetricSpec:
        return get_metric(self.metric)

    @property
    def result(self) -> pd.DataFrame:
        """Per cell (the constant predictor left out) the headline metric: ``seeds``, ``mean``, ``ci_low``,
        ``ci_high`` — the shape :func:`cxrfa.compare.efficiency.efficiency_table` reads."""
        m = self.spec.name
        table = self.cells.drop(index=[CONSTANT], errors="ignore")
        return pd.DataFrame(
            {
                "seeds": table["seeds"],
                "mean": table[m],
                "ci_low": table[f"{m} low"],
                "ci_high": table[f"{m} high"],
            }
        )

    def headline_contrasts(self) -> pd.DataFrame:
        """The contrast rows of the headline metric, families in declaration order."""
        return (
            self.contrasts[self.contrasts["metric"] == self.spec.name]
            if len(self.contrasts)
            else self.contrasts
        )


def compare(
    tracker: Tracker,
    parent_id: str | None = None,
    metric: str = "test/macro_auc",
    baseline: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> Comparison:
    """Compare the cells of one ablation (``parent_id``, or the experiment's newest) on its declared contrasts.

    Args:
        tracker: the store and experiment.
        parent_id: the ablation's parent run; None = the newest parent (or, without parents, one data hash).
        metric: the headline metric (a :func:`cxrfa.metrics.list_metrics` name, ``test/`` prefix optional).
        baseline: adds an ad-hoc family "every cell − baseline" and is the per-label Δ's reference (default: the
            matrix's first cell; without declared contrasts the ad-hoc family is tested against it).
        n_boot: patient resamples (0: seeds only, no predictions read).
        seed: seed of the resamples.
        progress: show progress bars.

    Raises:
        CxrfaError: no runs, mixed data hashes, an unknown metric or baseline, or runs whose test sets disagree.
    """
    try:
        spec = get_metric(metric)
    except KeyError as err:
        raise CxrfaError(f"--metric {metric!r}: {err.args[0]}") from None
    sel = select_runs(tracker, parent_id)
    cells = list(sel.by_cell)
    if baseline is not None and baseline not in sel.by_cell:
        raise CxrfaError(f"--baseline {baseline!r}: no finished runs of that cell; cells: {', '.join(cells)}")
    seeds = {c: [int(r.tags.get(TAG_SEED, "0")) for r in runs] for c, runs in sel.by_cell.items()}
    methods = _methods(tracker, sel, n_boot, seed, n_boot > 0, seeds)
    families = _families(sel, baseline, methods)
    reference = baseline or cells[0]
    if n_boot > 0:
        test = gather(tracker, sel, progress)
        methods.unit = test.unit
        methods.n_patients = len(set(test.patients)) if test.patients is not None else len(test.paths)
        methods.notes += test.notes
        if test.patients is None:
            methods.warnings.append(f"Bootstrap over {test.unit}.")
        values, per_label = _score_all(test, sel, n_boot, seed, progress)
        _score_artifacts(test, n_boot, seed, values, methods)
        constant = _constant(test, n_boot, seed)
        fairness = _fairness(test, sel, seed, values, methods.n_patients)
    else:
        test, values, per_label, constant = None, {}, {}, None
        fairness = pd.DataFrame()
    logged = {r.run_id: r.metrics for r in sel.runs}
    cell_frame = _cell_table(sel, values, logged, constant, methods)
    contrast_frame = _contrast_table(sel, families, values, logged, methods)
    *label_frames, label_info = _per_label(sel, test, per_label, reference, methods)
    return Comparison(
        f"test/{spec.name}" if spec.paired else spec.name,
        reference,
        cell_frame,
        contrast_frame,
        *label_frames,
        fairness=fairness,
        label_info=label_info,
        legend=_legend(tracker, sel),
        methods=methods,
    )


# ---------------------------------------------------------------------------------------------------------
# What is tested


def _fraction_suffixes(sel: Selection) -> list[tuple[str, str]]:
    """(cell-name suffix, family suffix) per label fraction the cells ran at: ``("", "")`` for a plain matrix,
    ``("@0.1", " @ 10% labels")``… when every cell carries a fraction (``cxrfa.config.split_fraction``)."""
    fractions = sorted({split_fraction(cell)[1] for cell in sel.by_cell} - {None})
    if not fractions:
        return [("", "")]
    return [(f"{FRACTION_SEP}{fraction_name(f)}", f" @ {f * 100:g}% labels") for f in fractions]


def _families(sel: Selection, baseline: str | None, methods: Methods) -> dict[str, list[tuple[str, str]]]:
    """Family -> contrasts to test: the parent's declared ones whose cells ran, plus ``--baseline``'s ad-hoc family."""
    declared: dict[str, list[str]] = {}
    if sel.parent is not None:
        try:
            declared = json.loads(sel.parent.tags.get(TAG_CONTRASTS, "{}"))
        except json.JSONDecodeError:
            methods.notes.append(f"the parent's {TAG_CONTRASTS} tag is not JSON; no declared contrasts read")
    families: dict[str, list[tuple[str, str]]] = {}
    for family, items in declared.items():
        try:
            pairs = [parse_contrast(item, f"{TAG_CONTRASTS} {family}") for item in items]
        except ValueError as err:  # a hand-edited tag: say so, test the rest
            methods.notes.append(str(err))
            continue
        for suffix, at in _fraction_suffixes(
            sel
        ):  # a label-fraction matrix: the family again at each fraction
            ran = []
            for a, b in pairs:
                if a + suffix in sel.by_cell and b + suffix in sel.by_cell:
                    ran.append((a + suffix, b + suffix))
                else:
                    methods.notes.append(
                        f"contrast {a} − {b} ({family}{at}) not tested: a cell has no finished runs"
                    )
            if ran:
                families[family + at] = ran
    cells = list(sel.by_cell)
    if baseline is not None or not families:
        ref = baseline or cells[0]
        adhoc = [(c, ref) for c in cells if c != ref]
        if adhoc:
            families[f"{ADHOC}: vs {ref}"] = adhoc
    return families


# ---------------------------------------------------------------------------------------------------------
# Scoring


Scores = dict[str, dict[str, np.ndarray]]  # run id -> metric -> (1 + B,) test-set value then resamples


def _score_all(
    test: TestSet, sel: Selection, n_boot: int, seed: int, progress: bool
) -> tuple[Scores, dict[str, np.ndarray]]:
    """Every paired metric and per-label AUROC of every run, on the test set and the shared patient resamples
    (threads: numpy releases the GIL in the ranking loops)."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    groups = test.label_info["group"].reindex(test.labels).fillna("").tolist()
    specs = list_metrics(paired=True)

    def score(run_id: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
        return score_weighted(
            test.y,
            test.probs[run_id],
            specs,
            n_boot,
            seed,
            test.patients,
            test.thresholds.get(run_id),
            groups,
            test.subgroups,
        )

    ids = [r.run_id for r in sel.runs]
    with ThreadPoolExecutor(max_workers=min(len(ids), os.cpu_count() or 1, 8)) as pool:
        jobs = tqdm(
            pool.map(score, ids), total=len(ids), desc="compare: bootstrap", unit="run", disable=not progress
        )
        done = dict(zip(ids, jobs, strict=True))
    return {k: v[0] for k, v in done.items()}, {k: v[1] for k, v in done.items()}


def _score_artifacts(test: TestSet, n_boot: int, seed: int, values: Scores, methods: Methods) -> None:
    """Metrics computed from a per-run file (the modality gap's per-patient sums), into ``values``: the logged
    value, then one replicate per patient resample, drawn exactly as :func:`_score_all`'s (``row_counts`` of the
    same patient codes and seed), so they pair with every other metric's. A run without a usable file is left
    out, and its metric counts by seeds only."""
    specs = {m.name: m for m in list_metrics() if m.patient_score is not None and test.artifacts.get(m.name)}
    if not specs:
        return
    if test.patients is None:
        methods.notes.append(
            f"no patient ids: {', '.join(specs)} by seeds only (their files are per patient)"
        )
        return
    codes = cluster_codes(test.patients, len(test.paths))
    first = np.unique(codes, return_index=True)[1]  # (G,) one row of each patient, in code order
    index = {pid: g for g, pid in enumerate(np.unique(test.patients.astype(str)))}  # cluster_codes' order
    usable: dict[tuple[str, str], np.ndarray] = {}  # (metric, run) -> its file's patients as codes
    parts: dict[tuple[str, str], list[np.ndarray]] = {}  # (metric, run) -> its value, then replicate chunks
    for name, spec in specs.items():
        for run_id, arrays in test.artifacts[name].items():
            pos = np.array([index.get(str(p), -1) for p in arrays.get("patients", [""])], dtype=np.int64)
            if (pos < 0).any():
                methods.notes.append(
                    f"run {run_id}: {spec.artifact} lacks patients or has some outside the test set; "
                    f"{name} by its seed only"
                )
                continue
            try:
                parts[name, run_id] = [spec.patient_score(arrays, np.ones((1, pos.size)))]
            except (KeyError, IndexError, ValueError) as err:  # a damaged file, not a bug of this run's model
                methods.notes.append(
                    f"run {run_id}: {spec.artifact} unusable ({err!r:.80}); {name} by its seed only"
                )
                continue
            usable[name, run_id] = pos
    for counts in row_counts(codes, n_boot, seed):  # (b, N) the draws every run's predictions were scored on
        per_patient = counts[:, first]  # (b, G) a patient's rows all carry its draw count
        for (name, run_id), pos in usable.items():
            parts[name, run_id].append(
                specs[name].patient_score(test.artifacts[name][run_id], per_patient[:, pos])
            )
    for (name, run_id), chunks in parts.items():
        values[run_id][name] = np.concatenate(chunks)


def _constant(test: TestSet, n_boot: int, seed: int) -> dict[str, np.ndarray] | None:
    """The constant predictor's metrics (every image gets the train prevalence), on the same resamples."""
    if test.prevalence is None:
        return None
    prob = np.broadcast_to(np.nan_to_num(test.prevalence), test.y.shape).copy()  # (N, C)
    specs = [get_metric(m) for m in CONSTANT_METRICS]
    groups = test.label_info["group"].reindex(test.labels).fillna("").tolist()
    values, _ = score_weighted(test.y, prob, specs, n_boot, seed, test.patients, None, groups)
    return values


def _fairness(test: TestSet, sel: Selection, seed: int, values: Scores, n_patients: int) -> pd.DataFrame:
    """Per cell: each subgroup's TPR gap over seeds with its interval (``fair/<attr>/tpr_gap/<group>``, ``... low``,
    ``... high``), and the worst gap's null level (permuted subgroup labels): ``null_mean``, ``null_q95``."""
    if test.subgroups is None or test.subgroups.empty:
        return pd.DataFrame()
    rows = {}
    for cell, runs in sel.by_cell.items():
        nulls = [
            worst_gap_null(
                test.y, test.probs[r.run_id], test.thresholds.get(r.run_id), test.subgroups, N_PERM, seed
            )
            for r in runs
        ]
        row = {
            "null_mean": float(np.nanmean([n.mean() for n in nulls])),
            "null_q95": float(np.nanmean([np.nanpercentile(n, 95) for n in nulls])),
        }
        keys = dict.fromkeys(k for r in runs for k in values[r.run_id] if "/tpr_gap/" in k)
        for key in keys:
            if all(key in values[r.run_id] for r in runs):
                reps = np.stack([values[r.run_id][key] for r in runs])  # (K, 1 + B)
                row[key], row[f"{key} low"], row[f"{key} high"] = _level(
                    reps[:, 0].tolist(), reps[:, 1:], n_patients, (-1.0, 1.0)
                )
        rows[cell] = row
    return pd.DataFrame(rows).T


def _clip(res: SeedTest, bounds: tuple[float, float] | None) -> tuple[float, float]:
    if bounds is None:
        return res.low, res.high
    return float(np.clip(res.low, *bounds)), float(np.clip(res.high, *bounds))


def _delta_bounds(bounds: tuple[float, float] | None) -> tuple[float, float] | None:
    """The range a difference of two values in ``bounds`` lives in: a t interval on two seeds (t = 12.7) can
    reach past it, and is clipped to it like a level's."""
    return None if bounds is None else (bounds[0] - bounds[1], bounds[1] - bounds[0])


def _level(
    points: list[float], reps: np.ndarray | None, n_patients: int, bounds: tuple[float, float] | None
) -> tuple[float, float, float]:
    """A cell's value over seeds and its one interval: seed spread + shared patient variance, clipped to range."""
    shared = shared_patient_var(reps) if reps is not None else 0.0
    res = seed_patient_t(points, shared, max(n_patients - 1, 1) if reps is not None else np.inf, null=None)
    return (res.value, *_clip(res, bounds))


def _cell_table(
    sel: Selection,
    values: Scores,
    logged: dict[str, dict[str, float]],
    constant: dict[str, np.ndarray] | None,
    methods: Methods,
) -> pd.DataFrame:
    rows: dict[str, dict[str, float]] = {}
    for cell, runs in sel.by_cell.items():
        row: dict[str, float] = {"seeds": float(len(runs))}
        for spec in list_metrics():
            points, reps = _values(spec, [r.run_id for r in runs], values, logged)
            if points:
                row[spec.name], row[f"{spec.name} low"], row[f"{spec.name} high"] = _level(
                    points, reps, methods.n_patients, spec.bounds
                )
        rows[cell] = row
    if constant is not None:
        row = {"seeds": float("nan")}
        for name, v in constant.items():
            row[name], row[f"{name} low"], row[f"{name} high"] = _level(
                [float(v[0])], v[None, 1:], methods.n_patients, get_metric(name).bounds
            )
        rows[CONSTANT] = row
    return pd.DataFrame(rows).T


def _values(
    spec: MetricSpec, run_ids: list[str], values: Scores, logged: dict[str, dict[str, float]]
) -> tuple[list[float], np.ndarray | None]:
    """Per-seed values of one metric and (K, B) patient replicates (None for a metric only logged per run, or
    one some of the runs could not recompute: then their logged values, by seeds)."""
    if spec.paired and values and all(spec.name in values[r] for r in run_ids):
        arrays = np.stack([values[r][spec.name] for r in run_ids])  # (K, 1 + B)
        return arrays[:, 0].tolist(), arrays[:, 1:]
    key = spec.name if spec.name.startswith("embed/") else f"test/{spec.name}"
    found = [logged[r][key] for r in run_ids if key in logged[r]]
    return found, None


def _contrast_table(
    sel: Selection,
    families: dict[str, list[tuple[str, str]]],
    values: Scores,
    logged: dict[str, dict[str, float]],
    methods: Methods,
) -> pd.DataFrame:
    by_seed = {c: {int(r.tags.get(TAG_SEED, "0")): r.run_id for r in runs} for c, runs in sel.by_cell.items()}
    rows = []
    for family, pairs in families.items():
        for cell, other in pairs:
            common = sorted(set(by_seed[cell]) & set(by_seed[other]))
            missing = sorted(set(by_seed[cell]) ^ set(by_seed[other]))
            note = f"{cell} − {other}: seed(s) {missing} are not in both cells and not paired."
            if missing and note not in methods.warnings:  # a contrast may sit in two families
                methods.warnings.append(note)
            if not common:
                continue
            a, b = [by_seed[cell][s] for s in common], [by_seed[other][s] for s in common]
            for spec in list_metrics():
                pa, ra = _values(spec, a, values, logged)
                pb, rb = _values(spec, b, values, logged)
                if len(pa) != len(common) or len(pb) != len(common):
                    continue  # a metric some runs did not log
                res = paired_seed_test(
                    pa,
                    pb,
                    replicates=None if ra is None or rb is None else ra - rb,
                    n_patients=methods.n_patients or None,
                    higher_is_better=spec.higher_is_better,
                )
                rows.append(
                    {
                        "family": family,
                        "cell": cell,
                        "other": other,
                        "metric": spec.name,
                        "pairs": len(common),
                        "delta": res.value,
                        **dict(zip(("low", "high"), _clip(res, _delta_bounds(spec.bounds)), strict=True)),
                        "se": res.se,
                        "df": res.df,
                        "p": res.p,
                        "prob_improvement": res.prob_improvement,
                        "mde": res.mde,
                        "resample": spec.resample if ra is not None or not spec.paired else "seeds only",
                    }
                )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["p_holm"] = np.nan
    for _, idx in frame.groupby(["family", "metric"], sort=False).groups.items():
        frame.loc[idx, "p_holm"] = holm(frame.loc[idx, "p"].to_numpy(float))
    return frame


def _per_label(
    sel: Selection,
    test: TestSet | None,
    per_label: dict[str, np.ndarray],
    reference: str,
    methods: Methods,
) -> tuple[pd.DataFrame, ...]:
    """Absolute per-label AUROC per cell and Δ vs ``reference``, each with its interval; Δ p Holm over labels.

    With one seed pair, and one image per patient, the Δ's p-value is DeLong's test on that pair of runs; with
    several images per patient DeLong would treat them as independent, so the patient-resampled test is used.
    """
    if test is None:
        labels = sorted(
            {k.removeprefix("test/auc/") for r in sel.runs for k in r.metrics if k.startswith("test/auc/")}
        )
        means = pd.DataFrame(
            {
                lab: [
                    np.nanmean([r.metrics.get(f"test/auc/{lab}", np.nan) for r in runs])
                    for runs in sel.by_cell.values()
                ]
                for lab in labels
            },
            index=list(sel.by_cell),
        )
        nan = means * np.nan
        info = pd.DataFrame({"group": "", "n_pos": 0}, index=labels)
        return means, nan, nan.copy(), nan.copy(), nan.copy(), nan.copy(), nan.copy(), info
    c = len(test.labels)
    one_image_each = test.patients is not None and len(set(test.patients)) == len(test.paths)
    out = {k: {} for k in ("mean", "low", "high", "delta", "dlow", "dhigh", "p")}
    ref_runs = {int(r.tags.get(TAG_SEED, "0")): r.run_id for r in sel.by_cell[reference]}
    for cell, runs in sel.by_cell.items():
        arrays = np.stack([per_label[r.run_id] for r in runs])  # (K, 1 + B, C)
        levels = [
            _level(arrays[:, 0, j].tolist(), arrays[:, 1:, j], methods.n_patients, (0.0, 1.0))
            for j in range(c)
        ]
        out["mean"][cell], out["low"][cell], out["high"][cell] = (
            np.array(v) for v in zip(*levels, strict=True)
        )
        pairs = [(r.run_id, ref_runs[s]) for r in runs if (s := int(r.tags.get(TAG_SEED, "0"))) in ref_runs]
        nan = np.full(c, np.nan)
        if cell == reference or not pairs:
            out["delta"][cell], out["dlow"][cell], out["dhigh"][cell], out["p"][cell] = nan, nan, nan, nan
            continue
        mine = np.stack([per_label[a] for a, _ in pairs])  # (K, 1 + B, C)
        theirs = np.stack([per_label[b] for _, b in pairs])
        tests = [
            paired_seed_test(
                mine[:, 0, j],
                theirs[:, 0, j],
                replicates=mine[:, 1:, j] - theirs[:, 1:, j],
                n_patients=methods.n_patients,
            )
            for j in range(c)
        ]
        p = np.array([t.p for t in tests])
        if len(pairs) == 1 and one_image_each:
            p = _delong_p(test, *pairs[0])
        out["delta"][cell] = np.array([t.value for t in tests])
        clipped = np.array([_clip(t, _delta_bounds((0.0, 1.0))) for t in tests]).reshape(c, 2)  # Δ AUROC
        out["dlow"][cell], out["dhigh"][cell] = clipped[:, 0], clipped[:, 1]
        out["p"][cell] = holm(p)

    def frame(values: dict[str, np.ndarray]) -> pd.DataFrame:
        return pd.DataFrame(values, index=test.labels).T  # cells x labels

    info = test.label_info
    order = sorted(
        info.index, key=lambda lab: (GROUP_ORDER.get(info.at[lab, "group"], 3), -info.at[lab, "n_pos"])
    )
    frames = [frame(out[k])[order] for k in ("mean", "low", "high", "delta", "dlow", "dhigh", "p")]
    return (*frames, info.loc[order])


def _delong_p(test: TestSet, run: str, ref: str) -> np.ndarray:
    """(C,) DeLong p-value per label of one pair of runs (known rows of each label)."""
    p = np.full(len(test.labels), np.nan)
    for j in range(len(test.labels)):
        known = np.isfinite(test.y[:, j])
        p[j] = delong_test(test.y[known, j], test.probs[ref][known, j], test.probs[run][known, j])[2]
    return p


# ---------------------------------------------------------------------------------------------------------
# Provenance


def _legend(tracker: Tracker, sel: Selection) -> dict[str, str]:
    """Cell -> its overrides of the matrix's base (from the parent's ``matrix.yaml``), e.g. ``model.text=clip``."""
    if sel.parent is None:
        return {}
    try:
        with tempfile.TemporaryDirectory(prefix="cxrfa-compare-") as folder:
            matrix = read_yaml(tracker.download(sel.parent.run_id, "matrix.yaml", Path(folder)))
    except CxrfaError:
        return {}
    cells = matrix.get("cells", {}) if isinstance(matrix, dict) else {}
    base = flatten(matrix.get("base", {}) or {})
    legend = {}
    for cell in sel.by_cell:
        diff = {k: v for k, v in flatten(cells.get(cell) or {}).items() if base.get(k) != v}
        legend[cell] = ", ".join(f"{k}={v}" for k, v in diff.items()) or "the base config"
    return legend


def _methods(
    tracker: Tracker, sel: Selection, n_boot: int, seed: int, paired: bool, seeds: dict[str, list[int]]
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
    tuning = _tuning(parent_tags, list(sel.by_cell))
    if tuning.startswith("UNEQUAL"):
        warnings.append(f"Tuning budgets differ: {tuning}.")
    return Methods(
        n_boot=n_boot,
        seed=seed,
        unit="",
        paired=paired,
        seeds=seeds,
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
