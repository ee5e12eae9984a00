"""``cxrfa data``: ``synth`` (synthetic demo CXRs), ``index`` (any format -> manifest), ``stats``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrfa.cli._common import console, user_errors
from cxrfa.labels import Blank, Uncertain

data_app = typer.Typer(
    help="Datasets: synthesise, index real formats into a manifest, summarise.", no_args_is_help=True
)


@data_app.command("synth")
@user_errors
def synth(
    out: Annotated[Path, typer.Option("--out", help="Output folder (images/ and manifest.csv).")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of images.")] = 2000,
    size: Annotated[int, typer.Option("--size", min=32, help="Image side in pixels.")] = 96,
    seed: Annotated[int, typer.Option("--seed", help="Dataset seed (same seed -> identical files).")] = 0,
    nih_layout: Annotated[
        bool,
        typer.Option("--nih-layout", help="Also write Data_Entry_2017_v2020.csv and the NIH split lists."),
    ] = False,
) -> None:
    """Generate synthetic chest X-rays with NIH-14 labels, reports and a patient-level split."""
    from cxrfa.data.synth import synthesize

    path = synthesize(out, n, size, seed, nih_layout=nih_layout, progress=True)
    console.print(f"wrote {n} images and {path}", highlight=False, soft_wrap=True)


@data_app.command("formats")
@user_errors
def formats() -> None:
    """List the dataset formats ``cxrfa data index --format`` reads."""
    from rich.console import Console
    from rich.table import Table

    from cxrfa.data.readers import list_readers

    table = Table(title="formats (--format)")
    for col in ("name", "reads"):
        table.add_column(col, overflow="fold")
    for info in list_readers():
        table.add_row(info.name, info.description)
    Console().print(table)  # stdout: the answer; logs and errors go to stderr


@data_app.command("index")
@user_errors
def index(
    fmt: Annotated[str, typer.Option("--format", help="Source format (`cxrfa data formats` lists them).")],
    root: Annotated[Path, typer.Option("--root", help="Dataset folder; manifest paths are relative to it.")],
    out: Annotated[Path, typer.Option("--out", help="Manifest file to write.")],
    csv: Annotated[
        Path | None, typer.Option("--csv", help="Label CSV when not at its standard place.")
    ] = None,
    label_set: Annotated[str, typer.Option("--label-set", help="nih14 | chexpert14 | cxr-lt26")] = "nih14",
    uncertain: Annotated[
        Uncertain,
        typer.Option(
            "--uncertain", help="A -1 label (CheXpert's uncertain): ones, zeros or ignore (= unknown)."
        ),
    ] = "ignore",
    blank: Annotated[
        Blank,
        typer.Option(
            "--blank", help="A blank label cell (empty, NA, nan, None, any case): zero (default) or unknown."
        ),
    ] = "zero",
    frontal_only: Annotated[bool, typer.Option("--frontal-only", help="Keep PA/AP views only.")] = False,
    split_seed: Annotated[int, typer.Option("--split-seed", help="Seed of the patient-level split.")] = 0,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Drop unusable rows (reported) instead of failing.")
    ] = False,
    columns: Annotated[
        str | None,
        typer.Option("--columns", help="Generic CSV mapping: path=..,patient_id=..,Label=column,..."),
    ] = None,
) -> None:
    """Index a dataset (NIH, CheXpert, MIMIC-CXR-JPG or a generic CSV) into a manifest, checking every row."""
    from cxrfa.data.indexing import index_dataset
    from cxrfa.data.manifest import write_manifest
    from cxrfa.data.readers.generic import parse_columns

    result = index_dataset(
        fmt,
        root,
        csv,
        label_set,
        uncertain,
        blank,
        frontal_only,
        split_seed,
        skip_bad,
        parse_columns(columns),
    )
    write_manifest(result.manifest, out)
    frame = result.manifest.frame
    counts = ", ".join(f"{s} {int((frame['split'] == s).sum())}" for s in ("train", "val", "test"))
    console.print(
        f"wrote {out}: {len(frame)} images, {frame['patient_id'].nunique()} patients ({counts})",
        highlight=False,
        soft_wrap=True,
    )
    for what, numbers in (("dropped", result.dropped), ("filtered out", result.filtered)):
        if numbers:
            detail = ", ".join(f"{n} {k}" for k, n in numbers.items())
            console.print(f"{what} {sum(numbers.values())} row(s): {detail}", highlight=False, soft_wrap=True)
    if result.overlap:
        console.print(
            f"[yellow]warning:[/] {len(result.overlap)} patient(s) in more than one split",
            highlight=False,
            soft_wrap=True,
        )


@data_app.command("stats")
@user_errors
def stats(manifest: Annotated[Path, typer.Argument(help="Manifest CSV.")]) -> None:
    """Per-label prevalence by split, head/medium/tail groups, patients, subgroups and a leakage check."""
    from rich.console import Console
    from rich.table import Table

    from cxrfa.data.manifest import read_manifest
    from cxrfa.data.stats import manifest_stats

    out = Console(width=max(Console().width, 120))
    st = manifest_stats(read_manifest(manifest))
    table = Table(title=f"{manifest}: label prevalence by split (group from train)")
    table.add_column("label")
    table.add_column("group")
    for s in st.splits:
        table.add_column(f"{s} pos/known", justify="right")
        table.add_column(f"{s} %", justify="right")
    for label, row in st.prevalence.iterrows():
        cells = [str(label), str(row["group"])]
        for s in st.splits:
            prev = row[f"{s}_prev"]
            cells += [f"{row[f'{s}_pos']}/{row[f'{s}_known']}", "-" if prev != prev else f"{100 * prev:.1f}"]
        table.add_row(*cells)
    out.print(table)
    sizes = Table(title="images and patients")
    sizes.add_column("split")
    sizes.add_column("images", justify="right")
    sizes.add_column("patients", justify="right")
    for s in st.splits:
        sizes.add_row(s, str(st.images[s]), str(st.patients[s]))
    out.print(sizes)
    for name, counts in st.subgroups.items():
        sub = Table(title=f"subgroup: {name}")
        sub.add_column(name)
        for s in counts.columns:
            sub.add_column(str(s), justify="right")
        for value, row in counts.iterrows():
            sub.add_row(str(value), *[str(int(v)) for v in row])
        out.print(sub)
    if st.overlap:
        first = next(iter(st.overlap))
        out.print(
            f"[bold red]leakage:[/] {len(st.overlap)} patient(s) appear in more than one split "
            f"(e.g. {first} in {'+'.join(st.overlap[first])})",
            highlight=False,
            soft_wrap=True,
        )
    else:
        out.print("leakage check: no patient appears in more than one split", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group to the main app."""
    app.add_typer(data_app, name="data")
