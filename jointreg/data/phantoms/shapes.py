"""Implicit shapes in anatomical coordinates (millimetres): rotations, ellipsoids, tubes.

Each function takes an :class:`~jointreg.data.phantoms.grid.Anatomy` (or its coordinate
arrays) and returns a per-voxel value or mask of the anatomy's shape ``(X, Y, Z)``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from jointreg.data.phantoms.grid import Anatomy


def rotation_matrix(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """3×3 rotation: ``roll`` about X, then ``pitch`` about Y, then ``yaw`` about Z (radians)."""
    cr, sr, cp, sp, cy, sy = math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch), math.cos(yaw), math.sin(yaw)
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return rz @ ry @ rx


def local_coordinates(a: Anatomy, centre, rotation: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def ellipsoid(a: Anatomy, centre, radii, rotation: np.ndarray | None = None) -> np.ndarray:
    """Normalised squared radius of an (optionally rotated) ellipsoid: ``< 1`` inside."""
    lx, ly, lz = local_coordinates(a, centre, rotation)
    return (lx / radii[0]) ** 2 + (ly / radii[1]) ** 2 + (lz / radii[2]) ** 2


def tube(a: Anatomy, start, end, radius_start: float, radius_end: float) -> np.ndarray:
    """Mask of a straight tube from ``start`` to ``end`` (mm) whose radius tapers linearly."""
    v = np.asarray(end, np.float64) - np.asarray(start, np.float64)
    dx, dy, dz = a.X - start[0], a.Y - start[1], a.Z - start[2]
    t = np.clip((dx * v[0] + dy * v[1] + dz * v[2]) / float(v @ v), 0.0, 1.0)
    dist2 = (dx - t * v[0]) ** 2 + (dy - t * v[1]) ** 2 + (dz - t * v[2]) ** 2
    return dist2 < (radius_start + (radius_end - radius_start) * t) ** 2


def superellipse(dx: np.ndarray, dy: np.ndarray, rx, ry, power: float) -> np.ndarray:
    """``(|dx/rx|^p + |dy/ry|^p)^(1/p)``: 1 on a rounded-rectangle outline (p > 2 is boxier)."""
    rx = np.maximum(rx, 1e-3)
    ry = np.maximum(ry, 1e-3)
    return (np.abs(dx / rx) ** power + np.abs(dy / ry) ** power) ** (1.0 / power)


def frac(v: np.ndarray) -> np.ndarray:
    """Fractional part ``v - floor(v)`` in ``[0, 1)``: a sawtooth for periodic structures (ribs, discs)."""
    return v - np.floor(v)
