"""The ``echo-a4c`` phantom: an apical four-chamber-like echocardiography cine loop (2D + time).

The volume is a 2D+t stack ``(X, Y, T)``: axis 0 runs across the sector (lateral, left to right
on screen), axis 1 away from the probe (depth; the probe sits at index 0, top centre), axis 2 is
time. Frames are therefore the "slices" of the slice workflow, which cuts along the axis with
the largest spacing. That third spacing is the **frame interval in milliseconds**. It sits in
the affine like a spacing; the slice code only needs it to be the largest of the three, which
it is for any realistic frame rate and pixel size.

Default grid 112×112×32 at 1.5×1.5 mm × 33 ms. EchoNet-Dynamic frames are 112×112 pixels over
a sector 12–18 cm deep, so 1.5 mm pixels give a 16.8 cm field of view (native scanner pixels are
0.15–0.5 mm; CAMUS keeps them). 33 ms is about 30 frames/s, so 32 frames last 1056 ms: 1.06 to
1.76 beats at the 60–100 beats/min drawn here, so every loop holds at least one end-diastole
(ED) and one end-systole (ES). Frame ``k`` shows the time ``(k + 1/2) × interval`` after the start
of the loop; the anatomy and the beat of a seed do not depend on the grid shape (only the white
noise does), so a coarser grid samples the same loop.

Labels follow CAMUS, with the names of ``data_tools/camus.py``: background 0, lv 1 (LV blood
pool), myocardium 2 (LV wall), atrium 3 (the left atrium). ``lv`` and ``myocardium`` mean what
they mean in ``cardiac-mr``; the ids differ, as CAMUS's differ from ACDC's. The right ventricle and atrium, the pericardium and the chest wall
are drawn but labelled background, as in CAMUS.

Anatomy, in the heart frame: ``u`` runs along the LV long axis from the epicardial apex towards
the base, ``v`` across it (positive towards the lateral wall). The frame is tilted from the
sector's centre line about the probe and deformed by a smooth static warp plus a slow drift
(breathing). The LV cavity is a bullet: a tapered cap up to the equator, then a narrowing to
the mitral annulus in the flat base plane. The epicardium is the same bullet grown by the wall
thickness. The LA lies below the base plane, an ellipse cut by that plane along a chord half a
wall thickness wider than the LV base on each side. So the LV blood pool touches only
myocardium and, across the valve plane, the atrium.

Motion follows :class:`CardiacCycle`, the LV filling ``f`` (1 at ED, 0 at ES). During systole the
base moves towards the fixed apex and the cavity narrows; the drawn area change
``1 - A_ES / A_ED`` lies in :data:`AREA_CHANGE`. The wall thickens so that the myocardial area
stays constant (solved per frame). The LA grows as the LV empties. ED and ES of a loop are the
frames with the largest and the smallest LV area (:func:`ed_es_frames`).

Image formation: tissue echogenicity with a smooth texture, blurred more across the beam
(lateral) than along it (axial). It is multiplied by fully developed speckle: the envelope of
smoothed complex Gaussian noise, Rayleigh distributed, raised to a compression power ``gamma``.
The speckle of static tissue persists from frame to frame; the speckle of moving tissue and blood
decorrelates. Then come depth attenuation, a fall-off at the sector edges, near-field clutter
and an electronic noise floor. Values are integers in ``[0, 255]``, exactly 0 outside the
sector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from jointreg.data.phantoms.grid import Grid
from jointreg.data.phantoms.noise import smooth_noise, smooth_noise_along_z
from jointreg.data.phantoms.painting import Painter, blur_in_place, render

# Tissue ids are positions in this tuple; the label map is a lookup of the tissue map.
ECHO_TISSUES: tuple[str, ...] = (
    "outside", "soft_tissue", "pericardium", "heart_wall", "rv_blood", "ra_blood", "la_blood",
    "myocardium", "lv_blood",
)
ECHO_LABELS = {"background": 0, "lv": 1, "myocardium": 2, "atrium": 3}
ECHO_TISSUE_LABELS = {"lv_blood": "lv", "myocardium": "myocardium", "la_blood": "atrium"}

# The range of the drawn LV area change 1 - A_ES / A_ED (a 2D ejection fraction). With the drawn
# 10-18 % long-axis shortening, the area-length rule (V ∝ A²/L) makes it an EF of about 49-82 %.
AREA_CHANGE = (0.35, 0.6)

# Speckle grain: standard deviation of the smoothing of the complex field, in mm (lateral, axial).
SPECKLE_GRAIN_MM = (1.1, 0.7)

# How much of each tissue's speckle persists from one frame to the next (0: independent frames).
SPECKLE_PERSISTENCE = {
    "outside": 0.0, "soft_tissue": 0.9, "pericardium": 0.6, "heart_wall": 0.4, "rv_blood": 0.0,
    "ra_blood": 0.0, "la_blood": 0.0, "myocardium": 0.4, "lv_blood": 0.0,
}


def _ramp(x: np.ndarray) -> np.ndarray:
    """0 → 1 over ``x`` in [0, 1] as a half cosine (zero slope at both ends), clamped outside."""
    return 0.5 - 0.5 * np.cos(np.pi * np.clip(x, 0.0, 1.0))


@dataclass(frozen=True)
class CardiacCycle:
    """LV filling over time: 1 at end-diastole (ED), 0 at end-systole (ES).

    A beat of ``period_ms`` starts at ED (at ``ed_ms``, and every period before and after). It
    has four pieces, as fractions of the beat: ejection over ``systole`` (filling 1 → 0); rapid
    filling over ``rapid`` (0 → ``early``); diastasis (flat); atrial contraction over the last
    ``atrial`` (``early`` → 1). Each piece is a half cosine with zero slope at both ends, so a
    frame near ED or ES samples the extreme closely.

    Example:
        >>> c = CardiacCycle(period_ms=800.0, ed_ms=100.0, systole=0.375)
        >>> float(c.filling(100.0)), float(c.filling(c.es_ms)), c.es_ms
        (1.0, 0.0, 400.0)
    """

    period_ms: float
    ed_ms: float
    systole: float = 0.35
    rapid: float = 0.18
    atrial: float = 0.15
    early: float = 0.75

    def __post_init__(self) -> None:
        if not self.period_ms > 0:
            raise ValueError(f"period_ms must be positive, got {self.period_ms}")
        if not (0 < self.systole and 0 < self.rapid and 0 < self.atrial and self.systole + self.rapid + self.atrial <= 1):
            raise ValueError("systole, rapid filling and atrial contraction must be positive and fit in one beat")

    @property
    def es_ms(self) -> float:
        """The first end-systole after ``ed_ms``, in ms."""
        return self.ed_ms + self.systole * self.period_ms

    def phase(self, t_ms) -> np.ndarray:
        """Position in the beat, ``[0, 1)``; 0 is ED."""
        return np.mod((np.asarray(t_ms, np.float64) - self.ed_ms) / self.period_ms, 1.0)

    def filling(self, t_ms) -> np.ndarray:
        """LV filling at times ``t_ms`` (any shape, ms): 1 at ED, 0 at ES."""
        p = self.phase(t_ms)
        ejecting = 1.0 - _ramp(p / self.systole)
        diastolic = (self.early * _ramp((p - self.systole) / self.rapid)
                     + (1.0 - self.early) * _ramp((p - 1.0 + self.atrial) / self.atrial))
        return np.where(p < self.systole, ejecting, diastolic)


def draw_cycle(rng: np.random.Generator) -> CardiacCycle:
    """The cardiac cycle of a case: 60–100 beats/min, ED anywhere in the first beat, ejection
    270–330 ms (at most 45 % of the beat). These are the first draws of :func:`build_echo_a4c`,
    so ``draw_cycle(phantom_rng("echo-a4c", seed))`` is the beat of ``make_phantom("echo-a4c", seed)``."""
    U = rng.uniform
    period = 60000.0 / U(60.0, 100.0)
    return CardiacCycle(
        period_ms=period, ed_ms=U(0.0, period), systole=min(U(270.0, 330.0) / period, 0.45),
        rapid=U(0.14, 0.2), atrial=U(0.12, 0.17), early=U(0.65, 0.85),
    )


def ed_es_frames(label: np.ndarray, lv: int = ECHO_LABELS["lv"], *, axis: int = 2) -> tuple[int, int]:
    """End-diastolic and end-systolic frames of a cine label: the largest and smallest LV area.

    Ties go to the lower index; frames without the LV do not count as the smallest. This is the
    ``extremes`` strategy of :mod:`jointreg.data.sparsify` with the LV as the only class.

    Args:
        label: ``(X, Y, T)`` class ids (time on ``axis``).
        lv: the LV blood-pool id (1 in ``echo-a4c`` and CAMUS).
        axis: the time axis.

    Returns:
        ``(ed, es)`` frame indices.

    Raises:
        ValueError: no frame holds the LV.

    Example:
        >>> from jointreg.data.phantoms import make_phantom
        >>> ed, es = ed_es_frames(make_phantom("echo-a4c", 0).label)   # doctest: +SKIP
    """
    other = tuple(a for a in range(label.ndim) if a != axis)
    areas = (np.asarray(label) == lv).sum(axis=other)
    present = np.flatnonzero(areas)
    if present.size == 0:
        raise ValueError(f"no frame holds label {lv}")
    ed = int(np.argmax(areas))
    es = int(present[np.argmin(areas[present])])
    return ed, es


# Exponent of the apical cap, (1 - x²)^CAP: 0.5 is an ellipse; more tapers the apex (as the LV's
# does) so that the tilted ventricle stays inside the narrow top of the sector.
_CAP = 0.75
_CAP_AREA = math.sqrt(math.pi) / 2.0 * math.gamma(_CAP + 1.0) / math.gamma(_CAP + 1.5)   # ∫_0^1 (1 - x²)^CAP dx


def _bullet(s: np.ndarray, s_eq, narrowing) -> np.ndarray:
    """Half-width profile of the LV along ``s`` (0 apex, 1 base), 1 at the equator ``s_eq``:
    a tapered cap below it, a linear narrowing by ``narrowing`` towards the base."""
    cap = np.clip(1.0 - ((s_eq - s) / s_eq) ** 2, 0.0, 1.0) ** _CAP
    return np.where(s < s_eq, cap, 1.0 - narrowing * (s - s_eq) / (1.0 - s_eq))


def _bullet_area(half_width, length, s_eq, narrowing):
    """Area (mm²) inside ``|v| < half_width * _bullet(u / length)``, ``0 <= u <= length``."""
    return 2.0 * half_width * length * (s_eq * _CAP_AREA + (1.0 - s_eq) * (1.0 - narrowing / 2.0))


def _myocardial_area(length, width, wall, s_eq, narrowing, apex_wall):
    """Epicardial minus cavity area (mm²) of the LV drawn by :func:`build_echo_a4c`."""
    base = apex_wall * wall + length
    outer = width + wall
    epi = _bullet_area(outer, base, (apex_wall * wall + s_eq * length) / base, narrowing * width / outer)
    return epi - _bullet_area(width, length, s_eq, narrowing)


def _wall_keeping_area(length, width, area, s_eq, narrowing, apex_wall, steps: int = 40):
    """The wall thickness (mm, per frame) whose myocardial area is ``area`` (bisection; the area
    grows with the thickness)."""
    low, high = np.zeros_like(width), np.full_like(width, 60.0)
    for _ in range(steps):
        mid = (low + high) / 2.0
        too_thin = _myocardial_area(length, width, mid, s_eq, narrowing, apex_wall) < area
        low, high = np.where(too_thin, mid, low), np.where(too_thin, high, mid)
    return (low + high) / 2.0


def _ellipse(u: np.ndarray, v: np.ndarray, centre: tuple, radii: tuple) -> np.ndarray:
    """Normalised squared radius in the heart frame: ``< 1`` inside the ellipse."""
    return ((u - centre[0]) / radii[0]) ** 2 + ((v - centre[1]) / radii[1]) ** 2


def _speckle(rng: np.random.Generator, grid: Grid, persistence: np.ndarray, gamma: float) -> np.ndarray:
    """Unit-mean speckle ``R**gamma / E[R**gamma]``, ``R`` Rayleigh (envelope of complex Gaussian
    noise smoothed to grains of :data:`SPECKLE_GRAIN_MM`). ``persistence`` (per pixel, 0–1) is
    the share of the complex field shared by every frame. White noise: draw last."""
    from scipy.ndimage import gaussian_filter

    sigma = [SPECKLE_GRAIN_MM[0] / grid.spacing[0], SPECKLE_GRAIN_MM[1] / grid.spacing[1], 0.0]
    static_shape = (*grid.shape[:2], 1)

    def grains(shape) -> np.ndarray:
        field = gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap", truncate=3.0)
        return field / np.float32(field.std())   # unit variance again after smoothing

    keep = np.sqrt(persistence).astype(np.float32)
    fresh = np.sqrt(1.0 - persistence).astype(np.float32)
    re = keep * grains(static_shape) + fresh * grains(grid.shape)
    im = keep * grains(static_shape) + fresh * grains(grid.shape)
    envelope = np.sqrt(re * re + im * im)            # Rayleigh, E[R^g] = 2^(g/2) Γ(1 + g/2)
    return envelope**gamma / np.float32(2.0 ** (gamma / 2.0) * math.gamma(1.0 + gamma / 2.0))


def build_echo_a4c(rng: np.random.Generator, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Apical four-chamber-like B-mode cine loop, ``(X, Y, T)`` with T the frames (see the module)."""
    U = rng.uniform
    x, y, t = grid.axes
    dx = x[:, None, None]
    dy = (y - y[0] + grid.spacing[1] / 2.0)[None, :, None]      # depth of the pixel centres from the probe
    frame_ms = (t + grid.fov[2] / 2.0)[None, None, :]           # time of each frame from the loop start

    # --- every scalar draw first, then the smooth fields, then the white noise ----------------
    cycle = draw_cycle(rng)
    half_angle, reach = math.radians(U(40.0, 45.0)), grid.fov[1] * U(0.92, 0.97)
    tilt, apex_depth = math.radians(U(-4.0, 5.0)), U(18.0, 26.0)
    length_ed, width_ed, wall_ed = U(64.0, 80.0), U(19.0, 24.0), U(7.0, 10.0)
    # The base narrows to the mitral annulus (about 30 mm across).
    apex_wall, s_eq, narrowing, lateral = U(0.6, 0.8), U(0.6, 0.72), U(0.2, 0.32), U(-0.05, 0.05)
    area_change, long_shortening = U(*AREA_CHANGE), U(0.1, 0.18)
    short_shortening = 1.0 - (1.0 - area_change) / (1.0 - long_shortening)
    la_length, la_width, la_growth = U(15.0, 20.0), U(1.05, 1.25), U(0.15, 0.3)   # at ED: mm, × the chord
    rv_width, rv_length, rv_gap = U(15.0, 21.0), U(0.38, 0.45), U(0.3, 0.5)
    ra_radii = (U(16.0, 22.0), U(14.0, 19.0))
    pericardium_mm = U(2.0, 3.5)
    warp_mm, drift_mm = U(1.0, 2.5), U(0.5, 2.0)
    gain, attenuation, edge_loss = U(0.8, 1.2), U(0.25, 0.7), U(0.1, 0.3)
    clutter, clutter_mm, noise_floor, gamma = U(15.0, 35.0), U(6.0, 10.0), U(1.5, 3.5), U(0.6, 1.0)
    blood = U(5.0, 14.0)
    mean = {
        "outside": 0.0, "soft_tissue": U(35.0, 60.0), "pericardium": U(150.0, 200.0),
        "heart_wall": U(70.0, 110.0), "myocardium": U(80.0, 120.0), "lv_blood": blood,
        "la_blood": blood * U(0.9, 1.2), "rv_blood": blood * U(0.9, 1.2), "ra_blood": blood * U(0.9, 1.2),
    }
    texture = {n: 0.12 * m for n, m in mean.items() if n not in ("outside", "lv_blood", "la_blood", "rv_blood", "ra_blood")}

    plane = Grid((*grid.shape[:2], 1), grid.spacing, grid.fov)           # one static frame
    warp_x, warp_y = (warp_mm * smooth_noise(rng, plane, (35.0, 35.0, grid.fov[2])) for _ in range(2))
    drift_x, drift_y = (drift_mm * smooth_noise_along_z(rng, grid, 400.0) for _ in range(2))
    fields = (smooth_noise(rng, grid, (12.0, 12.0, 4000.0)), smooth_noise(rng, grid, (4.0, 4.0, 4000.0)))

    # --- the sector ----------------------------------------------------------------------------
    sector = (np.hypot(dx, dy) <= reach) & (np.abs(np.arctan2(dx, dy)) <= half_angle)   # (X, Y, 1)

    # --- heart frame and the per-frame sizes ---------------------------------------------------
    qx, qy = dx + warp_x - drift_x, dy + warp_y - drift_y
    u = qx * math.sin(tilt) + qy * math.cos(tilt) - apex_depth
    v = qx * math.cos(tilt) - qy * math.sin(tilt)
    v = v / (1.0 + lateral * np.sign(v))        # the lateral wall side a little wider than the septal
    emptied = 1.0 - cycle.filling(frame_ms)                        # 0 at ED, 1 at ES; (1, 1, T)
    length = length_ed * (1.0 - long_shortening * emptied)
    width = width_ed * (1.0 - short_shortening * emptied)
    # Myocardium is nearly incompressible: the wall thickens so that its area stays the ED one.
    shape = (s_eq, narrowing, apex_wall)
    wall = _wall_keeping_area(length, width, _myocardial_area(length_ed, width_ed, wall_ed, *shape), *shape)
    apex_t = apex_wall * wall
    base = apex_t + length                                          # the mitral plane, u = base

    s = (u - apex_t) / length
    cavity = (s >= 0.0) & (s <= 1.0) & (np.abs(v) < width * _bullet(s, s_eq, narrowing))
    outer = width + wall
    epi_profile = _bullet(u / base, (apex_t + s_eq * length) / base, narrowing * width / outer)
    epi = (u >= 0.0) & (u <= base) & (np.abs(v) < outer * epi_profile)
    pericardium = (u >= -pericardium_mm) & (u <= base) & (np.abs(v) < (outer + pericardium_mm) * epi_profile)

    # The LA: an ellipse below the base plane, cut by it along a chord of half-width `chord`;
    # it grows while the LV empties (the mitral valve is shut).
    chord = width * (1.0 - narrowing) + 0.5 * wall
    chord_ed = width_ed * (1.0 - narrowing) + 0.5 * wall_ed
    la_u = la_length * (1.0 + la_growth * emptied)
    la_v = np.maximum(la_width * chord_ed * (1.0 + 0.5 * la_growth * emptied), 1.05 * chord)
    la_centre = base + la_u * np.sqrt(1.0 - (chord / la_v) ** 2)
    below = u >= base
    la = below & (_ellipse(u, v, (la_centre, 0.0), (la_u, la_v)) < 1.0)
    la_wall = below & (_ellipse(u, v, (la_centre, 0.0), (la_u + 2.5, la_v + 2.5)) < 1.0)

    # The RV beside the septum, ending at the base; the RA below it.
    rv_half = rv_length * (apex_t + length_ed) * (1.0 - 0.1 * emptied)
    rv_v = -(width_ed + wall_ed) - rv_gap * rv_width
    rv_scale = 1.0 - 0.15 * emptied
    rv_e = _ellipse(u, v, (base - rv_half, rv_v), (rv_half, rv_width * rv_scale))
    rv = (u <= base) & (rv_e < 1.0)
    rv_wall = (u <= base) & (_ellipse(u, v, (base - rv_half, rv_v), (rv_half + 3.0, rv_width * rv_scale + 3.0)) < 1.0)
    ra_grow = 1.0 + 0.15 * emptied
    ra_centre = (base + 0.8 * ra_radii[0] * ra_grow, rv_v + 3.0)
    ra = below & (_ellipse(u, v, ra_centre, (ra_radii[0] * ra_grow, ra_radii[1] * ra_grow)) < 1.0)
    ra_wall = below & (_ellipse(u, v, ra_centre, (ra_radii[0] * ra_grow + 2.5, ra_radii[1] * ra_grow + 2.5)) < 1.0)

    # --- the tissue map: later tissues win -----------------------------------------------------
    paint = Painter(grid.shape, ECHO_TISSUES)
    paint.tissue[...] = paint.ids["soft_tissue"]
    paint.paint("pericardium", pericardium)
    paint.paint("heart_wall", rv_wall | ra_wall | la_wall)
    paint.paint("rv_blood", rv)
    paint.paint("ra_blood", ra)
    paint.paint("la_blood", la)
    paint.paint("myocardium", epi)
    paint.paint("lv_blood", cavity)
    paint.paint("outside", np.broadcast_to(~sector, grid.shape))
    tissue = paint.tissue

    # --- B-mode image: blurred echogenicity × speckle × gains, plus clutter and noise ----------
    echogenicity = render(tissue, ECHO_TISSUES, mean, texture, fields)
    r = np.hypot(dx, dy)
    echogenicity += clutter * np.exp(-r / clutter_mm)              # near-field haze
    blur_in_place(echogenicity, grid, fwhm_mm=(3.0, 2.0, 0.0))      # lateral resolution is the worse
    tgc = gain * np.exp(-attenuation * r / reach) * (1.0 - edge_loss * (np.arctan2(dx, dy) / half_angle) ** 4)
    persistence = np.array([SPECKLE_PERSISTENCE[n] for n in ECHO_TISSUES], np.float32)[tissue]
    image = echogenicity * tgc.astype(np.float32) * _speckle(rng, grid, persistence, gamma)
    floor = rng.standard_normal((2, *grid.shape), dtype=np.float32)
    image += noise_floor * np.sqrt(floor[0] ** 2 + floor[1] ** 2)
    image = np.rint(np.clip(image, 0.0, 255.0)) * sector
    return image.astype(np.float32), tissue
