"""Where an ablation's wall time went, from its tracking store: run wall time by cell and each worker's timeline.

    python benchmarks/demo_runs.py --tracking-uri mlruns --experiment full

Per cell: the mean and summed wall time of its runs (MLflow start to end). Per worker process (the runs'
``cxrfa.owner``): its first start, last end, the time inside runs, and the time between them (claiming the next
unit, building what the next run needed before its MLflow run started: data, stand-ins, features). Results are
recorded in benchmarks/README.md, "The full demo".
"""

from __future__ import annotations

import argparse

import mlflow

from cxrfa.tracking import TAG_CELL, TAG_OWNER, Tracker


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tracking-uri", default="mlruns")
    parser.add_argument("--experiment", default="full")
    args = parser.parse_args()
    tracker = Tracker(args.tracking_uri, args.experiment)  # resolves a folder to its SQLite store
    mlflow.set_tracking_uri(tracker.uri)
    frame = mlflow.search_runs(experiment_names=[args.experiment], max_results=100_000)
    frame = frame[frame[f"tags.{TAG_CELL}"].notna()].copy()
    frame["wall"] = (frame["end_time"] - frame["start_time"]).dt.total_seconds()
    span = (frame["end_time"].max() - frame["start_time"].min()).total_seconds()
    print(
        f"{len(frame)} runs; first start to last end {span:.0f} s; runs' wall summed {frame['wall'].sum():.0f} s"
    )
    cells = frame.groupby(f"tags.{TAG_CELL}")["wall"].agg(["count", "mean", "sum"])
    print(cells.sort_values("sum", ascending=False).round(1).to_string())
    print()
    for owner, runs in frame.groupby(f"tags.{TAG_OWNER}"):
        first, last = runs["start_time"].min(), runs["end_time"].max()
        inside = runs["wall"].sum()
        total = (last - first).total_seconds()
        print(
            f"worker {owner}: {len(runs)} runs, {first:%H:%M:%S}-{last:%H:%M:%S} ({total:.0f} s): "
            f"{inside:.0f} s in runs, {total - inside:.0f} s between them"
        )


if __name__ == "__main__":
    main()
