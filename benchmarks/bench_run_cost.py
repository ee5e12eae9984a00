"""Per-run fixed cost, in CPU seconds (a shared machine's load does not enter them), and the metric identity check.

    python benchmarks/bench_run_cost.py figures --manifest ~/.cache/cxrfa/demo/synth-n2000-s96-seed0/manifest.csv
    python benchmarks/bench_run_cost.py imports
    python benchmarks/bench_run_cost.py same-metrics STORE_A STORE_B --experiment smoke
    python benchmarks/bench_run_cost.py profile --matrix full --cell dual-clip --seed 1 --store /tmp/store [--warm]
    python benchmarks/bench_run_cost.py parts --matrix full --cell dual-clip --seed 1 --store /tmp/store

``figures``: make and save the five evaluation figures of a run (random probabilities on the manifest's test
split). ``imports``: a fresh interpreter imports the modules a run uses. ``same-metrics``: every ``test/``
metric of each finished cell run in two tracking stores, compared to the last digit (exit 1 on a difference).
``profile``: one cell's ``run_cell`` in this process under cProfile timed in CPU seconds, as a table of the
run's parts (run it in a warm ``CXRFA_HOME``: data, stand-ins and feature cache built by an earlier run).
``parts``: the same parts of a worker's later runs in CPU seconds without a profiler.
Results are recorded in benchmarks/README.md, "Per-run cost".
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import time
from pathlib import Path

_IMPORTS = """
import sys, time
start = time.process_time()
import cxrfa.cell, cxrfa.evaluate, cxrfa.plots, cxrfa.tracking
print(f"{time.process_time() - start:.2f} s CPU, {len(sys.modules)} modules")
"""


def figures(manifest_path: Path) -> None:
    """CPU seconds to make and save each evaluation figure of one run."""
    import numpy as np

    from cxrfa.data.manifest import read_manifest
    from cxrfa.evaluate import score_split
    from cxrfa.plots import calibration_plot, confusion_grid, pr_curves, roc_curves, save_png, subgroup_chart

    manifest = read_manifest(manifest_path)
    rng = np.random.default_rng(0)
    c = len(manifest.labels)
    p_test = rng.random((len(manifest.split("test")), c))  # (N, C)
    p_val = rng.random((len(manifest.split("val")), c))  # (Nv, C)
    r = score_split(manifest, "test", p_test, p_val, n_boot=200, seed=0)
    cuts = r.per_label.set_index("label")["threshold"].reindex(r.labels).tolist()
    makers = {
        "roc": lambda: roc_curves(r.y_true, r.y_prob, r.labels),
        "pr": lambda: pr_curves(r.y_true, r.y_prob, r.labels),
        "confusion": lambda: confusion_grid(r.confusion, r.labels, cuts, r.thresholds_from_val),
        "calibration": lambda: calibration_plot(r.y_true, r.y_prob),
        "subgroups": lambda: subgroup_chart(r.scalars),
    }
    total = 0.0
    for name, make in makers.items():
        start = time.process_time()
        save_png(make(), io.BytesIO())
        spent = time.process_time() - start
        total += spent
        print(f"| {name} | {spent:.2f} s CPU |")
    print(f"| all five ({len(p_test)} test images x {c} labels) | {total:.2f} s CPU |")


def imports() -> None:
    """CPU seconds and module count of a fresh interpreter importing a run's modules."""
    done = subprocess.run([sys.executable, "-c", _IMPORTS], capture_output=True, text=True, check=True)
    print(done.stdout.strip())


def same_metrics(store_a: str, store_b: str, experiment: str) -> bool:
    """True when every finished cell run (by name) has the same ``test/`` metrics in both stores."""
    from cxrfa.tracking import Tracker

    def runs(store: str) -> dict[str, dict[str, float]]:
        found = Tracker(store, experiment, create=False).search(
            "tags.`cxrfa.cell` != '' and attributes.status = 'FINISHED'"
        )
        return {r.name: {k: v for k, v in r.metrics.items() if k.startswith("test/")} for r in found}

    a, b = runs(store_a), runs(store_b)
    same = bool(a) and a.keys() == b.keys()
    for name in sorted(a.keys() | b.keys()):
        ma, mb = a.get(name, {}), b.get(name, {})
        differ = sorted(k for k in ma.keys() | mb.keys() if ma.get(k) != mb.get(k))
        same = same and not differ
        print(f"{name}: {len(ma)} test metrics, {len(differ)} differ {differ[:5] if differ else ''}")
    print("all equal" if same else "NOT equal")
    return same


# the parts of one run, as (row name, cProfile function name, file suffix): cumulative CPU seconds of each
_PARTS = (
    ("whole `run_cell`", "run_cell", "cxrfa/cell.py"),
    ("`fit`", "fit", "cxrfa/train.py"),
    ("`evaluate_model`", "evaluate_model", "cxrfa/cell_evaluation.py"),
    (
        "of which `log_evaluation` (score, log metrics, write and log files)",
        "log_evaluation",
        "cxrfa/record.py",
    ),
    ("of which `write_evaluation` (5 figures + files)", "write_evaluation", "cxrfa/evaluate.py"),
    (
        "of which the run's own files (training curves, exploration figures, checkpoint)",
        "trained_files",
        "cxrfa/cell_evaluation.py",
    ),
    ("of which matplotlib `savefig` (all figures)", "savefig", "matplotlib/figure.py"),
    ("of which `predict` (all calls, `fit`'s included)", "predict", "cxrfa/train.py"),
    ("of which exploration (gap, similarity)", "_explore", "cxrfa/cell_evaluation.py"),
    ("of which `score_split` (metrics + bootstrap)", "score_split", "cxrfa/evaluate.py"),
    ("`build_model`", "build_model", "cxrfa/models/model.py"),
    ("prototype drift metrics", "drift_metrics", "cxrfa/models/drift.py"),
    ("MLflow: run start", "start", "cxrfa/tracking/tracker.py"),
    ("MLflow: params", "log_params", "cxrfa/tracking/tracker.py"),
    ("MLflow: metrics (all calls)", "log_metrics", "cxrfa/tracking/tracker.py"),
    ("MLflow: tags (all calls)", "set_tags", "cxrfa/tracking/tracker.py"),
    ("MLflow: stale-run lookup", "abandon_unfinished", "cxrfa/tracking/tracker.py"),
    ("MLflow: run end", "finish", "cxrfa/tracking/tracker.py"),
    ("MLflow: artifacts", "log_artifacts", "cxrfa/tracking/tracker.py"),
    ("imports", "_find_and_load", "importlib._bootstrap>"),
)


def profile(matrix: str, cell: str, seed: int, store: str, top: int, warm: bool = False) -> None:
    """cProfile of one cell's ``run_cell`` in CPU seconds: the run's parts, then the top entries.

    ``warm``: run the cell once unprofiled first, so the profiled run pays no import and no first use of the
    store, as every run after the first of an ``ablate`` worker process.
    """
    import cProfile
    import pstats

    from cxrfa.cell import run_cell
    from cxrfa.config import expand, load_matrix
    from cxrfa.models.registry import load_backbones
    from cxrfa.tracking import Tracker

    m = load_matrix(matrix)
    cfg = next(c for c in expand(m, load_backbones("demo"), seeds=[seed], cells=[cell]))
    tracker = Tracker(store, m.name)
    if warm:
        run_cell(cfg, tracker, progress=False)
    prof = cProfile.Profile(time.process_time)  # CPU seconds: time waiting for a shared core is not counted
    result = prof.runcall(run_cell, cfg, tracker, progress=False)
    stats = pstats.Stats(prof)
    cumulative = {
        (path, name): row[3]
        for (path, _, name), row in stats.stats.items()  # type: ignore[attr-defined]
    }
    whole = next(v for (p, n), v in cumulative.items() if n == "run_cell" and p.endswith("cxrfa/cell.py"))
    print(f"{cfg.cell}/seed={cfg.seed}: {result.status}, test/macro_auc {result.metrics['test/macro_auc']!r}")
    print("| part | CPU seconds | share of the run |\n|---|---|---|")
    for row, name, suffix in _PARTS:
        spent = sum(v for (p, n), v in cumulative.items() if n == name and p.endswith(suffix))
        print(f"| {row} | {spent:.2f} | {spent / whole:.0%} |")
    stats.sort_stats("cumulative").print_stats(top)


def parts(matrix: str, cell: str, seed: int, store: str, repeats: int) -> None:
    """CPU seconds of a warm run's parts without a profiler: ``fit``, ``evaluate_model`` (evaluation, figures,
    files, their logging) and every MLflow call of the run; the cell runs once untimed first (imports, the
    store's first use), then ``repeats`` times timed, as an ``ablate`` worker's later runs."""
    import functools

    import cxrfa.cell
    import cxrfa.cell_evaluation
    from cxrfa.cell import run_cell
    from cxrfa.config import expand, load_matrix
    from cxrfa.models.registry import load_backbones
    from cxrfa.tracking import TrackedRun, Tracker

    spent: dict[str, float] = {}

    def timed(name: str, fn):  # type: ignore[no-untyped-def]
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            start = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.process_time() - start

        return wrapper

    m = load_matrix(matrix)
    cfg = next(c for c in expand(m, load_backbones("demo"), seeds=[seed], cells=[cell]))
    tracker = Tracker(store, m.name)
    run_cell(cfg, tracker, progress=False)
    cxrfa.cell.fit = timed("fit", cxrfa.cell.fit)  # type: ignore[attr-defined]
    cxrfa.cell_evaluation.evaluate_model = timed("evaluate_model", cxrfa.cell_evaluation.evaluate_model)
    for name in ("log_params", "log_metrics", "set_tags", "log_artifacts", "finish"):
        setattr(TrackedRun, name, timed("MLflow", getattr(TrackedRun, name)))
    for name in ("start", "abandon_unfinished"):
        setattr(Tracker, name, timed("MLflow", getattr(Tracker, name)))
    whole = 0.0
    for _ in range(repeats):
        start = time.process_time()
        run_cell(cfg, tracker, progress=False)
        whole += time.process_time() - start
    print(f"{cfg.cell}/seed={cfg.seed}, {repeats} warm run(s), mean CPU seconds:")
    print(f"| whole `run_cell` | {whole / repeats:.2f} |")
    for name in ("fit", "evaluate_model", "MLflow"):
        print(f"| {name} | {spent.get(name, 0.0) / repeats:.2f} |")
    print(f"| outside `fit` | {(whole - spent.get('fit', 0.0)) / repeats:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    fig = sub.add_parser("figures")
    fig.add_argument("--manifest", type=Path, required=True)
    sub.add_parser("imports")
    cmp = sub.add_parser("same-metrics")
    cmp.add_argument("store_a")
    cmp.add_argument("store_b")
    cmp.add_argument("--experiment", default="smoke")
    prof, part = sub.add_parser("profile"), sub.add_parser("parts")
    for one in (prof, part):  # both run one cell of a matrix
        one.add_argument("--matrix", default="full")
        one.add_argument("--cell", default="dual-clip")
        one.add_argument("--seed", type=int, default=1)
        one.add_argument("--store", required=True)
    prof.add_argument("--top", type=int, default=30)
    prof.add_argument(
        "--warm", action="store_true", help="run the cell once unprofiled first (a worker's later run)"
    )
    part.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.what == "figures":
        figures(args.manifest)
    elif args.what == "imports":
        imports()
    elif args.what == "parts":
        parts(args.matrix, args.cell, args.seed, args.store, args.repeats)
    elif args.what == "profile":
        profile(args.matrix, args.cell, args.seed, args.store, args.top, args.warm)
    elif not same_metrics(args.store_a, args.store_b, args.experiment):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
