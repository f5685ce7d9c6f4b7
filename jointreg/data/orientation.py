"""Exact reorientation of volumes: flips and permutations of the array axes, never resampling.

Convention:
    An *orientation* is a string of nibabel axis codes, one letter per array axis, naming the
    world direction (RAS+ millimetres, as in NIfTI) towards which that axis's index grows:
    ``"RAS"`` has axis 0 running towards the patient's Right, axis 1 towards Anterior and axis 2
    towards Superior; ``"LPS"`` is DICOM's patient frame. The orientation of an affine gives
    every array axis the world axis that its affine column is closest to (nibabel's
    ``io_orientation``), so oblique and sheared affines have one too.

    Reorienting a volume into another orientation only reverses and permutes its first three
    array axes. Voxel values are moved, never interpolated: intensities and label ids are those
    of the input, and the round trip restores the input bit for bit. The affine is rewritten so
    that every voxel keeps its world position::

        new_affine = affine @ T,    T: new voxel index -> old voxel index

    (a reversed axis of length ``n`` maps index ``i`` to ``n - 1 - i``; a permutation reorders
    the columns). The reoriented volume therefore overlays the input exactly, and an oblique
    affine stays oblique: only the closest axes are matched, direction cosines are not rounded.

Why one rule: ``jointreg segment`` moves an input into the training data's orientation and its
prediction back, and the DICOM converter moves a NIfTI mask stored in another axis order (ITK
writes rows top-down) onto the series' grid. Both must agree on what "the same voxel" means, so
both go through :func:`reorient`.

Example:
    >>> volume = Volume(np.zeros((4, 5, 6), np.float32), np.diag([-1.0, 1.0, 2.0, 1.0]))  # "LAS"
    >>> ras, change = reorient(volume, "RAS")
    >>> float(ras.affine[0, 0]), change.is_identity
    (1.0, False)
    >>> np.array_equal(change.inverse().apply(ras.array), volume.array)
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from jointreg.data.nifti import Volume

# The orientation transform that leaves every axis in place and unreversed.
_IDENTITY = np.array([[0, 1], [1, 1], [2, 1]])


@dataclass(frozen=True, eq=False)
class Reorientation:
    """A flip/permutation of the three spatial array axes, from one orientation to another.

    Attributes:
        transform: ``(3, 2)`` nibabel orientation transform: row ``n`` holds the axis that
            source axis ``n`` becomes, and ``1`` (same direction) or ``-1`` (reversed).
        source_shape: ``(X, Y, Z)`` shape of the arrays it applies to, in voxels.
    """

    transform: np.ndarray
    source_shape: tuple[int, int, int]

    @property
    def is_identity(self) -> bool:
        """Whether the transform keeps every axis where it is, unreversed."""
        return bool(np.array_equal(self.transform, _IDENTITY))

    @property
    def target_shape(self) -> tuple[int, int, int]:
        """``(X', Y', Z')``: the shape of a reoriented array."""
        shape = [0, 0, 0]
        for axis, (new_axis, _) in enumerate(self.transform):
            shape[int(new_axis)] = self.source_shape[axis]
        return tuple(shape)  # type: ignore[return-value]

    def apply(self, array: np.ndarray, *, channels_first: bool = False) -> np.ndarray:
        """Reorient an array of ``source_shape``.

        Args:
            array: ``(X, Y, Z, ...)``; with ``channels_first``, ``(C, X, Y, Z)`` (e.g. class
                probabilities), whose channel axis is kept first.
            channels_first: whether axis 0 is a channel axis rather than a spatial one.

        Returns:
            A C-contiguous array of ``target_shape`` (channels and trailing axes unchanged).

        Raises:
            ValueError: the spatial shape is not ``source_shape``.
        """
        spatial = tuple(array.shape[1:4] if channels_first else array.shape[:3])
        if spatial != tuple(self.source_shape):
            raise ValueError(f"array of spatial shape {spatial} does not match the reorientation's {tuple(self.source_shape)}")
        if channels_first:
            # nibabel transforms the leading axes: move the channels last and back.
            moved = apply_orientation(np.moveaxis(array, 0, -1), self.transform)
            return np.ascontiguousarray(np.moveaxis(moved, -1, 0))
        return np.ascontiguousarray(apply_orientation(array, self.transform))

    def map_affine(self, affine: np.ndarray) -> np.ndarray:
        """The 4×4 affine of the reoriented array: every voxel keeps its world position (mm)."""
        return np.asarray(affine) @ inv_ornt_aff(self.transform, self.source_shape)

    def inverse(self) -> Reorientation:
        """The reorientation back: applied to :meth:`apply`'s output it restores the input exactly."""
        back = np.empty_like(self.transform)
        for axis, (new_axis, flip) in enumerate(self.transform):
            back[int(new_axis)] = (axis, flip)
        return Reorientation(back, self.target_shape)


def _orientation(target: str | np.ndarray) -> np.ndarray:
    """``(3, 2)`` nibabel orientation of axis codes (``"RAS"``) or of a 4×4 affine."""
    if isinstance(target, str):
        return axcodes2ornt(tuple(target))
    return io_orientation(np.asarray(target))


def reorientation(affine: np.ndarray, target: str | np.ndarray, shape: tuple[int, ...]) -> Reorientation:
    """The flip/permutation that takes an array on ``affine`` into orientation ``target``.

    Args:
        affine: 4×4 voxel-to-world affine (RAS+ mm) of the array.
        target: axis codes such as ``"RAS"``, or the 4×4 affine whose orientation is wanted.
        shape: the array's shape; its first three entries are the spatial axes.

    Raises:
        ValueError: an affine without a clear direction for some axis (a zero or degenerate
            column), or invalid axis codes.
    """
    source, wanted = io_orientation(np.asarray(affine)), _orientation(target)
    for what, ornt in (("affine", source), ("target", wanted)):
        if np.isnan(ornt).any():
            axis = int(np.flatnonzero(np.isnan(ornt[:, 0]))[0])
            raise ValueError(f"the {what} gives array axis {axis} no direction in space; cannot reorient")
    transform = ornt_transform(source, wanted)
    return Reorientation(transform, tuple(int(n) for n in shape[:3]))  # type: ignore[arg-type]


def reorient(volume: Volume, target: str | np.ndarray) -> tuple[Volume, Reorientation]:
    """``volume`` flipped/permuted into orientation ``target``, and the reorientation applied.

    Args:
        volume: a 3D volume (array ``(X, Y, Z)`` and its affine).
        target: axis codes such as ``"RAS"``, or the 4×4 affine whose orientation is wanted.

    Returns:
        ``(reoriented, change)``. ``reoriented`` holds the moved voxels, the affine that keeps
        their world positions, and ``volume``'s header and path (the header is only carried
        along: writers take the geometry from the affine). When ``volume`` is already in
        ``target``'s orientation, ``change.is_identity`` holds and ``reoriented`` is ``volume``
        itself. ``change.inverse().apply`` maps arrays on the new grid (e.g. predictions) back.

    Raises:
        ValueError: see :func:`reorientation`.
    """
    change = reorientation(volume.affine, target, volume.shape)
    if change.is_identity:
        return volume, change
    moved = Volume(change.apply(volume.array), change.map_affine(volume.affine), volume.header, volume.path)
    return moved, change
