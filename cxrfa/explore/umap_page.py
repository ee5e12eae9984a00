"""The interactive UMAP page: a plotly figure of a :class:`~cxrfa.explore.umap_view.UmapLayout` with one
colouring per finding and per patient attribute, hover text per image, written as one offline HTML file."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cxrfa.explore.umap_view import (
    GREY,
    STAR,
    UmapLayout,
    data_extent,
    group_order,
    label_slots,
    name_positions,
)
from cxrfa.labels import display_name

if TYPE_CHECKING:
    import plotly.graph_objects as go

_PRESENT, _ABSENT, _UNKNOWN = "#d62728", "#c8c8c8", "#6baed6"


@dataclass
class _Colouring:
    """One entry of the colour-by menu: image categories (name, mask (N,), colour) drawn in order, and which
    label's star to highlight."""

    name: str
    categories: list[tuple[str, np.ndarray, str]]
    highlight: str | None = None
    star_colours: list[str] | None = None


_ATTRIBUTE_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _colourings(layout: UmapLayout) -> list[_Colouring]:
    """Finding; then site, view, sex, age; then one present/absent/unknown colouring per label."""
    colours = layout.colours()
    groups = np.asarray(layout.groups)
    out = [
        _Colouring(
            "finding",
            [(display_name(g), groups == g, colours[g]) for g in group_order(layout)],
            star_colours=[colours[lab] for lab in layout.labels],
        )
    ]
    for name, values in layout.attributes.items():
        vals = np.asarray(values, dtype=object)
        kinds = sorted(set(values) - {"unknown"}, key=lambda v: (values.count(v) * -1, v))
        if name == "age":
            from cxrfa.data.ages import AGE_BINS

            kinds = [a for a in AGE_BINS if a in kinds]
        cats = [(k, vals == k, _ATTRIBUTE_PALETTE[i % len(_ATTRIBUTE_PALETTE)]) for i, k in enumerate(kinds)]
        out.append(_Colouring(name, [("unknown", vals == "unknown", GREY), *cats]))
    if layout.y_true is not None:
        for j, lab in enumerate(layout.labels):
            col = layout.y_true[:, j]
            out.append(
                _Colouring(
                    f"label: {display_name(lab)}",
                    [
                        ("absent", col == 0, _ABSENT),
                        ("unknown", ~np.isfinite(col), _UNKNOWN),
                        ("present", col == 1, _PRESENT),
                    ],
                    highlight=lab,
                )
            )
    return out


def _hover(layout: UmapLayout) -> list[str]:
    """Per-image hover text: name, findings (and unknown labels), attributes."""
    lines = [html.escape(i) for i in layout.image_ids]
    if layout.y_true is not None:
        for i, row in enumerate(layout.y_true):
            present = [display_name(lab) for lab, v in zip(layout.labels, row, strict=True) if v == 1]
            unknown = int((~np.isfinite(row)).sum())
            lines[i] += "<br>findings: " + (", ".join(present) or "none")
            lines[i] += f" ({unknown} unknown)" if unknown else ""
    else:
        lines = [f"{t}<br>{html.escape(display_name(g))}" for t, g in zip(lines, layout.groups, strict=True)]
    for name, values in layout.attributes.items():
        lines = [f"{t}<br>{name}: {html.escape(v)}" for t, v in zip(lines, values, strict=True)]
    return lines


def umap_plotly(layout: UmapLayout, title: str = "UMAP of image and label-text embeddings") -> go.Figure:
    """Interactive plotly figure: a colour-by menu (finding, site, view, sex, age, each label present/absent/
    unknown), legend entries that hide or isolate categories, zoom, hover names; label texts as large starred
    points with their names (diamonds in 3-D)."""
    import plotly.graph_objects as go

    three_d = layout.dims == 3
    hover = np.asarray(_hover(layout), dtype=object)
    names = [display_name(lab) for lab in layout.labels]
    colourings = _colourings(layout)
    fig = go.Figure()
    visible: list[int] = []  # colouring index of each trace

    def coords(xy: np.ndarray) -> dict[str, np.ndarray]:
        axes = ("x", "y", "z") if three_d else ("x", "y")
        return {a: xy[:, k].astype(np.float32) for k, a in enumerate(axes)}

    scatter = go.Scatter3d if three_d else (go.Scattergl if len(hover) > 5000 else go.Scatter)
    for k, col in enumerate(colourings):
        for cat, mask, colour in col.categories:
            if not mask.any():
                continue
            fig.add_trace(
                scatter(
                    **coords(layout.image_xy[mask]),
                    mode="markers",
                    name=f"{cat} ({int(mask.sum())})",
                    marker={"size": 3 if three_d else 6, "color": colour, "opacity": 0.8},
                    hovertext=hover[mask],
                    hovertemplate="%{hovertext}<extra></extra>",
                    legendgroup=f"{k}",
                    visible=k == 0,
                )
            )
            visible.append(k)
        sizes = [34 if lab == col.highlight else 22 for lab in layout.labels]
        fills = col.star_colours or [_PRESENT if lab == col.highlight else STAR for lab in layout.labels]
        star = go.Scatter3d if three_d else go.Scatter  # SVG: drawn above WebGL image points
        fig.add_trace(
            star(
                **coords(layout.text_xy),
                mode="markers",
                name="label texts",
                text=names,
                marker={
                    "symbol": "diamond" if three_d else "star",
                    "size": [s // (2 if three_d else 1) for s in sizes],
                    "color": fills,
                    "line": {"width": 1.5, "color": "#000"},
                },
                hovertemplate="label text: %{text}<extra></extra>",
                legendgroup=f"{k}",
                visible=k == 0,
            )
        )
        visible.append(k)
    buttons = [
        {
            "label": col.name,
            "method": "update",
            "args": [{"visible": [v == k for v in visible]}, {"legend.title.text": f"colour by {col.name}"}],
        }
        for k, col in enumerate(colourings)
    ]
    axis = {"showgrid": False, "zeroline": False}
    common = {
        "showarrow": True,
        "arrowhead": 0,
        "arrowwidth": 0.8,
        "arrowcolor": "#555",
        "bgcolor": "rgba(255,255,255,0.6)",
        "font": {"size": 12, "color": "#111"},
    }
    if three_d:  # scene annotations take offsets in pixels only
        slots = label_slots(layout.text_xy, names, data_extent(layout))
        names_at = [
            {
                "x": p[0],
                "y": p[1],
                "z": p[2],
                "text": f"<b>{html.escape(n)}</b>",
                "ax": 36 * side,
                "ay": 16 * line,
                "xanchor": "left" if side else "center",
                **common,
            }
            for n, p, (side, line) in zip(names, layout.text_xy.tolist(), slots, strict=True)
        ]
    else:
        text_xy, left = name_positions(layout.text_xy, names, data_extent(layout))
        names_at = [
            {
                "x": p[0],
                "y": p[1],
                "ax": t[0],
                "ay": t[1],
                "axref": "x",
                "ayref": "y",
                "text": f"<b>{html.escape(n)}</b>",
                "xanchor": "left" if is_left else "center",
                **common,
            }
            for n, p, t, is_left in zip(names, layout.text_xy.tolist(), text_xy.tolist(), left, strict=True)
        ]
    fig.update_layout(
        title={"text": html.escape(title), "x": 0.5},
        template="plotly_white",
        height=760,
        legend={"title": {"text": f"colour by {colourings[0].name}"}, "itemsizing": "constant"},
        updatemenus=[
            {
                "buttons": buttons,
                "direction": "down",
                "x": 0.0,
                "xanchor": "left",
                "y": 1.08,
                "yanchor": "bottom",
                "showactive": True,
            }
        ],
        annotations=[
            {
                "text": "colour by",
                "x": 0.0,
                "xanchor": "right",
                "y": 1.1,
                "yanchor": "bottom",
                "xref": "paper",
                "yref": "paper",
                "showarrow": False,
            }
        ],
        margin={"t": 110},
    )
    if three_d:
        fig.update_scenes(
            xaxis_title="UMAP 1", yaxis_title="UMAP 2", zaxis_title="UMAP 3", annotations=names_at
        )
    else:
        fig.update_layout(annotations=[*fig.layout.annotations, *names_at])
        fig.update_xaxes(title="UMAP 1", **axis)
        fig.update_yaxes(title="UMAP 2", scaleanchor="x", scaleratio=1, **axis)
    return fig


def umap_html(layout: UmapLayout, title: str = "UMAP of image and label-text embeddings") -> str:
    """A self-contained interactive HTML page: :func:`umap_plotly` with plotly.js embedded (works offline),
    and a short note on how the layout was made and how to use it."""
    body = umap_plotly(layout, title).to_html(
        include_plotlyjs=True, full_html=False, config={"displaylogo": False, "responsive": True}
    )
    how = (
        "Images are laid out by UMAP (cosine) of their embeddings; each label text (star) is placed by UMAP's "
        "transform from its nearest images, so it sits among the images its text is most similar to. "
        "Use <b>colour by</b> for finding, site, view, sex, age or one label (present / absent / unknown); "
        "click a legend entry to hide it, double-click to isolate it; drag to zoom, double-click to reset."
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font:14px sans-serif;margin:12px 20px;color:#222} p{max-width:70em}</style></head><body>\n"
        f"<p>{how}</p>\n{body}\n</body></html>\n"
    )
