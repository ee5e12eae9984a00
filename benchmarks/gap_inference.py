"""The modality gap's interval and contrast test as `compare` makes them, by simulation (numbers in
benchmarks/README.md, "Inference").

Each simulated ablation scores K seeds of two cells on one test set of patients with 1-3 images each. A run's
image-side feature of image i, label c is L̂_c + shift·u + e_i,c + f_cell,i,c + r_run,i,c: e shared by every run
(the same image), f by the seeds of one cell (how that model sees the image), r the run's own. The gap of a run
is computed from its per-patient sums (:func:`cxrfa.metrics.gap_statistics`), its patient replicates on the
resamples every run shares (:func:`cxrfa.metrics.row_counts`), and the test is :func:`cxrfa.stats.paired_seed_test`
/ the interval :func:`cxrfa.stats.seed_patient_t` with :func:`cxrfa.stats.shared_patient_var`, as `compare` does;
`seeds only` is the same test without the replicates (what the gap had before its sums were logged).

The interval's target is the gap expected of a test set of this size (the gap is a norm, so a finite test set's
gap sits above the population's); it is estimated from 4,000 fresh test sets.

Run:  python benchmarks/gap_inference.py              (65 s of CPU; 5 minutes on 2 shared cores at load 15)
      python benchmarks/gap_inference.py --reps 100  (a quick look)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cxrfa.metrics import cluster_codes, gap_statistics, row_counts, weighted_gap
from cxrfa.stats import paired_seed_test, seed_patient_t, shared_patient_var

C, D, N_PATIENTS, PREVALENCE = 5, 16, 100, 0.3
SD_IMAGE, SD_CELL, SD_RUN = 0.25, 0.15, 0.05
SHIFT = 0.3


def _test_set(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(N,) patient ids of 1-3 images each and (N, C) labels."""
    patients = np.repeat(np.arange(N_PATIENTS), rng.integers(1, 4, N_PATIENTS)).astype(str)
    return patients, (rng.random((patients.size, C)) < PREVALENCE).astype(float)


def _gap(feats: np.ndarray, protos: np.ndarray, y: np.ndarray, patients: np.ndarray) -> float:
    stats = gap_statistics(feats, protos, y, patients)
    return float(weighted_gap(stats, np.ones((1, stats["patients"].size)))[0])


def one_ablation(
    rng: np.random.Generator, protos: np.ndarray, u: np.ndarray, k: int, delta: float, n_boot: int
) -> dict[str, np.ndarray]:
    """Per cell (a: shift + delta, b: shift) the K gaps and their (K, B) patient replicates."""
    patients, y = _test_set(rng)
    codes = cluster_codes(patients, patients.size)
    first = np.unique(codes, return_index=True)[1]
    counts = np.concatenate(list(row_counts(codes, n_boot, int(rng.integers(1 << 30)))))[:, first]  # (B, P)
    ids = np.unique(patients)
    common = SD_IMAGE * rng.normal(size=(patients.size, C, D))
    out = {}
    for cell, shift in (("a", SHIFT + delta), ("b", SHIFT)):
        own = SD_CELL * rng.normal(size=common.shape)
        points, reps = [], []
        for _ in range(k):
            feats = protos[None] + shift * u + common + own + SD_RUN * rng.normal(size=common.shape)
            stats = gap_statistics(feats, protos, y, patients)
            pos = np.searchsorted(ids, stats["patients"])
            points.append(float(weighted_gap(stats, np.ones((1, pos.size)))[0]))
            reps.append(weighted_gap(stats, counts[:, pos]))
        out[cell], out[cell + " reps"] = np.array(points), np.stack(reps)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=400, help="simulated ablations per row")
    parser.add_argument("--boot", type=int, default=200, help="patient resamples")
    args = parser.parse_args()
    fixed = np.random.default_rng(0)
    protos = fixed.normal(size=(C, D))
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    u = fixed.normal(size=D)
    u /= np.linalg.norm(u)
    start = time.process_time()
    target = []  # the gap expected of one run on a test set of this size (fresh images every time)
    for _ in range(4000):
        patients, y = _test_set(fixed)
        noise = np.sqrt(SD_IMAGE**2 + SD_CELL**2 + SD_RUN**2) * fixed.normal(size=(patients.size, C, D))
        target.append(_gap(protos[None] + SHIFT * u + noise, protos, y, patients))
    expected = float(np.mean(target))
    print(
        f"expected gap of one run at shift {SHIFT}: {expected:.4f} (SE {np.std(target) / np.sqrt(4000):.4f})"
    )
    print(
        "seeds | Δ planted | p<0.05 seed+patient | p<0.05 seeds only | cell interval covers: seed+patient | seeds only"
    )
    for k in (3, 5, 10):
        for delta in (0.0, 0.02, 0.05):
            rng = np.random.default_rng([k, int(delta * 1000)])
            hits, hits_seed, cover, cover_seed = 0, 0, 0, 0
            for _ in range(args.reps):
                sim = one_ablation(rng, protos, u, k, delta, args.boot)
                test = paired_seed_test(
                    sim["a"], sim["b"], replicates=sim["a reps"] - sim["b reps"], n_patients=N_PATIENTS
                )
                hits += test.p < 0.05
                hits_seed += paired_seed_test(sim["a"], sim["b"]).p < 0.05
                level = seed_patient_t(
                    sim["b"].tolist(), shared_patient_var(sim["b reps"]), N_PATIENTS - 1, null=None
                )
                cover += level.low < expected < level.high
                seeds = seed_patient_t(sim["b"].tolist(), 0.0, null=None)
                cover_seed += seeds.low < expected < seeds.high
            r = args.reps
            print(
                f"{k:5d} | {delta:9.2f} | {hits / r:19.3f} | {hits_seed / r:17.3f} | "
                f"{cover / r:34.3f} | {cover_seed / r:.3f}"
            )
    print(f"CPU {time.process_time() - start:.0f} s")


if __name__ == "__main__":
    main()
