"""UMAP views of image and label-text embeddings in one space: a static Figure and an offline HTML page.

UMAP is fitted on the union of image and label-text embeddings so both live in the same 2-D/3-D layout.
``umap`` is imported inside :func:`umap_embed` because its numba JIT costs seconds.
"""

from __future__ import annotations

import html
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from matplotlib.figure import Figure

from cxrfa.errors import CxrfaError
from cxrfa.explore._common import ArrayLike, l2_normalise, to_numpy
from cxrfa.labels import display_name

NO_FINDING = "No finding"
MIN_POINTS = 4
_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5",
    "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354",
)  # fmt: skip
_GREY = "#9a9a9a"


def umap_embed(points: ArrayLike, dims: int = 2, seed: int = 0, n_neighbors: int | None = None) -> np.ndarray:
    """Seeded UMAP (cosine metric) of ``points`` (N, D) into (N, dims), dims 2 or 3.

    ``n_neighbors`` defaults to min(15, N - 1) so small sets work; tiny sets use a random initialisation
    (the spectral one needs more points than dimensions). Same input and seed -> same output.

    Raises:
        CxrfaError: fewer than 4 points.
    """
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims}")
    x = to_numpy(points)
    n = x.shape[0]
    if n < MIN_POINTS:
        raise CxrfaError(
            f"UMAP needs at least {MIN_POINTS} points, got {n}; use more images (a larger split)"
        )
    import umap  # heavy (numba JIT)

    reducer = umap.UMAP(
        n_components=dims,
        n_neighbors=n_neighbors or min(15, n - 1),
        metric="cosine",
        min_dist=0.1,
        init="spectral" if n > 4 * dims + 4 else "random",
        random_state=seed,
        n_jobs=1,  # a seeded UMAP runs single-threaded anyway; saying so avoids its warning
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # eigsh fallbacks on small graphs
        return np.asarray(reducer.fit_transform(x), dtype=np.float64)


def image_groups(y_true: ArrayLike, labels: Sequence[str]) -> list[str]:
    """Colour group per image: its first present label (label-set order), or ``"No finding"``."""
    y = np.nan_to_num(to_numpy(y_true), nan=0.0) == 1  # (N, C) unknown counts as not present
    return [labels[int(np.argmax(row))] if row.any() else NO_FINDING for row in y]


@dataclass(frozen=True)
class UmapLayout:
    """Image and label-text points in one UMAP space.

    Attributes:
        image_xy: (N, dims) image coordinates.
        text_xy: (C, dims) label-text coordinates.
        groups: N colour groups (first present label or "No finding").
        labels: C label names (text points, in order).
        image_ids: N hover names (e.g. image paths).
    """

    image_xy: np.ndarray
    text_xy: np.ndarray
    groups: list[str]
    labels: list[str]
    image_ids: list[str] = field(default_factory=list)

    @property
    def dims(self) -> int:
        return int(self.image_xy.shape[1])

    def colours(self) -> dict[str, str]:
        """Group -> hex colour, label order (stable across figures); "No finding" grey."""
        out = {lab: _PALETTE[i % len(_PALETTE)] for i, lab in enumerate(self.labels)}
        out[NO_FINDING] = _GREY
        return out


def umap_layout(
    img: ArrayLike,
    txt_labels: ArrayLike,
    y_true: ArrayLike,
    labels: Sequence[str],
    dims: int = 2,
    seed: int = 0,
    image_ids: Sequence[str] | None = None,
) -> UmapLayout:
    """Fit UMAP on the union of image (N, D) and label-text (C, D) embeddings (both L2-normalised)."""
    img_n, txt_n = l2_normalise(to_numpy(img)), l2_normalise(to_numpy(txt_labels))
    if img_n.shape[1] != txt_n.shape[1] or txt_n.shape[0] != len(labels):
        raise ValueError(f"image {img_n.shape} / text {txt_n.shape} / {len(labels)} labels do not match")
    xy = umap_embed(np.concatenate([img_n, txt_n]), dims=dims, seed=seed)  # (N + C, dims)
    n = img_n.shape[0]
    ids = list(image_ids) if image_ids is not None else [f"image {i}" for i in range(n)]
    return UmapLayout(xy[:n], xy[n:], image_groups(y_true, labels), list(labels), ids)


def umap_figure(layout: UmapLayout, title: str = "UMAP of image and label-text embeddings") -> Figure:
    """Scatter of image points coloured by group; label-text embeddings as named star markers."""
    colours = layout.colours()
    three_d = layout.dims == 3
    fig = Figure(figsize=(9.0, 7.0), layout="constrained")
    ax = fig.add_subplot(projection="3d" if three_d else None)
    groups = np.asarray(layout.groups)
    for group in [NO_FINDING, *layout.labels]:
        mask = groups == group
        if mask.any():
            pts = layout.image_xy[mask].T
            ax.scatter(
                *pts, s=10, alpha=0.7, color=colours[group], label=f"{display_name(group)} ({mask.sum()})"
            )
    ax.scatter(*layout.text_xy.T, s=220, marker="*", color=[colours[lab] for lab in layout.labels],
               edgecolors="black", linewidths=0.8, zorder=5, label="label text")  # fmt: skip
    for lab, pos in zip(layout.labels, layout.text_xy, strict=True):
        if three_d:
            ax.text(*pos, "  " + display_name(lab), fontsize=8, fontweight="bold")
        else:
            ax.annotate(display_name(lab), pos, textcoords="offset points", xytext=(7, 5), fontsize=8,
                        fontweight="bold")  # fmt: skip
    ax.set_title(title)
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    if three_d:
        ax.set_zlabel("UMAP 3")
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7, markerscale=1.2, frameon=False)
    return fig


def _unit_box(layout: UmapLayout) -> tuple[np.ndarray, np.ndarray]:
    allp = np.concatenate([layout.image_xy, layout.text_xy])
    centre = (allp.max(0) + allp.min(0)) / 2
    scale = max(float(np.abs(allp - centre).max()), 1e-12)
    return (layout.image_xy - centre) / scale, (layout.text_xy - centre) / scale  # coordinates in [-1, 1]


def umap_html(layout: UmapLayout, title: str = "UMAP of image and label-text embeddings") -> str:
    """A self-contained interactive HTML page (inline SVG + JS, no network): hover names, a legend that
    toggles groups, and drag-to-rotate for 3-D layouts."""
    colours = layout.colours()
    img_u, txt_u = _unit_box(layout)
    index = {g: i for i, g in enumerate([*layout.labels, NO_FINDING])}
    points = [
        {"p": [round(float(v), 5) for v in pos], "g": index[g], "t": f"{ident} — {display_name(g)}"}
        for pos, g, ident in zip(img_u, layout.groups, layout.image_ids, strict=True)
    ]
    stars = [
        {"p": [round(float(v), 5) for v in pos], "g": index[lab], "t": display_name(lab)}
        for pos, lab in zip(txt_u, layout.labels, strict=True)
    ]
    counts = {g: layout.groups.count(g) for g in index}
    legend = "".join(
        f'<li data-g="{i}"><span style="background:{colours[g]}"></span>{html.escape(display_name(g))} '
        f"({counts[g]})</li>"
        for g, i in index.items()
    )
    data = {"dims": layout.dims, "points": points, "stars": stars, "colours": [colours[g] for g in index]}
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return _TEMPLATE.format(title=html.escape(title), legend=legend, data=payload)


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body{{font:13px sans-serif;margin:16px;color:#222}} #wrap{{display:flex;gap:16px}}
svg{{border:1px solid #ccc;background:#fff;cursor:grab}} .hidden{{display:none}}
ul{{list-style:none;padding:0;margin:0;max-height:640px;overflow:auto}} li{{cursor:pointer;margin:2px 0}}
li span{{display:inline-block;width:11px;height:11px;margin-right:6px;border-radius:2px}} li.off{{opacity:.35}}
text.name{{font-weight:bold;font-size:11px;paint-order:stroke;stroke:#fff;stroke-width:3px}}
</style></head><body>
<h2>{title}</h2>
<p>Circles: images, coloured by their first present label. Stars: label-text embeddings.
Hover for names; click a legend entry to hide it<span id="rot">; drag to rotate</span>.</p>
<div id="wrap"><svg id="plot" width="680" height="640" viewBox="0 0 680 640" role="img"></svg>
<ul id="legend">{legend}</ul></div>
<script id="data" type="application/json">{data}</script>
<script>
(function(){{
const D=JSON.parse(document.getElementById('data').textContent), NS='http://www.w3.org/2000/svg';
const svg=document.getElementById('plot'), W=680, H=640, R=290; let yaw=0.6, pitch=0.35;
if(D.dims<3){{document.getElementById('rot').remove();yaw=0;pitch=0;}}
function el(tag,attrs){{const e=document.createElementNS(NS,tag);for(const k in attrs)e.setAttribute(k,attrs[k]);return e;}}
function project(p){{const x=p[0],y=p[1],z=D.dims>2?p[2]:0;
  const x1=x*Math.cos(yaw)+z*Math.sin(yaw), z1=-x*Math.sin(yaw)+z*Math.cos(yaw);
  const y1=y*Math.cos(pitch)-z1*Math.sin(pitch); return [W/2+R*x1, H/2-R*y1];}}
const items=[];
function add(item,star){{const g=el('g',{{'data-g':item.g}}), c=D.colours[item.g];
  if(star){{g.appendChild(el('path',{{d:'M0,-9L2.6,-3.1L8.6,-2.8L3.9,1.2L5.3,7.3L0,4L-5.3,7.3L-3.9,1.2L-8.6,-2.8L-2.6,-3.1Z',
    fill:c,stroke:'#000','stroke-width':1}}));
    const t=el('text',{{x:10,y:-8,'class':'name'}});t.textContent=item.t;g.appendChild(t);}}
  else g.appendChild(el('circle',{{r:3.2,fill:c,'fill-opacity':0.75}}));
  const ti=el('title',{{}});ti.textContent=(star?'label text: ':'')+item.t;g.appendChild(ti);
  svg.appendChild(g);items.push([g,item.p]);}}
D.points.forEach(p=>add(p,false)); D.stars.forEach(p=>add(p,true));
function draw(){{for(const [g,p] of items){{const s=project(p);g.setAttribute('transform','translate('+s[0].toFixed(1)+','+s[1].toFixed(1)+')');}}}}
draw();
let drag=null; if(D.dims>2){{
  svg.addEventListener('mousedown',e=>{{drag=[e.clientX,e.clientY];}});
  window.addEventListener('mouseup',()=>{{drag=null;}});
  window.addEventListener('mousemove',e=>{{if(!drag)return;yaw+=(e.clientX-drag[0])*0.01;
    pitch+=(e.clientY-drag[1])*0.01;drag=[e.clientX,e.clientY];draw();}});}}
document.querySelectorAll('#legend li').forEach(li=>li.addEventListener('click',()=>{{
  li.classList.toggle('off'); const g=li.getAttribute('data-g');
  svg.querySelectorAll('g[data-g="'+g+'"]').forEach(n=>n.classList.toggle('hidden'));}}));
}})();
</script></body></html>
"""
