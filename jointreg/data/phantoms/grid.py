"""The voxel grid a phantom is drawn on, and its case-specific anatomical coordinates.

Every shape of a phantom is defined in *anatomical* millimetres. :func:`deformed_coordinates`
maps the voxel centres of a :class:`Grid` there through a random rotation about axis 2, a shift
and a smooth random displacement; :class:`Anatomy` holds the result and can crop it to the
bounding box of a small organ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from jointreg.data.phantoms.noise import Shape3, smooth_noise
Spacing3 = tuple[float, float, float]


@dataclass(frozen=True)
class Grid:
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
        """Voxel-centre coordinates along each axis: three float32 vectors ``(X,)``, ``(Y,)``, ``(Z,)`` in mm."""
        return tuple(  # type: ignore[return-value]
            ((np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s).astype(np.float32)
            for n, s in zip(self.shape, self.spacing)
        )

    @property
    def affine(self) -> np.ndarray:
        """4×4 float64 voxel-to-world affine (RAS+ mm): diagonal spacing, the volume centred on the origin."""
        affine = np.diag([*self.spacing, 1.0]).astype(np.float64)
        affine[:3, 3] = [-(n - 1) / 2.0 * s for n, s in zip(self.shape, self.spacing)]
        return affine


@dataclass
class Anatomy:
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

    def crop(self, centre, radius: float) -> tuple[tuple[slice, slice, slice], Anatomy]:
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
        return sl, Anatomy(self.X[sl], self.Y[sl], self.Z[sl])  # type: ignore[return-value]


def deformed_coordinates(
    rng: np.random.Generator, grid: Grid, *, rotation_deg: float, shift_mm: tuple[float, float, float],
    warp_scale_mm: tuple[float, float, float], warp_mm: tuple[float, float],
) -> Anatomy:
    """Map voxel centres to anatomical coordinates: rotation about axis 2, shift, smooth warp.

    The warp is a displacement field with per-component standard deviation drawn from
    ``warp_mm`` and correlation length ``warp_scale_mm``; it is what makes two cases (and two
    slices of one case) differ non-rigidly.
    """
    theta = math.radians(rng.uniform(-rotation_deg, rotation_deg))
    shift = rng.uniform(-1.0, 1.0, 3) * np.asarray(shift_mm)
    amplitude = rng.uniform(*warp_mm)
    ux, uy, uz = (smooth_noise(rng, grid, warp_scale_mm) * amplitude for _ in range(3))
    x, y, z = grid.axes
    c, s = math.cos(theta), math.sin(theta)
    X = c * x[:, None, None] - s * y[None, :, None] - shift[0] + ux
    Y = s * x[:, None, None] + c * y[None, :, None] - shift[1] + uy
    Z = z[None, None, :] - shift[2] + uz
    margin = float(np.sqrt(ux * ux + uy * uy + uz * uz).max()) + 1e-3
    return Anatomy(
        X.astype(np.float32), Y.astype(np.float32), Z.astype(np.float32),
        theta=theta, shift=tuple(float(v) for v in shift), margin=margin, axes=grid.axes,  # type: ignore[arg-type]
    )
