"""Synthetic phantoms: abdominal CT and cardiac cine-MR volumes with exact labels.

The phantoms are the test data of the project and the data of ``jointreg demo``. They are built
to matter for registration: every organ is a deformed implicit shape whose cross-section changes
smoothly and non-rigidly from slice to slice (the liver is large under the diaphragm dome, narrows
to the tip of its right lobe; the left ventricle shrinks to the apex) and from case to case
(shape, size, position, rotation, a smooth random displacement of the whole anatomy, texture,
noise and bias field). Everything is exactly reproducible from an integer seed.

Construction, in one pass over the grid (numpy, no loops over voxels):

1. World coordinates of the voxel centres (millimetres, volume centred at the origin) are mapped
   to *anatomical* coordinates by a random in-plane rotation, a shift and a smooth random
   displacement field (cubic B-spline noise), so that every shape below is deformed non-rigidly.
2. Tissues are painted as implicit shapes in anatomical coordinates, later tissues over earlier
   ones, into a ``tissue`` map (one id per tissue, e.g. ``liver_vessel``, ``kidney_left_cortex``).
3. The label map is a lookup of the tissue map, so labels and intensities agree by construction.
   The image is a lookup of per-case tissue intensities plus texture, blurred slightly (partial
   volume), with a smooth bias field and noise.

Kinds (see :data:`PHANTOM_KINDS`):

``liver-ct``
    Axial portal-venous abdominal CT in Hounsfield units, 128×128×44 voxels at 2.8×2.8×5 mm
    (axis 2 runs inferior → superior). Labels follow CHAOS: background 0, liver 1, kidney_right 2,
    kidney_left 3, spleen 4. Intrahepatic portal/hepatic vessels belong to the liver label (as in
    CHAOS, LiTS and TotalSegmentator); the IVC, aorta, gallbladder and renal sinus fat do not.
``cardiac-mr``
    Short-axis bSSFP-like stack, 128×128×12 voxels at 1.8×1.8×8 mm (axis 2 runs apex → base and
    beyond into the atria). Labels follow ACDC: background 0, rv 1, myocardium 2, lv 3; papillary
    muscles belong to the LV cavity (ACDC convention).

Example:
    >>> from jointreg.data.phantoms import make_phantom
    >>> p = make_phantom("liver-ct", seed=3, shape=(64, 64, 22))
    >>> p.image.shape, p.labels["liver"]
    ((64, 64, 22), 1)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from jointreg.errors import ConfigError, InputError

log = logging.getLogger(__name__)

Shape3 = tuple[int, int, int]
Spacing3 = tuple[float, float, float]


# =========================================================================================
# Public types
# =========================================================================================
@dataclass(frozen=True, eq=False)
class Phantom:
    """One synthetic volume with its exact ground truth.

    Attributes:
        image: ``(X, Y, Z)`` float32 intensities (HU for CT, scanner-like integers for MR).
        label: ``(X, Y, Z)`` int16 class ids, see ``labels``.
        affine: 4×4 voxel-to-world matrix (RAS+, millimetres), diagonal, origin at the centre.
        labels: class name -> id, background included.
        kind: the phantom kind that made it (a key of :data:`PHANTOM_KINDS`).
        tissue: ``(X, Y, Z)`` uint8 tissue ids, finer than ``label`` (bone, fat, vessels...).
        tissues: tissue name -> id for ``tissue``.
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    labels: dict[str, int]
    kind: str
    tissue: np.ndarray
    tissues: dict[str, int]

    @property
    def spacing(self) -> Spacing3:
        """Voxel size per array axis in millimetres."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    @property
    def modality(self) -> str:
        """Channel name for ``dataset.json`` (``CT`` or ``MR``)."""
        return PHANTOM_KINDS[self.kind].modality

    def tissue_mask(self, *names: str) -> np.ndarray:
        """Boolean mask of the voxels whose tissue is one of ``names``."""
        unknown = [n for n in names if n not in self.tissues]
        if unknown:
            raise KeyError(f"unknown tissue(s) {unknown}; known: {sorted(self.tissues)}")
        return np.isin(self.tissue, [self.tissues[n] for n in names])


@dataclass(frozen=True)
class PhantomKind:
    """A registered phantom generator.

    Attributes:
        name: registry key, e.g. ``liver-ct``.
        modality: ``dataset.json`` channel name.
        labels: class name -> id written to ``dataset.json``.
        shape: default grid ``(X, Y, Z)``.
        spacing: default voxel size in millimetres; axis 2 is the through-plane axis.
        build: ``build(rng, grid) -> (image, tissue)``.
        tissues: tissue names in id order (id = position).
        tissue_labels: tissue name -> class name for the tissues that carry a label.
        description: one line for ``--help``.
    """

    name: str
    modality: str
    labels: Mapping[str, int]
    shape: Shape3
    spacing: Spacing3
    build: Callable[[np.random.Generator, _Grid], tuple[np.ndarray, np.ndarray]]
    tissues: tuple[str, ...]
    tissue_labels: Mapping[str, str]
    description: str

    @property
    def field_of_view(self) -> tuple[float, float, float]:
        """Default extent in millimetres along each axis."""
        return tuple(n * s for n, s in zip(self.shape, self.spacing))  # type: ignore[return-value]


# =========================================================================================
# Geometry helpers
# =========================================================================================
@dataclass(frozen=True)
class _Grid:
    """Voxel-centre coordinates (mm, centred on the volume) of a ``shape`` grid.

    ``fov`` is the extent the random lattices are laid over; it is the kind's default field of
    view whenever the user keeps it, so that the anatomy drawn for a seed does not depend on the
    number of voxels (only the white noise does).
    """

    shape: Shape3
    spacing: Spacing3
    fov: tuple[float, float, float]

    @property
    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(  # type: ignore[return-value]
            ((np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s).astype(np.float32)
            for n, s in zip(self.shape, self.spacing)
        )

    @property
    def affine(self) -> np.ndarray:
        affine = np.diag([*self.spacing, 1.0]).astype(np.float64)
        affine[:3, 3] = [-(n - 1) / 2.0 * s for n, s in zip(self.shape, self.spacing)]
        return affine


def _bspline_taps(coords: np.ndarray, extent: float, step: float) -> tuple[int, np.ndarray, np.ndarray]:
    """Cubic B-spline interpolation from a lattice ``step`` mm apart spanning ``extent`` mm.

    Returns:
        ``(nodes, index, weight)``: the lattice size, and for every coordinate the 4 lattice
        nodes it depends on ``(N, 4)`` with their weights ``(N, 4)``. Weights are normalised to
        unit L2 norm per coordinate, so interpolating i.i.d. unit normal node values gives unit
        variance everywhere (a separable interpolation's variance is the product of the per-axis
        squared norms).
    """
    nodes = int(math.ceil(extent / step)) + 5
    start = -extent / 2.0 - 2.0 * step
    u = (coords.astype(np.float64) - start) / step
    index = np.floor(u).astype(np.int64)[:, None] - 1 + np.arange(4)[None, :]
    a = np.abs(u[:, None] - index)
    w = np.where(a < 1.0, 2.0 / 3.0 - a**2 + a**3 / 2.0, np.where(a < 2.0, (2.0 - a) ** 3 / 6.0, 0.0))
    w /= np.sqrt((w**2).sum(axis=1, keepdims=True))
    return nodes, np.clip(index, 0, nodes - 1), w.astype(np.float32)


def _interpolate_axis(values: np.ndarray, axis: int, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Resample ``values`` along ``axis`` with the 4-tap ``(index, weight)`` of :func:`_bspline_taps`."""
    shape = [1] * values.ndim
    shape[axis] = -1
    out = np.take(values, index[:, 0], axis=axis) * weight[:, 0].reshape(shape)
    for k in range(1, 4):
        out += np.take(values, index[:, k], axis=axis) * weight[:, k].reshape(shape)
    return out


def _smooth_noise(rng: np.random.Generator, grid: _Grid, scale_mm: float | tuple[float, float, float]) -> np.ndarray:
    """A smooth random field with zero mean and unit variance, correlation length ~``scale_mm``.

    Random values on a coarse lattice laid over the field of view, interpolated by separable
    cubic B-splines (4 taps per axis). Element-wise numpy only, no BLAS: the result is
    bit-identical whatever the machine or thread count, and the number of random draws depends
    on the field of view, not on the grid shape.

    Returns:
        ``grid.shape`` float32 array.
    """
    scales = (scale_mm,) * 3 if isinstance(scale_mm, (int, float)) else scale_mm
    taps = [_bspline_taps(c, e, s) for c, e, s in zip(grid.axes, grid.fov, scales)]
    field = rng.standard_normal(tuple(n for n, _, _ in taps)).astype(np.float32)
    for axis in (2, 1, 0):   # the coarsest-to-finest order keeps the intermediate arrays small
        field = _interpolate_axis(field, axis, taps[axis][1], taps[axis][2])
    return np.ascontiguousarray(field, dtype=np.float32)


def _smooth_noise_along_z(rng: np.random.Generator, grid: _Grid, scale_mm: float) -> np.ndarray:
    """A smooth unit-variance random function of axis 2 only, shaped ``(1, 1, Z)`` to broadcast."""
    nodes, index, weight = _bspline_taps(grid.axes[2], grid.fov[2], scale_mm)
    values = rng.standard_normal(nodes).astype(np.float32)
    return _interpolate_axis(values, 0, index, weight)[None, None, :]


def _fine_texture(rng: np.random.Generator, shape: Shape3) -> np.ndarray:
    """Unit-variance noise correlated over about one voxel in-plane (drawn last: shape-dependent)."""
    return _correlate_in_plane(rng.standard_normal(shape, dtype=np.float32))


@dataclass
class _Anatomy:
    """Anatomical coordinates ``X, Y, Z`` (mm) of every voxel after the case's random deformation.

    ``anatomical = R(theta) · grid - shift + u(grid)`` with ``|u| <= margin``, which bounds where
    an anatomical point can lie on the grid: :meth:`crop` uses it so that a small organ is
    evaluated in its bounding box rather than over the whole volume.
    """

    X: np.ndarray
    Y: np.ndarray
    Z: np.ndarray
    theta: float = 0.0
    shift: tuple[float, float, float] = (0.0, 0.0, 0.0)
    margin: float = 0.0
    axes: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def crop(self, centre, radius: float) -> tuple[tuple[slice, slice, slice], _Anatomy]:
        """Grid slices holding every voxel within ``radius`` mm of ``centre``, and their coordinates.

        The returned sub-anatomy cannot be cropped again (it has no grid axes).
        """
        c, s = math.cos(self.theta), math.sin(self.theta)
        px, py, pz = (centre[0] + self.shift[0], centre[1] + self.shift[1], centre[2] + self.shift[2])
        grid_centre = (c * px + s * py, -s * px + c * py, pz)   # R(theta)^T applied to (centre + shift)
        reach = radius + self.margin
        box = []
        for axis, mid in zip(self.axes, grid_centre):
            inside = np.flatnonzero(np.abs(axis - mid) <= reach)
            box.append(slice(int(inside[0]), int(inside[-1]) + 1) if inside.size else slice(0, 0))
        sl = tuple(box)
        return sl, _Anatomy(self.X[sl], self.Y[sl], self.Z[sl])  # type: ignore[return-value]


def _deformed_coordinates(
    rng: np.random.Generator, grid: _Grid, *, rotation_deg: float, shift_mm: tuple[float, float, float],
    warp_scale_mm: tuple[float, float, float], warp_mm: tuple[float, float],
) -> _Anatomy:
    """Map voxel centres to anatomical coordinates: rotation about axis 2, shift, smooth warp.

    The warp is a displacement field with per-component standard deviation drawn from
    ``warp_mm`` and correlation length ``warp_scale_mm``; it is what makes two cases (and two
    slices of one case) differ non-rigidly.
    """
    theta = math.radians(rng.uniform(-rotation_deg, rotation_deg))
    shift = rng.uniform(-1.0, 1.0, 3) * np.asarray(shift_mm)
    amplitude = rng.uniform(*warp_mm)
    ux, uy, uz = (_smooth_noise(rng, grid, warp_scale_mm) * amplitude for _ in range(3))
    x, y, z = grid.axes
    c, s = math.cos(theta), math.sin(theta)
    X = c * x[:, None, None] - s * y[None, :, None] - shift[0] + ux
    Y = s * x[:, None, None] + c * y[None, :, None] - shift[1] + uy
    Z = z[None, None, :] - shift[2] + uz
    margin = float(np.sqrt(ux * ux + uy * uy + uz * uz).max()) + 1e-3
    return _Anatomy(
        X.astype(np.float32), Y.astype(np.float32), Z.astype(np.float32),
        theta=theta, shift=tuple(float(v) for v in shift), margin=margin, axes=grid.axes,  # type: ignore[arg-type]
    )


def _rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """3×3 rotation: ``roll`` about X, then ``pitch`` about Y, then ``yaw`` about Z (radians)."""
    cr, sr, cp, sp, cy, sy = math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch), math.cos(yaw), math.sin(yaw)
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _local(a: _Anatomy, centre, rotation: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coordinates relative to ``centre`` in a frame rotated by ``rotation`` (its columns = axes)."""
    dx, dy, dz = a.X - centre[0], a.Y - centre[1], a.Z - centre[2]
    if rotation is None:
        return dx, dy, dz
    r = rotation
    return (
        r[0, 0] * dx + r[1, 0] * dy + r[2, 0] * dz,
        r[0, 1] * dx + r[1, 1] * dy + r[2, 1] * dz,
        r[0, 2] * dx + r[1, 2] * dy + r[2, 2] * dz,
    )


def _ellipsoid(a: _Anatomy, centre, radii, rotation: np.ndarray | None = None) -> np.ndarray:
    """Normalised squared radius of an (optionally rotated) ellipsoid: ``< 1`` inside."""
    lx, ly, lz = _local(a, centre, rotation)
    return (lx / radii[0]) ** 2 + (ly / radii[1]) ** 2 + (lz / radii[2]) ** 2


def _tube(a: _Anatomy, start, end, radius_start: float, radius_end: float) -> np.ndarray:
    """Mask of a straight tube from ``start`` to ``end`` (mm) whose radius tapers linearly."""
    v = np.asarray(end, np.float64) - np.asarray(start, np.float64)
    dx, dy, dz = a.X - start[0], a.Y - start[1], a.Z - start[2]
    t = np.clip((dx * v[0] + dy * v[1] + dz * v[2]) / float(v @ v), 0.0, 1.0)
    dist2 = (dx - t * v[0]) ** 2 + (dy - t * v[1]) ** 2 + (dz - t * v[2]) ** 2
    return dist2 < (radius_start + (radius_end - radius_start) * t) ** 2


def _superellipse(dx: np.ndarray, dy: np.ndarray, rx, ry, power: float) -> np.ndarray:
    """``(|dx/rx|^p + |dy/ry|^p)^(1/p)``: 1 on a rounded-rectangle outline (p > 2 is boxier)."""
    rx = np.maximum(rx, 1e-3)
    ry = np.maximum(ry, 1e-3)
    return (np.abs(dx / rx) ** power + np.abs(dy / ry) ** power) ** (1.0 / power)


def _frac(v: np.ndarray) -> np.ndarray:
    return v - np.floor(v)


class _Painter:
    """A tissue map painted in order: each ``paint`` overwrites what was there."""

    def __init__(self, shape: Shape3, tissues: tuple[str, ...]):
        self.ids = {name: i for i, name in enumerate(tissues)}
        self.tissue = np.zeros(shape, np.uint8)

    def paint(self, name: str, mask: np.ndarray, box: tuple[slice, ...] | None = None) -> None:
        """Set ``name`` where ``mask`` holds; ``mask`` covers ``tissue[box]`` when a box is given."""
        target = self.tissue if box is None else self.tissue[box]
        np.copyto(target, np.uint8(self.ids[name]), where=mask)


def _render(
    tissue: np.ndarray, tissues: tuple[str, ...], mean: Mapping[str, float], texture: Mapping[str, float],
    fields: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """Intensity = per-tissue mean + per-tissue amplitude × texture.

    The texture mixes two unit-variance fields (0.6² + 0.8² = 1), so ``texture[name]`` is the
    standard deviation of the tissue's texture in image units.
    """
    lut_mean = np.array([mean[n] for n in tissues], np.float32)
    lut_tex = np.array([texture.get(n, 0.0) for n in tissues], np.float32)
    coarse, fine = fields
    return lut_mean[tissue] + lut_tex[tissue] * (0.6 * coarse + 0.8 * fine)


# =========================================================================================
# liver-ct
# =========================================================================================
LIVER_TISSUES: tuple[str, ...] = (
    "air", "lung", "lung_vessel", "fat", "skin", "muscle", "bone_cortex", "bone_cancellous", "disc",
    "csf", "liver", "liver_vessel", "gallbladder", "kidney_right_cortex", "kidney_right_medulla",
    "kidney_left_cortex", "kidney_left_medulla", "spleen", "aorta", "ivc", "heart_muscle",
    "heart_blood", "stomach_wall", "stomach_content", "bowel", "gas", "portal_vein",
)
LIVER_LABELS = {"background": 0, "liver": 1, "kidney_right": 2, "kidney_left": 3, "spleen": 4}
_LIVER_TISSUE_LABELS = {
    "liver": "liver", "liver_vessel": "liver",
    "kidney_right_cortex": "kidney_right", "kidney_right_medulla": "kidney_right",
    "kidney_left_cortex": "kidney_left", "kidney_left_medulla": "kidney_left",
    "spleen": "spleen",
}


def _build_liver_ct(rng: np.random.Generator, grid: _Grid) -> tuple[np.ndarray, np.ndarray]:
    """Portal-venous abdominal CT (HU). Anatomical axes: X → patient left, Y → anterior, Z → superior."""
    U = rng.uniform
    a = _deformed_coordinates(
        rng, grid, rotation_deg=8.0, shift_mm=(10.0, 8.0, 10.0),
        warp_scale_mm=(70.0, 70.0, 55.0), warp_mm=(5.0, 9.0),
    )
    X, Y, Z = a.X, a.Y, a.Z
    paint = _Painter(grid.shape, LIVER_TISSUES)
    # Random fields drawn up front; none of their sizes depends on the grid shape.
    fat_var = _smooth_noise(rng, grid, 80.0)
    bowel_field = _smooth_noise(rng, grid, (12.0, 12.0, 16.0))
    gas_field = _smooth_noise(rng, grid, 9.0)
    # Where two independent smooth fields both cross zero lies a network of winding tubes
    # (vessels in the liver; the same fields serve the lungs, which never overlap the liver).
    vessel_a = _smooth_noise(rng, grid, (30.0, 30.0, 36.0))
    vessel_b = _smooth_noise(rng, grid, (30.0, 30.0, 36.0))
    coarse_tex = _smooth_noise(rng, grid, (14.0, 14.0, 18.0))
    bias_field = _smooth_noise(rng, grid, 150.0)
    course_x = _smooth_noise_along_z(rng, grid, 60.0)  # the spine and great vessels meander
    course_y = _smooth_noise_along_z(rng, grid, 60.0)

    # --- body wall: skin, subcutaneous fat, muscle; the cavity inside -------------------------
    half_w, half_d, body_cy = U(138, 162), U(95, 116), U(-8, 6)
    half_w_z = half_w * (1.0 + U(-0.06, 0.06) * Z / 100.0)
    rho = np.maximum(_superellipse(X, Y - body_cy, half_w_z, half_d, U(2.2, 2.8)), 1e-3)
    depth = np.hypot(X, Y - body_cy) * (1.0 / rho - 1.0)  # ~distance under the skin, mm
    body = rho < 1.0
    fat_t = U(10, 28) * (1.0 + 0.35 * fat_var)
    wall_t = fat_t + U(8, 14)
    cavity = body & (depth >= wall_t)
    paint.paint("skin", body)
    paint.paint("fat", body & (depth >= 2.5))
    paint.paint("muscle", body & (depth >= fat_t))
    paint.paint("fat", cavity)

    # --- spine position (needed by several organs) -------------------------------------------
    spine_x = 4.0 * course_x
    spine_y = body_cy - half_d + U(62, 74) + 3.0 * course_y
    spine_at = (float(spine_x.mean()), float(spine_y.mean()))
    vb_r = U(16, 21)
    front_of_spine = spine_y + vb_r

    # --- diaphragm: two domes; the thorax is above, the abdomen below ------------------------
    dome_z = U(62, 84)
    # Dome tops lie anterior of centre, so the lungs reach lowest at the back (costophrenic recess).
    dome_r = (-U(50, 72), body_cy + U(5, 25), dome_z, U(85, 115))
    dome_l = (U(45, 70), body_cy + U(0, 20), dome_z - U(8, 24), U(85, 115))
    diaphragm = np.maximum(
        dome_r[2] - ((X - dome_r[0]) ** 2 + (Y - dome_r[1]) ** 2) / (2.0 * dome_r[3]),
        dome_l[2] - ((X - dome_l[0]) ** 2 + (Y - dome_l[1]) ** 2) / (2.0 * dome_l[3]),
    )
    thorax = cavity & (Z > diaphragm)
    abdomen = cavity & ~thorax
    paint.paint("lung", thorax)
    paint.paint("lung_vessel", thorax & (np.abs(vessel_a) < 0.05) & (np.abs(vessel_b) < 0.05))
    paint.paint("fat", thorax & (np.abs(X - spine_x) < U(22, 32)) & (Y > spine_y))  # mediastinum
    heart_c = (spine_at[0] + U(20, 40), body_cy + U(25, 45), dome_l[2] + U(20, 35))
    heart_radii = (U(45, 56), U(34, 42), U(40, 52))
    box, sub = a.crop(heart_c, max(heart_radii) * 1.1)
    heart = _ellipsoid(sub, heart_c, heart_radii, _rotation(yaw=math.radians(U(-35, -15))))
    paint.paint("fat", thorax[box] & (heart < 1.1**2), box)
    paint.paint("heart_muscle", thorax[box] & (heart < 1.0), box)
    paint.paint("heart_blood", thorax[box] & (heart < 0.72**2), box)

    # --- bowel loops with gas in the lower abdomen --------------------------------------------
    bowel = abdomen & (Z < dome_z - U(55, 75)) & (bowel_field > U(-0.1, 0.35))
    paint.paint("bowel", bowel)
    paint.paint("gas", bowel & (gas_field > U(1.1, 1.5)))

    # --- stomach: left upper quadrant, gas rising anteriorly (patient supine) ------------------
    st_c = (U(35, 60), body_cy + U(10, 30), dome_l[2] - U(35, 55))
    st_radii = (U(32, 46), U(26, 36), U(40, 60))
    st_rot = _rotation(yaw=math.radians(U(-30, 10)), roll=math.radians(U(-15, 15)))
    box, sub = a.crop(st_c, max(st_radii))
    stomach = _ellipsoid(sub, st_c, st_radii, st_rot)
    lumen = abdomen[box] & (_ellipsoid(sub, st_c, [r - 4.0 for r in st_radii], st_rot) < 1.0)
    paint.paint("stomach_wall", abdomen[box] & (stomach < 1.0), box)
    paint.paint("stomach_content", lumen, box)
    paint.paint("gas", lumen & (sub.Y > st_c[1] + st_radii[1] * U(0.2, 0.7)), box)

    # --- liver: right lobe + left lobe, capped by the right dome --------------------------------
    height = U(135, 175)
    t = (dome_z - Z) / height                       # 0 at the dome, 1 at the tip
    t_max = U(0.22, 0.34)                            # level of the widest cross-section
    taper = (1.0 - np.clip((t - t_max) / (1.0 - t_max), 0.0, 1.0)) ** U(0.55, 0.85)
    rl_cx = dome_r[0] - U(5, 30) * t                 # the right lobe drifts laterally...
    rl_cy = dome_r[1] + U(0, 25) * t - U(0, 10)      # ...and forwards on its way down
    right_lobe = _superellipse(
        X - rl_cx, Y - rl_cy, U(78, 98) * taper, U(68, 86) * (0.35 + 0.65 * taper), U(2.0, 2.8)
    ) < 1.0
    ll_len = U(0.40, 0.60)                           # the left lobe ends higher than the right
    ll_size = np.clip(np.sin(np.pi * np.clip(t / ll_len, 0.0, 1.0)), 0.0, 1.0) ** 0.6
    ll_cx, ll_cy = dome_r[0] + U(80, 105), body_cy + U(20, 40)
    ll_rot = math.radians(U(-25, 10))
    dx, dy = X - ll_cx, Y - ll_cy
    left_lobe = _superellipse(
        math.cos(ll_rot) * dx + math.sin(ll_rot) * dy, -math.sin(ll_rot) * dx + math.cos(ll_rot) * dy,
        U(45, 68) * ll_size, U(22, 34) * ll_size, 2.0,
    ) < 1.0
    liver = abdomen & (t > 0.0) & (t < 1.0) & (right_lobe | left_lobe)
    liver &= (Y - spine_y) ** 2 + (X - spine_x) ** 2 > (vb_r + 14.0) ** 2
    paint.paint("liver", liver)
    vessels = liver & (np.abs(vessel_a) < U(0.17, 0.24)) & (np.abs(vessel_b) < U(0.17, 0.24))
    # Hepatic veins fan out from the IVC under the dome (right, middle, left; angles from the
    # patient's right towards the front); the portal vein enters at the hilum and splits in two.
    ivc_top = (spine_at[0] - U(22, 30), spine_at[1] + vb_r + U(12, 22), dome_z - U(12, 20))
    for angle, length, drop in ((U(-10, 15), U(80, 100), U(25, 45)), (U(35, 65), U(70, 95), U(30, 55)),
                                (U(80, 110), U(60, 85), U(15, 35))):
        end = (ivc_top[0] - length * math.cos(math.radians(angle)),
               ivc_top[1] + length * math.sin(math.radians(angle)), ivc_top[2] - drop)
        _paint_tube(paint, a, "liver_vessel", ivc_top, end, U(5, 7), U(1.5, 2.5), within=liver)
    hilum = (dome_r[0] + U(45, 65), body_cy + U(0, 15), dome_z - height * U(0.35, 0.5))
    portal_in = (hilum[0] + U(15, 30), hilum[1] - U(5, 20), hilum[2] - U(40, 60))
    branches = (
        (portal_in, hilum, U(6, 8), U(5.5, 7)),
        (hilum, (hilum[0] - U(55, 80), hilum[1] + U(-15, 10), hilum[2] + U(0, 20)), U(5, 6.5), U(2, 3)),
        (hilum, (hilum[0] + U(25, 45), hilum[1] + U(15, 35), hilum[2] + U(5, 20)), U(4, 5.5), U(1.5, 2.5)),
    )
    for start, end, r0, r1 in branches:
        _paint_tube(paint, a, "portal_vein", start, end, r0, r1, within=abdomen & ~liver)
        _paint_tube(paint, a, "liver_vessel", start, end, r0, r1, within=liver)
    paint.paint("liver_vessel", vessels)
    gb_c = (dome_r[0] + U(35, 55), body_cy + U(15, 40), dome_z - height * U(0.45, 0.65))
    gb_radii = (U(12, 17), U(12, 17), U(25, 40))
    gb_rot = _rotation(pitch=math.radians(U(-25, 25)))
    if U(0, 1) < 0.8:  # some patients have had their gallbladder removed
        box, sub = a.crop(gb_c, max(gb_radii))
        paint.paint("gallbladder", abdomen[box] & (_ellipsoid(sub, gb_c, gb_radii, gb_rot) < 1.0), box)

    # --- spleen: a crescent in the left posterolateral upper abdomen ---------------------------
    sp_c = (spine_at[0] + U(82, 100), spine_at[1] + U(5, 30), dome_l[2] - U(30, 50))
    sp_yaw = math.radians(U(-70, -40))
    sp_rot = _rotation(yaw=sp_yaw, pitch=math.radians(U(-15, 15)))
    sp_radii = (U(25, 32), U(52, 68), U(48, 64))
    hollow_c = (sp_c[0] - math.cos(sp_yaw) * sp_radii[0] * 2.0, sp_c[1] - math.sin(sp_yaw) * sp_radii[0] * 2.0, sp_c[2])
    hollow_radii = (sp_radii[0] * 1.3, sp_radii[1] * 1.1, sp_radii[2] * 1.2)
    box, sub = a.crop(sp_c, max(sp_radii))
    spleen = (_ellipsoid(sub, sp_c, sp_radii, sp_rot) < 1.0) & (_ellipsoid(sub, hollow_c, hollow_radii, sp_rot) > 1.0)
    paint.paint("spleen", abdomen[box] & spleen, box)

    # --- kidneys: cortex, medulla, hilum opening medially, perirenal fat ------------------------
    kr_z = dome_z - U(85, 115)
    for side, sign, centre_z in (("right", -1.0, kr_z), ("left", 1.0, kr_z + U(8, 25))):
        k_c = (spine_at[0] + sign * U(55, 70), spine_at[1] + U(0, 18), centre_z)
        k_rot = _rotation(yaw=sign * math.radians(U(20, 40)), pitch=-sign * math.radians(U(8, 20)))
        radii = (U(23, 29), U(21, 27), U(46, 58))
        box, sub = a.crop(k_c, max(radii) * 1.25)
        lx, ly, lz = _local(sub, k_c, k_rot)
        e = (lx / radii[0]) ** 2 + (ly / radii[1]) ** 2 + (lz / radii[2]) ** 2
        hilum_notch = (-sign * lx > radii[0] * U(0.35, 0.5)) & (np.abs(lz) < radii[2] * U(0.3, 0.4))
        inside = abdomen[box]
        paint.paint("fat", inside & (e < 1.25**2), box)
        paint.paint(f"kidney_{side}_cortex", inside & (e < 1.0) & ~hilum_notch, box)
        paint.paint(f"kidney_{side}_medulla", inside & (e < U(0.45, 0.6)) & ~hilum_notch, box)

    # --- retroperitoneal muscles, great vessels, spine, ribs ----------------------------------
    back = spine_y - vb_r - U(12, 18)
    for sign in (-1.0, 1.0):
        erector = ((X - spine_x - sign * U(28, 36)) / U(24, 30)) ** 2 + ((Y - back) / U(20, 26)) ** 2 < 1.0
        paint.paint("muscle", body & erector)
        psoas_r = np.clip(6.0 + 16.0 * (kr_z + 20.0 - Z) / 90.0, 0.0, 22.0)  # grows downwards
        psoas = ((X - spine_x - sign * (vb_r + psoas_r * 0.8)) ** 2 + (Y - spine_y) ** 2) < psoas_r**2
        paint.paint("muscle", abdomen & psoas)
    aorta_x = spine_x + U(10, 20) + 4.0 * course_y
    aorta_y = front_of_spine + U(8, 14)
    paint.paint("aorta", cavity & ((X - aorta_x) ** 2 + (Y - aorta_y) ** 2 < U(10, 13.5) ** 2))
    ivc_x, ivc_y = spine_x - U(22, 32) + 3.0 * course_x, front_of_spine + U(10, 22)
    paint.paint("ivc", cavity & (((X - ivc_x) / U(11, 14)) ** 2 + ((Y - ivc_y) / U(7, 11)) ** 2 < 1.0))

    r_spine = np.hypot(X - spine_x, Y - spine_y)
    level = _frac((Z - U(0, 40) + 0.15 * (Y - spine_y)) / U(30, 36))  # vertebra/disc along z
    vertebra = r_spine < vb_r
    paint.paint("bone_cortex", vertebra)
    paint.paint("bone_cancellous", r_spine < vb_r - 2.5)
    paint.paint("disc", vertebra & (level < U(0.17, 0.24)))
    canal_y = spine_y - vb_r - U(7, 9)
    r_canal = np.hypot(X - spine_x, Y - canal_y)
    paint.paint("bone_cortex", (r_canal < U(14, 16)) & (Y < spine_y - vb_r + 2.0))
    spinous = (np.abs(X - spine_x) < U(3, 4.5)) & (Y < canal_y) & (Y > canal_y - U(35, 45))
    paint.paint("bone_cortex", body & spinous)
    paint.paint("csf", r_canal < U(6.5, 8.5))

    phi = np.arctan2(Y - body_cy, X)
    from_back = np.arccos(np.clip(-np.sin(phi), -1.0, 1.0)) / np.pi   # 0 at the spine, 1 in front
    # Ribs run downwards all the way from the spine to the front, so a slice cuts short arcs.
    rib_phase = _frac((Z + U(90, 140) * from_back - U(0, 30)) / U(24, 30))
    low_edge = dome_z - U(120, 150) + U(35, 65) * from_back
    rib_band = body & (depth > wall_t - U(4, 6)) & (depth < wall_t + U(3, 5))
    cartilage = np.abs(phi - np.pi / 2) < math.radians(U(25, 40))
    next_to_spine = np.abs(phi + np.pi / 2) < math.radians(10)
    paint.paint("bone_cortex", rib_band & (rib_phase < 0.33) & (Z > low_edge) & ~cartilage & ~next_to_spine)

    # --- intensities ---------------------------------------------------------------------------
    enhancement = U(0.3, 1.0)  # portal-venous contrast uptake of this case
    cortex = 60.0 + 120.0 * enhancement + U(-10, 10)
    medulla = cortex - U(15, 60) * enhancement
    vessel = 100.0 + 120.0 * enhancement + U(-10, 10)
    mean = {
        "air": -1000.0, "lung": U(-880, -820), "lung_vessel": U(-100, 20), "fat": U(-115, -85),
        "skin": U(0, 40), "muscle": U(35, 60), "bone_cortex": U(750, 1000), "bone_cancellous": U(360, 460),
        "disc": U(70, 110), "csf": U(5, 20), "liver": U(45, 62) + 55.0 * enhancement,
        "liver_vessel": vessel, "portal_vein": vessel, "gallbladder": U(0, 20),
        "kidney_right_cortex": cortex, "kidney_left_cortex": cortex,
        "kidney_right_medulla": medulla, "kidney_left_medulla": medulla,
        "spleen": U(45, 55) + 65.0 * enhancement + U(-5, 5), "aorta": 120.0 + 130.0 * enhancement,
        "ivc": 90.0 + 110.0 * enhancement, "heart_muscle": U(40, 60) + 40.0 * enhancement,
        "heart_blood": 110.0 + 120.0 * enhancement, "stomach_wall": U(40, 60) + 40.0 * enhancement,
        "stomach_content": U(5, 30), "bowel": U(20, 45) + 20.0 * enhancement, "gas": U(-1000, -950),
    }
    texture = {
        "lung": 25.0, "fat": 12.0, "muscle": 8.0, "liver": U(5, 10), "liver_vessel": 8.0, "spleen": 7.0,
        "kidney_right_cortex": 8.0, "kidney_left_cortex": 8.0, "kidney_right_medulla": 10.0,
        "kidney_left_medulla": 10.0, "bone_cancellous": 60.0, "bone_cortex": 80.0, "bowel": 20.0,
        "stomach_content": 8.0, "heart_blood": 6.0,
    }
    bias_gain, bias_offset, sigma = U(0.01, 0.04), U(4, 15), U(10, 25)
    # Only shape-dependent draws (white noise) from here on: the anatomy of a seed does not
    # depend on the grid shape.
    hu = _render(paint.tissue, LIVER_TISSUES, mean, texture, (coarse_tex, _fine_texture(rng, grid.shape)))
    _blur_in_place(hu, grid)
    # A smooth multiplicative and additive bias inside the body (beam hardening, scatter).
    bias = bias_field * body
    hu = hu * (1.0 + bias_gain * bias) + bias_offset * bias
    hu += sigma * _fine_texture(rng, grid.shape)   # CT noise, slightly correlated in-plane
    return np.clip(np.rint(hu), -1024, 3071).astype(np.float32), paint.tissue


def _paint_tube(
    paint: _Painter, a: _Anatomy, name: str, start, end, radius_start: float, radius_end: float,
    *, within: np.ndarray,
) -> None:
    """Paint a tapered tube, evaluated only in its bounding box, where ``within`` holds."""
    mid = [(p + q) / 2.0 for p, q in zip(start, end)]
    half = math.dist(start, end) / 2.0 + max(radius_start, radius_end)
    box, sub = a.crop(mid, half)
    paint.paint(name, within[box] & _tube(sub, start, end, radius_start, radius_end), box)


def _blur_in_place(image: np.ndarray, grid: _Grid, fwhm_mm: tuple[float, float, float] = (1.5, 1.5, 3.0)) -> None:
    """Partial-volume blur (Gaussian, FWHM in millimetres) so edges are not one-voxel steps."""
    from scipy.ndimage import gaussian_filter

    sigma = [f / 2.355 / s for f, s in zip(fwhm_mm, grid.spacing)]
    gaussian_filter(image, sigma=sigma, output=image, mode="nearest", truncate=3.0)


def _correlate_in_plane(noise: np.ndarray) -> np.ndarray:
    """Unit-variance noise with a short in-plane correlation ([1, 2, 1]/4 along axes 0 and 1)."""
    out = noise * 2.0
    out[1:] += noise[:-1]
    out[:-1] += noise[1:]
    tmp = out * 2.0
    tmp[:, 1:] += out[:, :-1]
    tmp[:, :-1] += out[:, 1:]
    return tmp / np.float32(6.0)   # sqrt of the kernel's sum of squares, (1 + 4 + 1) per axis


# =========================================================================================
# cardiac-mr
# =========================================================================================
CARDIAC_TISSUES: tuple[str, ...] = (
    "air", "lung", "fat", "muscle", "myocardium", "lv_blood", "papillary", "rv_blood", "rv_wall",
    "atrial_blood", "atrial_wall", "aorta", "liver", "marrow", "bone_cortex", "csf",
)
CARDIAC_LABELS = {"background": 0, "rv": 1, "myocardium": 2, "lv": 3}
_CARDIAC_TISSUE_LABELS = {"rv_blood": "rv", "myocardium": "myocardium", "lv_blood": "lv", "papillary": "lv"}


def _build_cardiac_mr(rng: np.random.Generator, grid: _Grid) -> tuple[np.ndarray, np.ndarray]:
    """bSSFP short-axis stack. Anatomical axes: X → image left-right, Y → anterior, Z → apex to base."""
    U = rng.uniform
    a = _deformed_coordinates(
        rng, grid, rotation_deg=20.0, shift_mm=(10.0, 10.0, 4.0),
        warp_scale_mm=(45.0, 45.0, 40.0), warp_mm=(2.0, 4.0),
    )
    X, Y, Z = a.X, a.Y, a.Z
    paint = _Painter(grid.shape, CARDIAC_TISSUES)
    fat_field = _smooth_noise(rng, grid, (12.0, 12.0, 16.0))
    coarse_tex = _smooth_noise(rng, grid, (10.0, 10.0, 16.0))
    bias_field = _smooth_noise(rng, grid, 120.0)

    # --- chest: wall layers, the cavity filled with lung ---------------------------------------
    chest_cy = U(-45, -25)
    half_w, half_d = U(135, 165), U(100, 120)
    rho = np.maximum(_superellipse(X, Y - chest_cy, half_w, half_d, 2.2), 1e-3)
    depth = np.hypot(X, Y - chest_cy) * (1.0 / rho - 1.0)
    body = rho < 1.0
    fat_t = U(8, 22)
    wall_t = fat_t + U(10, 18)
    cavity = body & (depth >= wall_t)
    paint.paint("fat", body)
    paint.paint("muscle", body & (depth >= fat_t))
    paint.paint("lung", cavity)

    # --- spine, back muscles, descending aorta --------------------------------------------------
    spine_x, spine_y = U(-10, 10), chest_cy - half_d + U(55, 65)
    vb_r = U(15, 19)
    for sign in (-1.0, 1.0):
        back = ((X - spine_x - sign * U(30, 40)) / U(28, 36)) ** 2 + ((Y - spine_y + vb_r + 10.0) / U(26, 32)) ** 2
        paint.paint("muscle", body & (back < 1.0))
    r_spine = np.hypot(X - spine_x, Y - spine_y)
    paint.paint("bone_cortex", r_spine < vb_r)
    paint.paint("marrow", r_spine < vb_r - 2.0)
    paint.paint("csf", np.hypot(X - spine_x, Y - spine_y + vb_r + 8.0) < U(6, 8))
    aorta_c = (spine_x + U(18, 28), spine_y + vb_r + U(4, 12))
    paint.paint("aorta", np.hypot(X - aorta_c[0], Y - aorta_c[1]) < U(9, 12))

    # --- left ventricle: nested half-ellipsoids, apex at z_apex ------------------------------
    z_apex = -grid.fov[2] / 2.0 + U(4, 14)
    length = U(66, 82)
    s = (Z - z_apex) / length                                  # 0 at the apex, 1 at the base
    lv_x, lv_y = U(5, 20), U(0, 15)
    cx = lv_x + U(-8, 8) * (1.0 - s)                           # the long axis is not quite
    cy = lv_y + U(-8, 8) * (1.0 - s)                           # perpendicular to the slices
    r_cav, thick = U(20, 28), U(7, 11)
    s_eq = U(0.65, 0.8)
    apex_gap = thick * 0.7 / length

    def profile(radius: float, s0: float) -> np.ndarray:
        # Prolate cap from s0 up to the equator, then a slight narrowing towards the base.
        rising = np.sqrt(np.clip(1.0 - ((s_eq - s) / (s_eq - s0)) ** 2, 0.0, 1.0))
        falling = 1.0 - 0.08 * np.clip((s - s_eq) / (1.0 - s_eq), 0.0, 1.0)
        return radius * np.where(s < s_eq, rising, falling) * (s >= s0)

    dx, dy = X - cx, Y - cy
    r = np.hypot(dx, dy)
    theta = np.arctan2(dy, dx)
    oval = 1.0 + U(0.0, 0.1) * np.cos(2.0 * (theta - U(0, np.pi)))
    rv_dir = math.radians(U(140, 175))                         # towards the septum and the RV
    wall_var = 1.0 + U(0.0, 0.15) * np.cos(theta - rv_dir - np.pi)  # lateral wall a bit thicker
    in_stack = (s >= 0.0) & (s <= 1.0)
    endo_r = profile(r_cav, apex_gap) * oval
    # The wall reaches its full thickness a little above the apex; below, the apex is solid muscle.
    epi_r = (profile(r_cav, 0.0) + thick * np.sqrt(np.clip(s / 0.15, 0.0, 1.0)) * wall_var) * oval
    epi = in_stack & (r < epi_r)
    cavity_lv = in_stack & (r < endo_r)
    # At the base the outflow tract breaks the ring; it belongs to the cavity (as in ACDC).
    lvot_dir = rv_dir - U(0.5, 1.0)
    lvot = epi & (s > U(0.88, 0.95)) & (np.cos(theta - lvot_dir) > math.cos(U(0.35, 0.6)))

    # --- right ventricle: an ellipse over the septal side, minus the LV = a crescent ----------
    rv_s0, rv_s1 = U(0.15, 0.3), U(1.0, 1.1)
    rv_size = np.sqrt(np.clip((s - rv_s0) / (0.6 - rv_s0), 0.0, 1.0)) * (s <= rv_s1)
    outer = r_cav + thick
    rv_off = outer * U(0.3, 0.6)
    along_c = (X - cx) * math.cos(rv_dir) + (Y - cy) * math.sin(rv_dir) - rv_off
    across = -(X - cx) * math.sin(rv_dir) + (Y - cy) * math.cos(rv_dir)
    rv_depth = (outer - rv_off + U(14, 24)) * np.maximum(rv_size, 1e-3)
    rv_span = outer * U(1.3, 1.7) * np.maximum(rv_size, 1e-3)
    rv_wall_t = U(3, 4.5)
    rv_e = (along_c / rv_depth) ** 2 + (across / rv_span) ** 2
    rv_outer = (rv_e < 1.0) & (rv_size > 0.05)
    rv_inner = ((along_c / (rv_depth - rv_wall_t)) ** 2 + (across / (rv_span - rv_wall_t)) ** 2 < 1.0) & (rv_size > 0.15)
    lv_epi_grown = in_stack & (r < epi_r + 1.5)

    # --- atria and aortic root above the base ------------------------------------------------
    la_level = (s > 0.97) & (s < 1.7)
    ra_level = (s > rv_s1) & (s < 1.7)
    la_c, la_r = (lv_x + U(-8, 8), lv_y - U(10, 20)), U(18, 25)
    ra_c = (lv_x + math.cos(rv_dir) * U(35, 50), lv_y + math.sin(rv_dir) * U(10, 30) - U(5, 15))
    ra_r = U(17, 24)
    la_dist = np.hypot(X - la_c[0], Y - la_c[1])
    ra_dist = np.hypot(X - ra_c[0], Y - ra_c[1])
    la, ra = la_level & (la_dist < la_r), ra_level & (ra_dist < ra_r)
    atrial_walls = (la_level & (la_dist < la_r + 2.5)) | (ra_level & (ra_dist < ra_r + 2.5))
    ao_root = (s > 0.95) & (s < 1.7) & (np.hypot(X - (lv_x - U(0, 10)), Y - (lv_y + U(15, 25))) < U(11, 15))

    # --- mediastinal and epicardial fat, liver under the apex ---------------------------------
    # A fat pad between the heart and the anterior chest wall; patchy fat in the grooves.
    front_pad = cavity & (depth < wall_t + U(10, 20)) & (np.abs(X - lv_x + 20.0) < U(50, 70)) & (Y > lv_y)
    paint.paint("fat", front_pad & (fat_field > U(-0.6, 0.0)))
    heart_zone = (in_stack & (r < epi_r + U(3, 6))) | (rv_e < 1.15**2) & (rv_size > 0.05) | la | ra | ao_root
    paint.paint("fat", cavity & heart_zone & (fat_field > U(0.0, 0.5)))
    liver_c = (lv_x - U(30, 50), lv_y - U(50, 70), z_apex - U(10, 30))
    liver = _ellipsoid(a, liver_c, (U(80, 100), U(55, 70), U(50, 70))) < 1.0
    paint.paint("liver", cavity & liver & ~(in_stack & (r < epi_r)))

    # --- heart chambers, last so they win ------------------------------------------------------
    paint.paint("atrial_wall", atrial_walls)
    paint.paint("atrial_blood", la | ra)
    paint.paint("aorta", ao_root)
    paint.paint("rv_wall", rv_outer & ~lv_epi_grown)
    paint.paint("rv_blood", rv_inner & ~lv_epi_grown)
    paint.paint("myocardium", epi)
    paint.paint("lv_blood", cavity_lv | lvot)
    for angle in (rv_dir + np.pi + U(0.5, 0.9), rv_dir + np.pi - U(0.5, 0.9)):
        p_r, p_at = U(3.5, 5.5), U(0.55, 0.7)
        px, py = cx + np.cos(angle) * endo_r * p_at, cy + np.sin(angle) * endo_r * p_at
        papillary = cavity_lv & (s > 0.3) & (s < 0.85) & ((X - px) ** 2 + (Y - py) ** 2 < p_r**2)
        paint.paint("papillary", papillary)

    # --- intensities: bSSFP contrast, coil bias, Rician noise ----------------------------------
    scale = U(700, 1200)
    rel = {
        "air": 0.0, "lung": U(0.03, 0.07), "fat": U(0.75, 0.95), "muscle": U(0.22, 0.32),
        "myocardium": U(0.3, 0.45), "lv_blood": U(0.9, 1.05), "papillary": U(0.32, 0.45),
        "rv_blood": U(0.8, 1.0), "rv_wall": U(0.3, 0.45), "atrial_blood": U(0.8, 1.0),
        "atrial_wall": U(0.3, 0.45), "aorta": U(0.75, 0.95), "liver": U(0.3, 0.42),
        "marrow": U(0.4, 0.55), "bone_cortex": U(0.03, 0.08), "csf": U(0.8, 0.95),
    }
    mean = {k: v * scale for k, v in rel.items()}
    texture = {k: 0.04 * scale for k in ("lv_blood", "rv_blood", "atrial_blood", "fat", "liver", "muscle")}
    texture.update(myocardium=0.03 * scale, lung=0.02 * scale)
    coil_gain, bias_gain, sigma = U(0.1, 0.4), U(0.1, 0.3), scale * U(0.015, 0.04)
    # Only shape-dependent draws (white noise) from here on.
    signal = _render(paint.tissue, CARDIAC_TISSUES, mean, texture, (coarse_tex, _fine_texture(rng, grid.shape)))
    signal = np.maximum(signal, 0.0)
    _blur_in_place(signal, grid, fwhm_mm=(2.0, 2.0, 4.0))
    coil = np.clip(1.0 + coil_gain * (Y / (grid.fov[1] / 2.0)), 0.3, None)   # anterior surface coil
    signal *= np.exp(bias_gain * bias_field) * coil
    real = signal + sigma * rng.standard_normal(grid.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(grid.shape, dtype=np.float32)
    return np.rint(np.sqrt(real * real + imag * imag)).astype(np.float32), paint.tissue   # Rician


# =========================================================================================
# Registry and entry points
# =========================================================================================
PHANTOM_KINDS: dict[str, PhantomKind] = {
    "liver-ct": PhantomKind(
        name="liver-ct", modality="CT", labels=LIVER_LABELS, shape=(128, 128, 44), spacing=(2.8, 2.8, 5.0),
        build=_build_liver_ct, tissues=LIVER_TISSUES, tissue_labels=_LIVER_TISSUE_LABELS,
        description="axial portal-venous abdominal CT (HU): liver, kidneys, spleen (CHAOS ids)",
    ),
    "cardiac-mr": PhantomKind(
        name="cardiac-mr", modality="MR", labels=CARDIAC_LABELS, shape=(128, 128, 12), spacing=(1.8, 1.8, 8.0),
        build=_build_cardiac_mr, tissues=CARDIAC_TISSUES, tissue_labels=_CARDIAC_TISSUE_LABELS,
        description="short-axis cine bSSFP MR: rv, myocardium, lv (ACDC ids)",
    ),
}


def phantom_kind(name: str) -> PhantomKind:
    """Look up a phantom kind; an unknown name raises :class:`ConfigError` listing the valid ones."""
    try:
        return PHANTOM_KINDS[name]
    except KeyError:
        valid = ", ".join(sorted(PHANTOM_KINDS))
        raise ConfigError(f"unknown phantom kind {name!r}; valid kinds: {valid}") from None


def resolve_geometry(kind: str, shape: Shape3 | None = None, spacing: Spacing3 | None = None) -> tuple[Shape3, Spacing3]:
    """The grid a phantom is drawn on.

    The anatomy is defined in millimetres, so a changed ``shape`` alone keeps the kind's field of
    view (the spacing grows as the grid shrinks), a changed ``spacing`` alone keeps it too (the
    shape adapts), and both together set the field of view to ``shape × spacing``.

    Raises:
        ConfigError: a shape or spacing that is not three positive numbers, or a grid under
            8×8×3 voxels.
    """
    spec = phantom_kind(kind)
    if shape is not None:
        shape = tuple(int(v) for v in shape)  # type: ignore[assignment]
        if len(shape) != 3 or min(shape) < 1:
            raise ConfigError(f"phantom shape must be three positive integers, got {shape}")
        if shape[0] < 8 or shape[1] < 8 or shape[2] < 3:
            raise ConfigError(f"phantom shape {shape} is too small (at least 8×8×3 voxels)")
    if spacing is not None:
        spacing = tuple(float(v) for v in spacing)  # type: ignore[assignment]
        if len(spacing) != 3 or not all(math.isfinite(v) and v > 0 for v in spacing):
            raise ConfigError(f"phantom spacing must be three positive millimetre values, got {spacing}")
    fov = spec.field_of_view
    if shape is None and spacing is None:
        return spec.shape, spec.spacing
    if spacing is None:
        return shape, tuple(f / n for f, n in zip(fov, shape))  # type: ignore[return-value]
    if shape is None:
        shape = tuple(max(1, int(round(f / s))) for f, s in zip(fov, spacing))  # type: ignore[assignment]
        return resolve_geometry(kind, shape, spacing)
    return shape, spacing  # type: ignore[return-value]


def make_phantom(kind: str, seed: int, *, shape: Shape3 | None = None, spacing: Spacing3 | None = None) -> Phantom:
    """Draw one phantom volume.

    Args:
        kind: a key of :data:`PHANTOM_KINDS` (``liver-ct``, ``cardiac-mr``).
        seed: any non-negative integer; the same seed, kind, shape and spacing give a bit-identical
            phantom. With the default field of view the anatomy of a seed is the same at any shape.
        shape: grid ``(X, Y, Z)``; default the kind's (see :func:`resolve_geometry`).
        spacing: voxel size in millimetres; axis 2 is the through-plane axis.

    Returns:
        A :class:`Phantom` with float32 image, int16 label, affine and label names.

    Raises:
        ConfigError: unknown kind, invalid shape/spacing or seed.
    """
    spec = phantom_kind(kind)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"phantom seed must be a non-negative integer, got {seed!r}")
    keeps_fov = shape is None or spacing is None
    shape, spacing = resolve_geometry(kind, shape, spacing)
    fov = spec.field_of_view if keeps_fov else tuple(n * s for n, s in zip(shape, spacing))
    grid = _Grid(shape, spacing, fov)  # type: ignore[arg-type]
    # The kind's name is mixed into the seed so that two kinds with one seed are unrelated.
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), *spec.name.encode()]))
    image, tissue = spec.build(rng, grid)
    lut = np.zeros(len(spec.tissues), np.int16)
    for tissue_name, class_name in spec.tissue_labels.items():
        lut[spec.tissues.index(tissue_name)] = spec.labels[class_name]
    return Phantom(
        image=np.ascontiguousarray(image, dtype=np.float32),
        label=lut[tissue],
        affine=grid.affine,
        labels=dict(spec.labels),
        kind=spec.name,
        tissue=tissue,
        tissues={n: i for i, n in enumerate(spec.tissues)},
    )


def case_seed(seed: int, index: int) -> int:
    """The phantom seed of case ``index`` in a dataset generated with ``seed`` (well mixed, 32 bits)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def case_id(kind: str, index: int) -> str:
    """Case name in a generated dataset, e.g. ``liver_ct_003``."""
    return f"{kind.replace('-', '_')}_{index:03d}"


def generate_phantom_dataset(
    out: str | PathLike[str],
    kind: str = "liver-ct",
    *,
    n_train: int = 12,
    n_test: int = 4,
    seed: int = 0,
    shape: Shape3 | None = None,
    spacing: Spacing3 | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write a canonical dataset of phantoms (``imagesTr``/``labelsTr``, ``imagesTs``/``labelsTs``).

    Case ``i`` (training cases first, then test cases, numbered on) is
    ``make_phantom(kind, case_seed(seed, i))``, so a training set of 12 holds the same 12 volumes
    whatever ``n_test`` is. ``dataset.json`` records the kind, seed, geometry and case seeds under
    ``"phantom"``. The folder is built under a temporary name and appears only when complete.

    Args:
        out: the dataset folder to create.
        kind: a key of :data:`PHANTOM_KINDS`.
        n_train: training cases (at least 1).
        n_test: test cases (0 for none: no ``imagesTs``).
        seed: dataset seed.
        shape, spacing: grid, see :func:`resolve_geometry`.
        overwrite: replace an existing ``out``.
        progress: show a progress bar (on a terminal only).

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: ``out`` exists (without ``overwrite``) or is not a folder.
        ConfigError: unknown kind, bad counts, shape, spacing or seed.
    """
    from tqdm import tqdm

    from jointreg.data.dataset import Dataset, DatasetSpec
    from jointreg.utils.atomic import atomic_dir

    spec = phantom_kind(kind)
    for name, value, low in (("n_train", n_train, 1), ("n_test", n_test, 0), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    keeps_fov = shape is None or spacing is None
    grid_shape, grid_spacing = resolve_geometry(kind, shape, spacing)
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(out, "already exists (use --overwrite to replace it)")
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")

    seeds = {case_id(kind, i): case_seed(seed, i) for i in range(n_train + n_test)}
    dataset_spec = DatasetSpec(
        channel_names={"0": spec.modality},
        labels=dict(spec.labels),
        num_training=int(n_train),
        name=f"jointreg {kind} phantom",
        extra={"phantom": {
            "kind": kind, "seed": int(seed), "shape": list(grid_shape), "spacing": list(grid_spacing),
            "case_seeds": seeds, "description": spec.description,
        }},
    )
    with atomic_dir(out, overwrite=overwrite) as tmp:
        dataset = Dataset.create(tmp, dataset_spec)
        # disable=None: a bar on a terminal, none in logs and pipes.
        bar = tqdm(total=n_train + n_test, desc=f"{kind} phantoms", unit="case", disable=None if progress else True)
        with bar:
            for i, (case, case_rng_seed) in enumerate(seeds.items()):
                split = "Tr" if i < n_train else "Ts"
                phantom = make_phantom(
                    kind, case_rng_seed, shape=grid_shape, spacing=None if keeps_fov else grid_spacing
                )
                dataset.write_image(case, phantom.image, affine=phantom.affine, split=split)
                dataset.write_label(case, phantom.label, affine=phantom.affine, split=split)
                bar.update(1)
    log.info("wrote %d %s phantom cases to %s", n_train + n_test, kind, out)
    return out
