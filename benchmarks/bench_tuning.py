"""Trials per hour of an Optuna study on the offline demo, with median pruning vs without.

Both arms tune the same cell with the same seeded random sampler, so they draw the same sequence of configs;
the only difference is whether poor trials are stopped after an epoch. Caches (demo data, stand-in backbones,
frozen features) are built once before timing.

    .venv/bin/python benchmarks/bench_tuning.py --trials 12 --epochs 4

Prints a Markdown table row per arm (for benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _arm(pruner: str, args: argparse.Namespace, root: Path) -> dict[str, float | str]:
    from cxrfa.config import load_matrix
    from cxrfa.models.registry import load_backbones
    from cxrfa.tracking import Tracker
    from cxrfa.tuning import TuneSettings, select_cell, tune

    matrix = load_matrix(args.matrix)
    cfg = select_cell(matrix, load_backbones("demo"), args.cell, 0, _overrides(args))
    work = root / pruner
    work.mkdir()
    tracker = Tracker(str(work / "mlruns"), f"bench-{pruner}")
    settings = TuneSettings(
        trials=args.trials,
        storage=str(work / "optuna.journal"),
        sampler="random",
        sampler_seed=args.seed,
        pruner=pruner,
        pruner_startup=args.startup,
        overlay_root=work / "ablations",
        progress=False,
    )
    started = time.perf_counter()
    result = tune(matrix, cfg, tracker, settings)
    seconds = time.perf_counter() - started
    return {
        "pruner": pruner,
        "trials": result.finished,
        "pruned": result.counts["PRUNED"],
        "seconds": seconds,
        "trials_per_hour": 3600 * result.finished / seconds,
        "best": result.best_value or float("nan"),
    }


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    """The demo recipe's data size and the benchmark's schedule (patience = epochs: no early stopping)."""
    return {
        "data.demo_n": args.n,
        "data.demo_size": 64,
        "train.epochs": args.epochs,
        "train.patience": args.epochs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", default="smoke")
    parser.add_argument("--cell", default="align-clip")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--n", type=int, default=600, help="synthetic images (pipelines/demo.yaml uses 600)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per trial (overrides the matrix)")
    parser.add_argument("--startup", type=int, default=2, help="median pruner: trials before any is pruned")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed, shared by both arms")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-tuning-") as tmp:
        root = Path(tmp)
        os.environ.setdefault("CXRFA_HOME", str(root / "home"))
        os.chdir(root)
        _warm_up(args, root)
        rows = [_arm(p, args, root) for p in ("none", "median")]
    print(
        f"\n{args.trials} trials of {args.matrix}/{args.cell} on {args.n} demo images, {args.epochs} epochs each, "
        f"random sampler seed {args.seed}\n"
    )
    print("| pruner | finished trials | pruned | wall s | trials / hour | best val/macro_auc |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['pruner']} | {r['trials']} | {r['pruned']} | {r['seconds']:.0f} | {r['trials_per_hour']:.0f} | {r['best']:.4f} |"
        )
    print(f"\nspeed-up with pruning: x{rows[1]['trials_per_hour'] / rows[0]['trials_per_hour']:.2f}")  # type: ignore[operator]


def _warm_up(args: argparse.Namespace, root: Path) -> None:
    """Build the demo data, stand-in weights and feature cache outside the timed arms."""
    from cxrfa.cell import run_cell
    from cxrfa.config import load_matrix
    from cxrfa.models.registry import load_backbones
    from cxrfa.tuning import select_cell

    matrix = load_matrix(args.matrix)
    cfg = select_cell(matrix, load_backbones("demo"), args.cell, 0, {**_overrides(args), "train.epochs": 1})
    run_cell(cfg, None, explore=(), progress=False)


if __name__ == "__main__":
    main()
