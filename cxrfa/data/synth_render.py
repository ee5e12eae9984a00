"""Rendering of one synthetic frontal chest radiograph from its parameters (numpy only, vectorised).

The picture is built as a *density* map (higher = more attenuation = brighter): body soft tissue, two
air-filled lungs bounded below by the diaphragm domes, the cardiac silhouette and mediastinum, spine, ribs,
clavicles (and scapulae on AP films), then the findings are added as density changes. A site-specific
exposure curve, blur, noise and burned-in marker turn density into an 8-bit image.

Coordinates: ``x`` runs left to right of the image in [-1, 1] (the patient's right is on the image's left,
so the heart sits right of centre), ``y`` runs top to bottom in [-1, 1].
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

SITES: dict[str, dict[str, float]] = {
    # gamma of the exposure curve, contrast, additive offset, noise sigma, blur passes, marker corner
    "site-a": {"gamma": 1.0, "contrast": 1.0, "offset": 0.0, "noise": 0.020, "blur": 0, "marker": 0},
    "site-b": {"gamma": 0.75, "contrast": 0.85, "offset": 0.06, "noise": 0.035, "blur": 0, "marker": 1},
    "site-c": {"gamma": 1.3, "contrast": 1.1, "offset": -0.03, "noise": 0.045, "blur": 1, "marker": -1},
}


@dataclass(frozen=True)
class Anatomy:
    """Per-image geometry and appearance (patient build plus this film's positioning and view)."""

    body_w: float  # half-width of the soft-tissue outline
    lung_w: float  # half-width of each lung ellipse
    lung_h: float  # half-height of each lung ellipse
    lung_cx: float  # |x| of each lung centre
    lung_cy: float  # y of the lung centres
    dome_y: tuple[float, float]  # diaphragm dome base (image-left = patient right, image-right)
    dome_h: float  # dome height (curvature)
    heart_w: float  # half-width of the cardiac silhouette
    heart_h: float
    heart_cx: float
    rib_gap: float  # vertical spacing of posterior ribs
    bone: float  # bone density (lower with age)
    female: bool
    aortic_knob: float  # prominence of the aortic knob (unfolds with age)
    ap: bool  # AP (portable) rather than PA view
    rotate: float  # in-plane rotation, radians
    shift: tuple[float, float]  # positioning offset
    site: str


@dataclass
class Finding:
    """One present finding: its severity in (0, 1], side (-1 image-left, +1 image-right, 0 both) and spot."""

    severity: float
    side: int = 0
    spot: tuple[float, float] = (0.0, 0.0)  # centre for focal findings (lung-relative, in [-1, 1]^2)
    extra: dict[str, float] = field(default_factory=dict)


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    yy, xx = np.meshgrid(axis, axis, indexing="ij")  # (S, S) each
    return xx, yy


@functools.lru_cache(maxsize=32)
def _upsampler(res: int, size: int) -> np.ndarray:
    """(S, res) bilinear interpolation matrix: field (res, res) -> A @ field @ A.T (S, S)."""
    pos = (np.arange(size, dtype=np.float64) + 0.5) / size * (res - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, res - 2)
    frac = pos - lo
    mat = np.zeros((size, res), dtype=np.float32)
    mat[np.arange(size), lo] = 1.0 - frac
    mat[np.arange(size), lo + 1] = frac
    return mat


def smooth_noise(rng: np.random.Generator, res: int, size: int) -> np.ndarray:
    """(S, S) smooth random field, roughly unit variance, with ``res`` control points per side."""
    mat = _upsampler(res, size)
    return mat @ rng.standard_normal((res, res)).astype(np.float32) @ mat.T


def _soft(v: np.ndarray, width: float) -> np.ndarray:
    """0..1 ramp: 1 where ``v`` > width/2, 0 where ``v`` < -width/2."""
    out = v * np.float32(1.0 / width)
    out += np.float32(0.5)
    np.maximum(out, 0.0, out=out)
    return np.minimum(out, 1.0, out=out)


def _ellipse_r(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    dx = (x - np.float32(cx)) * np.float32(1.0 / ax)
    dy = (y - np.float32(cy)) * np.float32(1.0 / ay)
    dx *= dx
    dy *= dy
    dx += dy
    return np.sqrt(dx, out=dx)


def _blob(x: np.ndarray, y: np.ndarray, cx: float, cy: float, radius: float, edge: float) -> np.ndarray:
    return _soft(1.0 - _ellipse_r(x, y, cx, cy, radius, radius), edge)


def _band(dist: np.ndarray, half: float, edge: float) -> np.ndarray:
    return _soft(half - np.abs(dist), edge)


class _Scene:
    """Geometry shared by the anatomy and the findings of one image."""

    def __init__(self, a: Anatomy, size: int) -> None:
        gx, gy = _grid(size)
        cos, sin = float(np.cos(a.rotate)), float(np.sin(a.rotate))
        self.x = cos * (gx - a.shift[0]) - sin * (gy - a.shift[1])  # (S, S)
        self.y = sin * (gx - a.shift[0]) + cos * (gy - a.shift[1])
        self.a = a
        self.edge = 4.0 / size  # soft edge width: about two pixels
        mag = 1.12 if a.ap else 1.0  # AP: heart farther from the detector, so magnified
        self.heart_w, self.heart_h = a.heart_w * mag, a.heart_h * mag
        self.heart_cy = a.lung_cy + a.lung_h * 0.68
        self.r_lung: dict[int, np.ndarray] = {}
        self._lung_raw: dict[int, np.ndarray] = {}
        self.dome: dict[int, np.ndarray] = {}
        for side, base in ((-1, a.dome_y[0]), (1, a.dome_y[1])):
            cx = side * a.lung_cx
            self.r_lung[side] = _ellipse_r(self.x, self.y, cx, a.lung_cy, a.lung_w, a.lung_h)
            arch = np.clip(1.0 - ((self.x - cx) / (a.lung_w * 1.2)) ** 2, 0.0, 1.0)
            self.dome[side] = base - a.dome_h * arch  # (S, S) y of the diaphragm at each x

    def heart_mask(self) -> np.ndarray:
        r = _ellipse_r(self.x, self.y, self.a.heart_cx, self.heart_cy, self.heart_w, self.heart_h)
        return _soft(1.0 - r, self.edge * 2)

    def lung_raw(self, side: int) -> np.ndarray:
        """Lung field of one side before the heart is subtracted (1 inside, soft edge)."""
        if side not in self._lung_raw:
            inside = _soft(1.0 - self.r_lung[side], self.edge * 1.5)
            self._lung_raw[side] = inside * _soft(self.dome[side] - self.y, self.edge)
        return self._lung_raw[side]


def render_density(
    a: Anatomy, findings: dict[str, Finding], size: int, rng: np.random.Generator
) -> np.ndarray:
    """(S, S) float32 density map of one radiograph with its findings drawn in."""
    sc = _Scene(a, size)
    x, y, e = sc.x, sc.y, sc.edge
    body = _soft(1.0 - _ellipse_r(x, y, 0.0, 0.05, a.body_w, 1.25), e * 3)
    dens = 0.55 * body

    heart = sc.heart_mask()
    mediast = _band(x - 0.02, 0.10 + 0.03 * a.aortic_knob, e * 2) * _soft(sc.heart_cy - y, e)
    knob = _blob(x, y, 0.12, a.lung_cy - 0.35 * a.lung_h, 0.05 + 0.03 * a.aortic_knob, e * 3)
    solid = np.maximum(np.maximum(heart, mediast), knob)
    lungs = {s: sc.lung_raw(s) * (1.0 - solid) for s in (-1, 1)}
    lung = lungs[-1] + lungs[1]
    air = np.float32(0.36) * lung

    # lung markings: vessels fanning out from the hila, fading to the periphery
    hilar = np.exp(-(((np.abs(x) - 0.18) / 0.35) ** 2 + ((y - a.lung_cy) / 0.5) ** 2))
    vessels = np.abs(smooth_noise(rng, 14, size)) * (0.35 + hilar)
    markings = 0.045 * vessels * lung

    # abdomen below the domes, with the gastric bubble under the left hemidiaphragm
    below = np.where(x < 0, _soft(y - sc.dome[-1], e), _soft(y - sc.dome[1], e)) * body
    dens = dens + 0.05 * below
    dens = dens - 0.25 * _blob(x, y, a.lung_cx + 0.05, a.dome_y[1] + 0.08, 0.08, e * 3) * body

    # female: breast shadows over the lower zones
    if a.female:
        for s in (-1, 1):
            dens = dens + 0.07 * _blob(x, y, s * (a.lung_cx + 0.05), a.lung_cy + 0.45 * a.lung_h, 0.3, 0.3)

    # findings change air, markings and density; each returns its changes
    extra = np.zeros_like(dens)
    for name, f in findings.items():
        air, markings, extra = _FINDINGS[name](sc, f, lungs, heart, air, markings, extra, rng)

    dens = dens - air + markings + extra
    dens = dens + _bones(sc, a, lung)
    return dens.astype(np.float32)


def _bones(sc: _Scene, a: Anatomy, lung: np.ndarray) -> np.ndarray:
    x, y, e = sc.x, sc.y, sc.edge
    spine = _band(x - 0.01, 0.065, e * 2) * (0.8 + 0.2 * np.cos(y * 28.0))
    bone = 0.22 * spine
    # posterior ribs: arches over each hemithorax, sloping down laterally
    top = a.lung_cy - a.lung_h * 0.95
    lat = np.abs(x) - 0.08
    along = y - (top + 0.9 * lat * lat - 0.3 * np.sin(np.clip(lat, 0, 1) * 3.5))  # (S, S) 0 on the first rib
    dist = (along + 0.5 * a.rib_gap) % a.rib_gap - 0.5 * a.rib_gap  # to the nearest of the evenly spaced ribs
    ribs = _band(dist, 0.016, e) * (np.abs(x) > 0.07) * (along > -0.5 * a.rib_gap) * (along < 9.5 * a.rib_gap)
    bone = bone + 0.07 * ribs * (0.4 + 0.6 * lung)
    # clavicles (higher and flatter on AP films) and scapulae over the lateral lungs on AP
    cy = a.lung_cy - a.lung_h * (1.02 if a.ap else 0.88)
    clav = _band(y - (cy + (0.05 if a.ap else 0.16) * (np.abs(x) - 0.1)), 0.03, e) * _band(
        np.abs(x) - 0.35, 0.27, e
    )
    bone = bone + 0.16 * clav
    if a.ap:
        for s in (-1, 1):
            bone = bone + 0.07 * _blob(x, y, s * (a.lung_cx + a.lung_w * 0.9), a.lung_cy - 0.25, 0.3, e * 6)
    return a.bone * bone


# ----------------------------------------------------------------------------------------------------------
# findings: each maps (scene, finding, lungs, heart, air, markings, extra) -> (air, markings, extra)

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]


def _sides(f: Finding) -> tuple[int, ...]:
    return (-1, 1) if f.side == 0 else (f.side,)


def _spot_xy(sc: _Scene, f: Finding, side: int) -> tuple[float, float]:
    a = sc.a
    return side * a.lung_cx + f.spot[0] * a.lung_w * 0.6, a.lung_cy + f.spot[1] * a.lung_h * 0.6


def _cardiomegaly(sc, f, lungs, heart, air, mk, extra, rng) -> Arrays:
    # heart widened: redraw a larger silhouette and remove the air it covers
    a = sc.a
    w, h = sc.heart_w * (1.3 + 0.25 * f.severity), sc.heart_h * 1.12
    big = _soft(1.0 - _ellipse_r(sc.x, sc.y, a.heart_cx + 0.03, sc.heart_cy - 0.02, w, h), sc.edge * 2)
    keep = 1.0 - big
    return air * keep, mk * keep, extra


def _effusion(sc, f, lungs, heart, air, mk, extra, rng) -> Arrays:
    a = sc.a
    for s in _sides(f):
        height = 0.12 + 0.35 * f.severity
        lateral = np.clip((sc.x * s - a.lung_cx + a.lung_w * 0.2) / a.lung_w, 0.0, 1.5)
        level = sc.dome[s] - height + (0.06 - 0.25 * lateral * lateral) * (0.5 + f.severity)  # meniscus
        fluid = _soft(sc.y - level, 0.06) * sc.lung_raw(s)
        air = air * (1.0 - 0.85 * fluid)
        mk = mk * (1.0 - fluid)
        extra = extra + 0.08 * fluid
    return air, mk, extra


def _pneumothorax(sc, f, lungs, heart, air, mk, extra, rng) -> Arrays:
    s = f.side or 1
    rim = 0.84 - 0.22 * f.severity  # collapsed lung edge, as a fraction of the lung ellipse
    lateral = _soft((sc.x * s) - sc.a.lung_cx * 0.6, 0.1) + _soft(sc.a.lung_cy - 0.4 - sc.y, 0.2)
    region = _soft(sc.r_lung[s] - rim, sc.edge * 2) * lungs[s] * np.clip(lateral, 0, 1)
    line = _band(sc.r_lung[s] - rim, 0.012, sc.edge) * lungs[s] * np.clip(lateral, 0, 1)
    mk = mk * (1.0 - region)  # no lung markings beyond the pleural line
    air = air + 0.1 * region
    extra = extra + 0.08 * line
    return air, mk, extra


def _round_opacity(sc, f, lungs, extra, radius, dens, lobulated, rng) -> np.ndarray:
    s = f.side or 1
    cx, cy = _spot_xy(sc, f, s)
    r = _ellipse_r(sc.x, sc.y, cx, cy, radius, radius)
    if lobulated:
        r = r * (1.0 + 0.12 * smooth_noise(rng, 6, sc.x.shape[0]))
    return extra + dens * _soft(1.0 - r, 0.25) * (lungs[-1] + lungs[1] + 0.3)


def _nodule(sc, f, lungs, heart, air, mk, extra, rng) -> Arrays:
    extra = _round_opacity(
        sc, f, lungs, extra, 0.035 + 0.025 * f.severity, 0.16 + 0.1 * f.severity, False, rng
    )
    if "second" in f.extra:  # a second nodule elsewhere
        g = Finding(f.severity, -(f.side or 1), (f.extra["second"], -f.spot[1]))
        extra = _round_opacity(sc, g, lungs, extra, 0.035, 0.16, False, rng)
    return air, mk, extra


def _mass(sc, f, lungs, heart, air, mk, extra, rng) -> Arrays:
    radius = 0.09 + 0.08 * f.severity
    return air, mk, _round_opacity(sc, f, lungs, extra, radius, 0.2 + 0.1 * f.severity, True, rng)


def _zone(sc: _Scene, f: Finding, side: int, radius: float) -> np.ndarray:
    cx, cy = _spot_xy(sc, f, side)
    return np.exp(-(((sc.x - cx) / radius) ** 2 + ((sc.y - cy) / (radius * 1.3)) ** 2))


def _consolidation(sc, f, lungs, heart, air, mk, extra, rng) -> Arrays:
    s = f.side or 1
    zone = _zone(sc, f, s, 0.22 + 0.1 * f.severity)
    patch = _soft(zone + 0.25 * smooth_noise(rng, 8, sc.x.shape[0]) - 0.45, 0.15) * lungs[s]  # dense, sharp
    return air * (1.0 - 0.75 * patch), mk * (1.0 - patch), extra + 0.05 * patch


def _pneumonia(sc, f, lungs, heart, air, mk, extra, rng) -> Arrays:
    s = f.side or 1
    zone = _zone(sc, f, s, 0.3)
    fluffy = np.clip(smooth_noise(rng, 16, sc.x.shape[0]) * 0.6 + 0.5, 0.0, 1.0)
    patch = zone * fluffy * lungs[s] * (0.35 + 0.35 * f.severity)
    return air * (1.0 - patch), mk, extra


def _infiltration(sc, f, lungs, heart, air, mk, extra, rng) -> Arrays:
    lung = lungs[-1] + lungs[1]
    spots = _soft(smooth_noise(rng, 11, sc.x.shape[0]) - (1.2 - 0.5 * f.severity), 0.8)
    patch = spots * lung * (0.25 + 0.25 * f.severity)
    return air * (1.0 - patch), mk, extra + 0.02 * patch


def _edema(sc, f, lungs, heart, air, mk, extra, rng) -> Arrays:
    a = sc.a
    haze = np.exp(-(((np.abs(sc.x) - 0.2) / 0.3) ** 2 + ((sc.y - a.lung_cy - 0.05) / 0.45) ** 2))  # bat wing
    lung = lungs[-1] + lungs[1]
    kerley = _band(np.sin(sc.y * 70.0), 0.15, 0.3) * _soft(np.abs(sc.x) - a.lung_cx - a.lung_w * 0.45, 0.05)
    kerley = kerley * _soft(sc.y - a.lung_cy - a.lung_h * 0.3, 0.1)
    air = air * (1.0 - (0.3 + 0.35 * f.severity) * haze * lung)
    return air, mk * (1.0 + 0.8 * f.severity), extra + 0.06 * kerley * lung


def _emphysema(sc, f, lungs, heart, air, mk, extra, rng) -> Arrays:
    lung = lungs[-1] + lungs[1]
    return air * (1.0 + 0.2 + 0.2 * f.severity * lung), mk * (1.0 - 0.5 * f.severity), extra


def _fibrosis(sc, f, lungs, heart, air, mk, extra, rng) -> Arrays:
    a = sc.a
    lung = lungs[-1] + lungs[1]
    net = _band(smooth_noise(rng, 28, sc.x.shape[0]), 0.12, 0.08)  # reticular lines
    where = np.clip(
        (np.abs(sc.x) - a.lung_cx + a.lung_w * 0.2) / a.lung_w + (sc.y - a.lung_cy) / a.lung_h, 0, 1.5
    )
    return air, mk, extra + (0.07 + 0.08 * f.severity) * net * where * lung


def _atelectasis(sc, f, lungs, heart, air, mk, extra, rng) -> Arrays:
    s = f.side or 1
    a = sc.a
    cx, cy = s * a.lung_cx, a.lung_cy + a.lung_h * (0.35 + 0.15 * f.spot[1])
    slope = 0.25 * f.spot[0]
    plate = _band(sc.y - cy - slope * (sc.x - cx), 0.02 + 0.02 * f.severity, 0.03) * _band(
        sc.x - cx, a.lung_w * 0.6, 0.1
    )
    base = _soft(sc.y - (sc.dome[s] - 0.08 - 0.08 * f.severity), 0.04)  # volume loss: raised base
    dense = np.clip(plate + base, 0, 1) * lungs[s]
    return air * (1.0 - 0.8 * dense), mk * (1.0 - dense), extra + 0.04 * dense


def _pleural_thickening(sc, f, lungs, heart, air, mk, extra, rng) -> Arrays:
    for s in _sides(f):
        rim = _band(sc.r_lung[s] - 0.96, 0.03 + 0.03 * f.severity, 0.03) * lungs[s]
        apex = _soft(sc.a.lung_cy - sc.y - sc.a.lung_h * 0.3, 0.2)
        rim = rim * np.clip((sc.x * s > sc.a.lung_cx) + apex, 0, 1)
        air, extra = air * (1.0 - 0.7 * rim), extra + 0.08 * rim
    return air, mk, extra


def _hernia(sc, f, lungs, heart, air, mk, extra, rng) -> Arrays:
    a = sc.a
    cx, cy, rad = a.heart_cx - 0.02, sc.heart_cy + sc.heart_h * 0.35, 0.08 + 0.05 * f.severity
    bubble = _blob(sc.x, sc.y, cx, cy, rad, 0.2)
    fluid = bubble * _soft(sc.y - cy - rad * 0.2, sc.edge)  # air-fluid level
    return air, mk, extra - 0.3 * (bubble - fluid) - 0.05 * fluid


_FINDINGS = {
    "Atelectasis": _atelectasis,
    "Cardiomegaly": _cardiomegaly,
    "Effusion": _effusion,
    "Infiltration": _infiltration,
    "Mass": _mass,
    "Nodule": _nodule,
    "Pneumonia": _pneumonia,
    "Pneumothorax": _pneumothorax,
    "Consolidation": _consolidation,
    "Edema": _edema,
    "Emphysema": _emphysema,
    "Fibrosis": _fibrosis,
    "Pleural_Thickening": _pleural_thickening,
    "Hernia": _hernia,
}


def expose(dens: np.ndarray, a: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Turn a density map into an 8-bit radiograph with the site's exposure, blur, noise and marker."""
    site = SITES[a.site]
    img = np.clip(dens * 1.35 * site["contrast"] + 0.08 + site["offset"], 0.0, 1.0)
    if a.ap:  # portable films: flatter, slightly brighter exposure
        img = 0.85 * img + 0.07
    img = img ** site["gamma"]
    for _ in range(int(site["blur"])):
        img = (
            img + np.roll(img, 1, 0) + np.roll(img, -1, 0) + np.roll(img, 1, 1) + np.roll(img, -1, 1)
        ) / 5.0
    img = img + site["noise"] * rng.standard_normal(img.shape).astype(np.float32)
    size = img.shape[0]
    if site["marker"]:  # burned-in side marker, a site habit
        m = max(2, size // 16)
        col = 2 if site["marker"] < 0 else size - m - 2
        img[2 : 2 + m, col : col + m] = 0.95
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
