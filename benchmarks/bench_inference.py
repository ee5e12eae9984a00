"""Type-I error and power of the contrast test `compare` reports, by simulation (numbers in benchmarks/README.md).

Each simulated ablation has K seed pairs scored on one test set of n patients. A pair's Δ is
μ + (mean over patients of x_ik) + s_k: x_ik = a_i + b_ik is patient i's contribution, a_i shared by every seed
(the same test patients score every seed) and b_ik the seed's own; s_k ~ N(0, seed_sd²) is the training seed.
`patient_se` is the patient standard error of one pair's Δ, `shared` the share of its variance that a_i carries.
The patients are resampled B times with replacement (the same resamples for every pair, as `compare` does) and
the test sees only what `compare` sees: the K Δs and their B patient replicates each.

Methods: `seed+patient t` is :func:`cxrfa.stats.paired_seed_test` (what `compare` uses); `centred bootstrap`
is the previous seed-pair-then-patient bootstrap test (:func:`cxrfa.stats.paired_delta`), for contrast.

Run:  python benchmarks/bench_inference.py             (about 4 minutes on 2 shared cores under load)
      python benchmarks/bench_inference.py --reps 500   (a quick look)
      python benchmarks/bench_inference.py --df-check   (why the df use the seed variance's 75% bound)
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np

from cxrfa.stats import BootScores, paired_delta, paired_seed_test

ALPHA = 0.05
CHUNK = 250  # simulated ablations held in memory at once: (CHUNK, B, n) patient counts


def simulate(
    rng: np.random.Generator,
    reps: int,
    k: int,
    seed_sd: float,
    patient_se: float,
    shared: float,
    delta: float,
    n: int,
    n_boot: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(reps, K) observed Δs and (reps, K, B) their patient-bootstrap replicates (seed effect held fixed)."""
    sd_i = patient_se * np.sqrt(n)  # per-patient SD giving SE patient_se for a mean over n patients
    a = rng.normal(0, sd_i * np.sqrt(shared), (reps, n, 1))  # (R, n, 1) shared by every seed
    b = rng.normal(0, sd_i * np.sqrt(1 - shared), (reps, n, k))  # (R, n, K) each seed's own
    x = a + b  # (R, n, K)
    s = rng.normal(0, seed_sd, (reps, 1, k))  # (R, 1, K) training-seed effect
    observed = delta + x.mean(axis=1) + s[:, 0]  # (R, K)
    idx = (
        rng.integers(0, n, size=(reps * n_boot, n)) + np.arange(reps * n_boot)[:, None] * n
    )  # patients drawn
    counts = np.bincount(idx.ravel(), minlength=reps * n_boot * n).reshape(reps, n_boot, n).astype(np.float64)
    boot = delta + np.einsum("rbn,rnk->rkb", counts, x) / n + s.transpose(0, 2, 1)  # (R, K, B)
    return observed, boot


def rejections(observed: np.ndarray, boot: np.ndarray, n: int, centred: bool) -> tuple[int, int]:
    """How many simulated ablations each method rejects Δ = 0 in at ALPHA (centred bootstrap: 0 unless asked)."""
    k = observed.shape[1]
    zeros = np.zeros(k)
    ours = sum(
        paired_seed_test(o, zeros, replicates=r, n_patients=n).p < ALPHA
        for o, r in zip(observed, boot, strict=True)
    )
    if not centred:
        return int(ours), 0
    old = sum(
        [
            paired_delta(
                [BootScores(float(o[j]), r[j]) for j in range(k)],
                [BootScores(0.0, np.zeros_like(r[j])) for j in range(k)],
            ).p
            < ALPHA
            for o, r in zip(observed, boot, strict=True)
        ]
    )
    return int(ours), int(old)


def rates(rng: np.random.Generator, reps: int, *setting: float, centred: bool = False) -> tuple[float, float]:
    """Rejection rates of both methods over ``reps`` simulated ablations, simulated in chunks (bounded memory).

    ``setting``: k, seed_sd, patient_se, shared, delta, n, n_boot as :func:`simulate` takes them.
    """
    k, seed_sd, patient_se, shared, delta, n, n_boot = setting
    ours = old = 0
    for done in range(0, reps, CHUNK):
        obs, boot = simulate(
            rng, min(CHUNK, reps - done), int(k), seed_sd, patient_se, shared, delta, int(n), int(n_boot)
        )
        a, b = rejections(obs, boot, int(n), centred)
        ours, old = ours + a, old + b
    return ours / reps, old / reps


def df_rule_check(draws: int = 200_000) -> None:
    """Why the df use the seed variance's 75% upper bound: type-I error of the plug-in and the bounded df.

    Draws the test statistic directly (mean ~ normal, s² ~ scaled χ², the shared patient variance known),
    patient SE 0.02 with 90% of it shared, so millions of draws take seconds.
    """
    from scipy import stats as sps

    rng = np.random.default_rng(1)
    print("| seeds | seed SD / patient SE | plug-in df | df from the 75% bound |")
    print("|---|---|---|---|")
    shared, own = 0.9 * 0.02**2, 0.1 * 0.02**2
    for k, ratio in itertools.product((3, 5, 10), (0.25, 0.5, 1, 2, 4, 8)):
        seed_var = (ratio * 0.02) ** 2 + own  # what the seed spread estimates
        mean = rng.normal(0, np.sqrt(seed_var / k + shared), draws)
        s2 = seed_var * rng.chisquare(k - 1, draws) / (k - 1)
        se2 = s2 / k + shared
        stat = np.abs(mean) / np.sqrt(se2)
        rates = []
        for part in (s2 / k, s2 / k * (k - 1) / sps.chi2.ppf(0.25, k - 1)):
            df = (part + shared) ** 2 / (part**2 / (k - 1) + shared**2 / 149)
            rates.append(np.mean(2 * sps.t.sf(stat, df) < ALPHA))
        print(f"| {k} | {ratio} | {rates[0]:.4f} | {rates[1]:.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2000, help="simulated ablations per setting")
    parser.add_argument("--n", type=int, default=150, help="test patients")
    parser.add_argument("--n-boot", type=int, default=200, help="patient resamples")
    parser.add_argument("--df-check", action="store_true", help="only the df rule check (seconds)")
    args = parser.parse_args()
    if args.df_check:
        df_rule_check()
        return
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    patient_se = 0.02
    print(f"## Type-I error at alpha = {ALPHA} (reps = {args.reps}, n = {args.n}, B = {args.n_boot})")
    print("| seeds | seed SD / patient SE | shared patient share | seed+patient t | centred bootstrap |")
    print("|---|---|---|---|---|")
    worst = (1.0, 0.0)
    for k, ratio, shared in itertools.product((3, 5, 10), (0.25, 0.5, 1, 2, 4), (0.5, 0.9)):
        setting = (k, ratio * patient_se, patient_se, shared, 0.0, args.n, args.n_boot)
        ours, old = rates(rng, args.reps, *setting, centred=True)
        worst = (min(worst[0], ours), max(worst[1], ours))
        print(f"| {k} | {ratio} | {shared} | {ours:.3f} | {old:.3f} |")
    print(f"\nrange of the seed+patient t type-I error: [{worst[0]:.3f}, {worst[1]:.3f}]")
    print("\n## Power (seed+patient t), shared patient share 0.9")
    print("| design | seeds | Δ = 0.01 | Δ = 0.02 | Δ = 0.05 |")
    print("|---|---|---|---|---|")
    designs = {
        "seed SD 0.056, patient SE 0.021": (0.056, 0.021),
        "seed SD 0.01, patient SE 0.01": (0.01, 0.01),
    }
    for (name, (seed_sd, se)), k in itertools.product(designs.items(), (3, 5, 10)):
        row = []
        for delta in (0.01, 0.02, 0.05):
            row.append(rates(rng, args.reps, k, seed_sd, se, 0.9, delta, args.n, args.n_boot)[0])
        print(f"| {name} | {k} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    print(f"\ntook {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
