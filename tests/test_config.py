"""Matrix files: validation errors name the file and key; expansion is complete and hashes are stable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cxrfa.config import DEMO_BACKBONES, REAL_BACKBONES, BackboneConfig, expand, load_matrix
from cxrfa.errors import CxrfaError
from cxrfa.models.registry import load_backbones

SHIPPED = ["full", "smoke", "visual-only", "dual-branch", "alignment", "ladder", "baselines"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_matrices_expand(name: str) -> None:
    m = load_matrix(name)
    runs = expand(m, DEMO_BACKBONES)
    assert len(runs) == len(m.cells) * len(m.seeds)
    assert len({r.config_hash() for r in runs}) == len(runs)  # every cell x seed is a distinct run
    assert Path(m.source).read_text().startswith("#")  # header comment shows the command
    assert f"cxrfa ablate --matrix {name}" in Path(m.source).read_text()


def test_full_matrix_is_the_nine_design_cells_text_controls_ladder_and_baselines_times_three_seeds() -> None:
    runs = expand(load_matrix("full"), DEMO_BACKBONES)
    assert len(runs) == 60
    cells = {r.cell: r for r in runs}
    assert set(cells) == {
        "visual-clip",
        "visual-biomedclip",
        "visual-custom",
        "dual-learned",
        "dual-clip",
        "dual-clip-shuffled",
        "dual-clip-free",
        "dual-biomedclip",
        "dual-learned-biomedclip",
        "dual-custom",
        "dual-learned-custom",
        "align-clip",
        "align-biomedclip",
        "zeroshot-clip",
        "probe-clip",
        "pixels",
        "ladder-domain",
        "ladder-orthogonal",
        "ladder-expression",
        "ladder-supcon",
    }
    assert cells["visual-clip"].model.text is None and not cells["visual-clip"].model.aligner
    assert (
        cells["dual-custom"].model.visual.name == "custom" and cells["dual-custom"].model.text.name == "clip"
    )
    # the capacity control is dual-clip without the text: same heads, same losses, learned queries
    control, dual = cells["dual-learned"], cells["dual-clip"]
    assert control.model.text is None and control.model.queries == "learned"
    assert control.model.model_copy(update={"text": dual.model.text, "queries": "text"}) == dual.model
    assert control.loss == dual.loss
    # every other text control differs from its text cell in one model key only
    twins = {
        "dual-clip-shuffled": ("dual-clip", {"text_order": "shuffled"}),
        "dual-clip-free": ("dual-clip", {"text_proj": "free"}),
        "dual-learned-biomedclip": ("dual-biomedclip", {"text": None, "queries": "learned"}),
        "dual-learned-custom": ("dual-custom", {"text": None, "queries": "learned"}),
    }
    for name, (text_cell, change) in twins.items():
        assert cells[text_cell].model.model_copy(update=change) == cells[name].model, name
        assert cells[text_cell].loss == cells[name].loss and cells[text_cell].train == cells[name].train
    assert dual.model.text_proj == "fixed" and dual.model.text_order == "kept"
    for name in ("align-clip", "align-biomedclip"):
        align = cells[name]
        assert align.model.orthogonal and align.model.aligner
        assert align.loss.domain > 0 and align.loss.consistency > 0 and align.loss.report > 0
        assert align.loss.expression > 0 and align.loss.supcon > 0  # the seed's whole model
    assert cells["pixels"].kind == "pixels"
    assert cells["dual-biomedclip"].model.text.name == "biomedclip"


def test_hash_is_stable_across_processes_and_sensitive_to_config() -> None:
    runs = expand(load_matrix("smoke"), DEMO_BACKBONES)
    code = "from cxrfa.config import *; print(expand(load_matrix('smoke'), DEMO_BACKBONES)[0].config_hash())"
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert other == runs[0].config_hash()
    tweaked = expand(load_matrix("smoke"), DEMO_BACKBONES, overrides={"train.lr": 0.01})
    assert tweaked[0].config_hash() != runs[0].config_hash() and tweaked[0].train.lr == 0.01
    real = expand(load_matrix("smoke"), REAL_BACKBONES)
    assert real[0].model.visual.arch == "ViT-B-16" and real[0].config_hash() != runs[0].config_hash()


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    return str(path)


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\ncells:\n  a:\n    model: {visual: clip, widht: 8}\n")
    with pytest.raises(CxrfaError, match=r"m\.yaml.*cell 'a'.*model\.widht: unknown key"):
        load_matrix(path)


def test_impossible_cell_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\ncells:\n  bad:\n    model: {visual: clip, aligner: true}\n")
    with pytest.raises(CxrfaError, match=r"m\.yaml.*'bad'.*aligner needs label prototypes"):
        load_matrix(path)


def test_top_level_typo_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(CxrfaError, match=r"sedes: unknown key"):
        load_matrix(_write(tmp_path, "name: x\nsedes: [1]\ncells: {a: {model: {visual: clip}}}\n"))
    with pytest.raises(CxrfaError, match=r"m\.yaml: line \d+ is not valid YAML"):
        load_matrix(_write(tmp_path, "name: x\ncells: {a: [\n"))


def test_unknown_matrix_backbone_and_cell() -> None:
    with pytest.raises(CxrfaError, match="no matrix 'nope'.*known: .*full"):
        load_matrix("nope")
    with pytest.raises(CxrfaError, match="expected 'real', 'demo' or a YAML file"):
        load_backbones("imaginary")
    with pytest.raises(CxrfaError, match="no cell 'zzz'"):
        expand(load_matrix("smoke"), DEMO_BACKBONES, cells=["zzz"])


def test_backbone_file(tmp_path: Path) -> None:
    path = tmp_path / "bb.yaml"
    path.write_text("clip: {name: clip, arch: ViT-B-32, pretrained: /weights/vit.pt}\n")
    runs = expand(load_matrix("smoke"), load_backbones(str(path)))
    assert runs[0].model.visual.arch == "ViT-B-32"
    assert runs[0].model.visual.source == "local:/weights/vit.pt"
    with pytest.raises(CxrfaError, match="backbone 'clip' is not in backbone set"):
        (tmp_path / "empty.yaml").write_text("custom: {name: custom, arch: cxrfa-cnn-small}\n")
        expand(load_matrix("smoke"), load_backbones(str(tmp_path / "empty.yaml")))


def test_backbone_names_come_from_the_encoder_registry(tmp_path: Path) -> None:
    """No second list of encoder names in the config: a newly registered entry is accepted, a typo is one
    error naming the file, the key and the registered names."""
    from cxrfa.models.registry import _REGISTRY, register_encoder
    from cxrfa.preflight import check_backbone

    path = tmp_path / "bb.yaml"
    path.write_text("clip: {name: clipp, arch: ViT-B-32}\n")
    with pytest.raises(
        CxrfaError, match=r"bb.yaml: clip.name: unknown encoder 'clipp'; known: biomedclip, clip, custom"
    ):
        load_backbones(str(path))
    with pytest.raises(CxrfaError, match="unknown encoder 'clipp'"):  # an inline backbone of a matrix
        check_backbone(BackboneConfig(name="clipp", arch="x"))
    register_encoder("mine", has_text=False)(lambda cfg, device: None)  # type: ignore[arg-type,return-value]
    try:
        path.write_text("custom: {name: mine, arch: anything, pretrained: demo}\n")
        assert load_backbones(str(path)).backbones["custom"].name == "mine"
    finally:
        del _REGISTRY["mine"]
