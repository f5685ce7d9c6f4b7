"""Grids of registration: source voxels <-> the model grid, and sampling between any two grids.

**Where a source voxel sits on the model grid.** Training resamples a source axis of ``n``
voxels to ``r`` model pixels that start ``o`` pixels into the grid (the rest is padding), pixel
areas aligned (``F.interpolate(align_corners=False)``): source voxel ``s`` has its centre at the
model coordinate ``q = (s + 0.5) · r / n - 0.5 + o``, and back ``s = (q - o + 0.5) · n / r - 0.5``.
For 2D models ``n``, ``r`` and ``o`` of the two in-plane axes are those of the slice's
:class:`~jointreg.data.slices.PlaneGeometry` (``source_shape``, ``resized_shape`` and the top /
left ``padding``); 3D models resize every axis of the whole volume to the working size, with no
padding.

**Sampling.** :func:`resample` and :func:`resample_labels` read images and label maps at
arbitrary voxel coordinates, whatever the shapes of the two grids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from jointreg.data.slices import PlaneGeometry


# --------------------------------------------------------------------------------------------
# source voxels <-> model grid
# --------------------------------------------------------------------------------------------
def _axis_to_model(s: np.ndarray, source: int, resized: int, offset: int) -> np.ndarray:
    return (s + 0.5) * (resized / source) - 0.5 + offset


def _axis_to_source(q: np.ndarray, source: int, resized: int, offset: int) -> np.ndarray:
    return (q - offset + 0.5) * (source / resized) - 0.5


def _plane_axes(geometry: PlaneGeometry) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``(source, resized, offset)`` of the two in-plane axes of a slice geometry."""
    (h, w), (rh, rw) = geometry.source_shape, geometry.resized_shape
    top, _, left, _ = geometry.padding
    return (h, rh, top), (w, rw, left)


def _volume_axes(source_shape: Sequence[int], grid: Sequence[int]) -> list[tuple[int, int, int]]:
    """``(source, resized, offset)`` of every axis of a volume resized to ``grid`` (no padding)."""
    return [(int(n), int(r), 0) for n, r in zip(source_shape, grid)]


def _coordinates(axes: Sequence[tuple[int, int, int]]) -> np.ndarray:
    lines = [_axis_to_model(np.arange(n, dtype=np.float64), n, r, o) for n, r, o in axes]
    return np.stack(np.meshgrid(*lines, indexing="ij")).astype(np.float32)


def plane_model_coordinates(geometry: PlaneGeometry) -> np.ndarray:
    """Where every source pixel of a slice lies on the model grid.

    Returns:
        ``(2, h, w)`` float32 model-grid coordinates (pixels) of the source pixels
        ``(h, w) = geometry.source_shape``.
    """
    return _coordinates(_plane_axes(geometry))


def plane_source_coordinates(geometry: PlaneGeometry, q: np.ndarray) -> np.ndarray:
    """Model-grid positions back to source pixel coordinates of a slice.

    Args:
        geometry: the slice's geometry.
        q: ``(B, 2, *S)`` model-grid coordinates (pixels), channel ``d`` along in-plane axis ``d``.

    Returns:
        ``(B, 2, *S)`` float32 source pixel coordinates.
    """
    axes = _plane_axes(geometry)
    return np.stack([_axis_to_source(q[:, d], *axes[d]) for d in range(2)], axis=1).astype(np.float32)


def volume_model_coordinates(source_shape: Sequence[int], grid: Sequence[int]) -> np.ndarray:
    """Where every voxel of a volume lies on the 3D model grid ``grid``.

    Returns:
        ``(3, *source_shape)`` float32 model-grid coordinates (voxels).
    """
    return _coordinates(_volume_axes(source_shape, grid))


def volume_source_coordinates(source_shape: Sequence[int], grid: Sequence[int], q: np.ndarray) -> np.ndarray:
    """Model-grid positions ``(3, *S)`` back to voxel coordinates ``(3, *S)`` (float32) of the volume."""
    axes = _volume_axes(source_shape, grid)
    return np.stack([_axis_to_source(q[d], *axes[d]) for d in range(3)]).astype(np.float32)


def volume_on_grid(array: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """A 3D array resampled (trilinear, pixel areas aligned) to ``size``, as float32."""
    import torch
    import torch.nn.functional as F

    if tuple(array.shape) == tuple(size):
        return np.asarray(array, np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(array, np.float32))[None, None]
    return F.interpolate(tensor, size=size, mode="trilinear", align_corners=False)[0, 0].numpy()


# --------------------------------------------------------------------------------------------
# sampling a grid of any shape at coordinates on a grid of another shape
# --------------------------------------------------------------------------------------------
def _canvas(shape_in: Sequence[int], shape_out: Sequence[int]) -> tuple[int, ...]:
    return tuple(max(int(a), int(b)) for a, b in zip(shape_in, shape_out))


def _pad_end(array: np.ndarray, canvas: Sequence[int], mode: str) -> np.ndarray:
    lead = array.ndim - len(canvas)
    widths = [(0, 0)] * lead + [(0, c - n) for n, c in zip(array.shape[lead:], canvas)]
    if all(w == (0, 0) for w in widths):
        return array
    return np.pad(array, widths, mode=mode)


def resample(images: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Sample images (linear, edge values repeated outside) at voxel coordinates.

    Args:
        images: ``(B or 1, C, *S_in)`` float.
        coords: ``(B, D, *S_out)`` positions in the images' voxels, channel ``d`` along axis ``d``.

    Returns:
        ``(B, C, *S_out)`` float32.

    :func:`jointreg.spatial.sample` needs both grids to have one shape, so both are placed on a
    canvas large enough for either: the images are padded at the end with their edge values
    (which is what "border" sampling reads there anyway) and the result is cropped.
    """
    import torch

    from jointreg.spatial.warp import sample

    shape_out = coords.shape[2:]
    canvas = _canvas(images.shape[2:], shape_out)
    padded = _pad_end(np.asarray(images, np.float32), canvas, "edge")
    where = _pad_end(np.asarray(coords, np.float32), canvas, "constant")
    out = sample(torch.from_numpy(np.ascontiguousarray(padded)), torch.from_numpy(np.ascontiguousarray(where)))
    return out[(slice(None), slice(None), *(slice(0, n) for n in shape_out))].numpy()


def resample_labels(labels: np.ndarray, coords: np.ndarray, *, mode: str = "linear") -> np.ndarray:
    """Warp integer label maps to voxel coordinates: one-hot + linear + argmax, or nearest.

    Args:
        labels: ``(B or 1, *S_in)`` non-negative integer ids.
        coords: ``(B, D, *S_out)`` positions in the label maps' voxels.
        mode: ``"linear"`` (:func:`jointreg.spatial.warp_labels`: thin structures survive,
            ties go to the higher id) or ``"nearest"``.

    Returns:
        ``(B, *S_out)`` labels, same dtype as ``labels``.
    """
    import torch

    from jointreg.spatial.warp import identity_grid, warp_labels

    shape_out = coords.shape[2:]
    canvas = _canvas(labels.shape[1:], shape_out)
    padded = _pad_end(np.asarray(labels), canvas, "edge").astype(np.int64)
    flow = _pad_end((coords - identity_grid(shape_out).numpy()).astype(np.float32), canvas, "constant")
    num_classes = int(padded.max()) + 1 if padded.size else 1
    out = warp_labels(
        torch.from_numpy(np.ascontiguousarray(padded))[:, None],
        torch.from_numpy(np.ascontiguousarray(flow)),
        num_classes,
        mode=mode,
    )
    return out[(slice(None), 0, *(slice(0, n) for n in shape_out))].numpy().astype(labels.dtype)
