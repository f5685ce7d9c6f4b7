"""Random fields of the phantoms: smooth B-spline noise and short-range texture.

Everything is element-wise numpy (no BLAS), so a field is bit-identical on every machine and
thread count; the number of random draws of the smooth fields depends on the field of view
only, so that the anatomy drawn for a seed does not depend on the grid shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np

Shape3 = tuple[int, int, int]


class Grid(Protocol):
    """What the noise needs of a phantom grid (:class:`jointreg.data.phantoms.grid.Grid`):
    the voxel-centre coordinates per axis and the field of view, in mm."""

    axes: Sequence[np.ndarray]
    fov: Sequence[float]


def bspline_taps(coords: np.ndarray, extent: float, step: float) -> tuple[int, np.ndarray, np.ndarray]:
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


def interpolate_axis(values: np.ndarray, axis: int, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Resample ``values`` along ``axis`` with the 4-tap ``(index, weight)`` of :func:`bspline_taps`."""
    shape = [1] * values.ndim
    shape[axis] = -1
    out = np.take(values, index[:, 0], axis=axis) * weight[:, 0].reshape(shape)
    for k in range(1, 4):
        out += np.take(values, index[:, k], axis=axis) * weight[:, k].reshape(shape)
    return out


def smooth_noise(rng: np.random.Generator, grid: Grid, scale_mm: float | tuple[float, float, float]) -> np.ndarray:
    """A smooth random field with zero mean and unit variance, correlation length ~``scale_mm``.

    Random values on a coarse lattice laid over the field of view, interpolated by separable
    cubic B-splines (4 taps per axis). Element-wise numpy only, no BLAS: the result is
    bit-identical whatever the machine or thread count, and the number of random draws depends
    on the field of view, not on the grid shape.

    Returns:
        ``grid.shape`` float32 array.
    """
    scales = (scale_mm,) * 3 if isinstance(scale_mm, (int, float)) else scale_mm
    taps = [bspline_taps(c, e, s) for c, e, s in zip(grid.axes, grid.fov, scales)]
    field = rng.standard_normal(tuple(n for n, _, _ in taps)).astype(np.float32)
    for axis in (2, 1, 0):   # the coarsest-to-finest order keeps the intermediate arrays small
        field = interpolate_axis(field, axis, taps[axis][1], taps[axis][2])
    return np.ascontiguousarray(field, dtype=np.float32)


def smooth_noise_along_z(rng: np.random.Generator, grid: Grid, scale_mm: float) -> np.ndarray:
    """A smooth unit-variance random function of axis 2 only, shaped ``(1, 1, Z)`` to broadcast."""
    nodes, index, weight = bspline_taps(grid.axes[2], grid.fov[2], scale_mm)
    values = rng.standard_normal(nodes).astype(np.float32)
    return interpolate_axis(values, 0, index, weight)[None, None, :]


def fine_texture(rng: np.random.Generator, shape: Shape3) -> np.ndarray:
    """Unit-variance noise correlated over about one voxel in-plane (drawn last: shape-dependent)."""
    return correlate_in_plane(rng.standard_normal(shape, dtype=np.float32))


def correlate_in_plane(noise: np.ndarray) -> np.ndarray:
    """Unit-variance noise with a short in-plane correlation ([1, 2, 1]/4 along axes 0 and 1)."""
    out = noise * 2.0
    out[1:] += noise[:-1]
    out[:-1] += noise[1:]
    tmp = out * 2.0
    tmp[:, 1:] += out[:, :-1]
    tmp[:, :-1] += out[:, 1:]
    return tmp / np.float32(6.0)   # sqrt of the kernel's sum of squares, (1 + 4 + 1) per axis
