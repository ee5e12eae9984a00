"""Speed of the metrics hot path: full compute_metrics with bootstrap CIs at NIH ChestX-ray14 test-set scale.

The bootstrap sorts each label once and scores every resample as a vector of row counts; this compares it
with re-running scikit-learn on explicitly resampled rows (what a naive loop would do).

Run:  python benchmarks/metrics_bootstrap.py --n 25596 --labels 14 --n-boot 200
The figures are recorded in benchmarks/README.md ("Metrics and bootstrap CIs").
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrfa.metrics import compute_metrics


def _case(n: int, c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < np.linspace(0.002, 0.2, c)).astype(float)
    p = np.clip(0.3 * y + rng.random((n, c)) * 0.7, 0, 1).round(4)  # 4 decimals, like a saved CSV: ties
    y[rng.random((n, c)) < 0.05] = np.nan
    sub = pd.DataFrame(
        {"sex": rng.choice(["M", "F"], n), "age": rng.integers(1, 95, n), "view": rng.choice(["PA", "AP"], n)}
    )
    return y, p, sub


def _naive(y: np.ndarray, p: np.ndarray, n_boot: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        for j in range(y.shape[1]):
            yb, pb = y[idx, j], p[idx, j]
            m = np.isfinite(yb)
            if len(np.unique(yb[m])) == 2:
                roc_auc_score(yb[m], pb[m]), average_precision_score(yb[m], pb[m])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=25596)
    parser.add_argument("--labels", type=int, default=14)
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--naive-boot", type=int, default=10, help="resamples timed for the naive loop")
    args = parser.parse_args()
    y, p, sub = _case(args.n, args.labels)
    groups = {f"L{j}": ("tail" if j < 3 else "head") for j in range(args.labels)}
    t0 = time.perf_counter()
    compute_metrics(y, p, list(groups), subgroups=sub, label_groups=groups, n_boot=0)
    t1 = time.perf_counter()
    compute_metrics(y, p, list(groups), subgroups=sub, label_groups=groups, n_boot=args.n_boot)
    t2 = time.perf_counter()
    _naive(y, p, args.naive_boot, 0)
    t3 = time.perf_counter()
    naive_per = (t3 - t2) / args.naive_boot
    print(f"N={args.n} C={args.labels}")
    print(f"compute_metrics, no bootstrap:          {t1 - t0:7.2f} s")
    print(f"compute_metrics, {args.n_boot} resamples:        {t2 - t1:7.2f} s")
    print(
        f"naive sklearn bootstrap, per resample:  {naive_per:7.3f} s  (x{args.n_boot}: {naive_per * args.n_boot:.1f} s)"
    )


if __name__ == "__main__":
    main()
