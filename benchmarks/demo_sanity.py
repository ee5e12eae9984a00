"""The checks that would catch the demo's results going wrong, read from a finished ablation in an MLflow store.

For every finished child run of the newest parent of an experiment (default: ``full`` in ``./mlruns``):
- ``max_prob``: the largest predicted probability on test (a collapsed model predicts ~0 everywhere);
- ``ece`` and the range of mean predicted probability / prevalence over labels (calibration in the large);
- ``offdiag final / raw``: mean off-diagonal cosine of the label embeddings after the text branch and as the text
  encoder gave them (collapsed label embeddings are ~1);
- per loss term, the last epoch's value against its chance value (``train/chance_<term>``), marked ``<`` when
  the term went below it (it used the image) and ``!`` when it did not.

Usage::

    python benchmarks/demo_sanity.py [--experiment full] [--tracking-uri ./mlruns]
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

from cxrfa.tracking import TAG_CELL, TAG_MATRIX, Tracker


def _mean(runs: list[dict[str, float]], key: str) -> float:
    return statistics.mean(m[key] for m in runs if key in m)


def _terms(metrics: dict[str, float]) -> list[str]:
    return sorted(k.removeprefix("train/chance_") for k in metrics if k.startswith("train/chance_"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="full")
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args()
    tracker = Tracker(args.tracking_uri, args.experiment)
    parents = [
        r for r in tracker.search() if TAG_MATRIX in r.tags and r.tags.get("mlflow.parentRunId") is None
    ]
    if not parents:
        raise SystemExit(f"no ablation parent run in experiment {args.experiment!r}")
    parent = max(parents, key=lambda r: r.start_time or 0)
    rows: dict[str, list[dict[str, float]]] = defaultdict(list)
    for run in sorted(tracker.children(parent.run_id), key=lambda r: r.start_time):
        if run.status == "FINISHED":
            # a run's metrics hold each key's value at its largest step: a training curve's last epoch
            rows[run.tags[TAG_CELL]].append(dict(run.metrics))
    visual_ece = [m["test/ece"] for cell, ms in rows.items() if cell.startswith("visual") for m in ms]
    print(f"parent {parent.run_id}; visual-only ECE {statistics.mean(visual_ece):.4f}" if visual_ece else "")
    print(
        "| cell | runs | min max_prob | ECE | mean p / prevalence | offdiag final / raw | terms vs chance |"
    )
    print("|---|---|---|---|---|---|---|")
    for cell, ms in rows.items():
        sim = (
            f"{_mean(ms, 'embed/mean_offdiag_sim/final'):.3f} / {_mean(ms, 'embed/mean_offdiag_sim/raw'):.3f}"
            if any("embed/mean_offdiag_sim/final" in m for m in ms)
            else "–"
        )
        terms = []
        for term in _terms(ms[0]):
            loss, chance = _mean(ms, f"train/loss_{term}"), _mean(ms, f"train/chance_{term}")
            terms.append(f"{term} {loss:.3f} {'<' if loss < chance else '!'} {chance:.3f}")
        print(
            f"| {cell} | {len(ms)} | {min(m['test/max_prob'] for m in ms):.3f} | {_mean(ms, 'test/ece'):.4f} | "
            f"{min(m['test/prevalence_ratio_min'] for m in ms):.2f}–{max(m['test/prevalence_ratio_max'] for m in ms):.2f}"
            f" | {sim} | {'; '.join(terms)} |"
        )

    _text_table(rows)


def _fmt(ms: list[dict[str, float]], key: str, spec: str) -> str:
    return format(_mean(ms, key), spec) if any(key in m for m in ms) else "–"


def _text_table(rows: dict[str, list[dict[str, float]]]) -> None:
    """Is the text still there? Trainable parameters, prototype drift and the backbones' own zero-shot."""
    print()
    print(
        "| cell | trainable params | drift angle (°) | Procrustes vs text (chance) | Procrustes vs init "
        "| stand-in zero-shot test (visual / text) |"
    )
    print("|---|---|---|---|---|---|")
    for cell, ms in rows.items():
        text = _fmt(ms, "drift/procrustes_text", ".3f")
        if text != "–":
            text += f" ({_fmt(ms, 'drift/procrustes_text_chance', '.3f')})"
        zeroshot = " / ".join(
            _fmt(ms, f"standin/{role}/zeroshot_auc_test", ".3f") for role in ("visual", "text")
        )
        print(
            f"| {cell} | {_fmt(ms, 'model/params_trainable', ',.0f')} | {_fmt(ms, 'drift/angle_deg', '.1f')} "
            f"| {text} | {_fmt(ms, 'drift/procrustes_init', '.3f')} | {zeroshot} |"
        )


if __name__ == "__main__":
    main()
