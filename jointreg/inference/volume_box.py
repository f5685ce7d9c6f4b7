"""The common box of 3D registration: every volume at one spacing, centred in one shape.

3D mode (``volumes.enabled``, :mod:`jointreg.training.volume_mode`) registers whole volumes. Their
shapes and voxel sizes differ, so each one is resampled to the box: ``spacing`` millimetres per
box voxel along each array axis of the source (in the source's axis order), ``shape`` voxels,
with the centre of the volume's extent at the centre of the box. What does not fit is cropped;
the rest of the box is padding (image 0, labels unknown).

Every map between grids here is one scale and one offset per axis (:class:`AxisMap`), so the
maps compose and invert exactly:

* source voxels -> box voxels: ``q = (x + 0.5) · a - 0.5 + (B - n · a) / 2`` with
  ``a = source spacing / box spacing`` (voxel areas aligned, centres matched);
* source voxels -> the training grid of slices (:class:`~jointreg.data.slices.PlaneGeometry`):
  the slicing axis unchanged, the in-plane axes resized and padded as the slices are.

The box is filled from a volume's training slices (:class:`~jointreg.data.slices.SlicedVolume`:
already normalised and antialiased in-plane), so that 3D mode, its exported registration and
``jointreg register`` read volumes the same way, and registered labels come back onto the
training slices (for the segmentor) or onto the source grid (for outputs) with one sampling.

Example:
    A 256 × 256 × 36 volume at 1.25 × 1.25 × 7.7 mm sliced to 64² (5 mm per pixel) in a
    ``spacing=(5, 5, 7.7)``, ``shape=(64, 64, 40)`` box: in-plane the box is the training grid;
    along the slices the 36 slices sit in the middle of 40 (2 empty slices on each side).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jointreg.data.slices import SlicedVolume


@dataclass(frozen=True)
class AxisMap:
    """``y[d] = scale[d] · x[d] + offset[d]`` for each axis ``d`` (a diagonal affine map)."""

    scale: tuple[float, ...]
    offset: tuple[float, ...]

    def apply(self, coords: np.ndarray) -> np.ndarray:
        """Map ``(D, *S)`` coordinates (channel ``d`` along axis ``d``); float32."""
        a = np.asarray(self.scale, np.float64).reshape(-1, *([1] * (coords.ndim - 1)))
        b = np.asarray(self.offset, np.float64).reshape(a.shape)
        return (coords * a + b).astype(np.float32)

    def inverse(self) -> AxisMap:
        return AxisMap(tuple(1.0 / a for a in self.scale), tuple(-b / a for a, b in zip(self.scale, self.offset)))

    def then(self, other: AxisMap) -> AxisMap:
        """This map followed by ``other``."""
        return AxisMap(tuple(a2 * a1 for a1, a2 in zip(self.scale, other.scale)),
                       tuple(a2 * b1 + b2 for b1, a2, b2 in zip(self.offset, other.scale, other.offset)))


def source_to_box(shape: Sequence[int], spacing: Sequence[float], box_spacing: Sequence[float],
                  box_shape: Sequence[int]) -> AxisMap:
    """Source voxel coordinates -> box voxel coordinates (module docstring)."""
    scale = tuple(float(s) / float(t) for s, t in zip(spacing, box_spacing))
    offset = tuple(0.5 * a - 0.5 + (int(b) - int(n) * a) / 2.0 for a, n, b in zip(scale, shape, box_shape))
    return AxisMap(scale, offset)


def stack_order(volume: SlicedVolume) -> list[int]:
    """The source axis of each training-stack axis: ``[slicing axis, in-plane 0, in-plane 1]``."""
    return [volume.axis, *[a for a in range(3) if a != volume.axis]]


def source_to_stack(volume: SlicedVolume) -> AxisMap:
    """Source voxel coordinates -> training-stack coordinates, both in the *source* axis order
    (permute with :func:`stack_order` to index the ``(S, H, W)`` stack)."""
    scale, offset = [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]
    (h, w), (rh, rw) = volume.geometry.source_shape, volume.geometry.resized_shape
    top, _, left, _ = volume.geometry.padding
    for axis, n, r, o in zip(stack_order(volume)[1:], (h, w), (rh, rw), (top, left)):
        scale[axis] = r / n
        offset[axis] = 0.5 * r / n - 0.5 + o
    return AxisMap(tuple(scale), tuple(offset))


@dataclass(frozen=True)
class VolumeBox:
    """The box: ``spacing`` (mm per voxel) and ``shape`` (voxels) in the source axis order."""

    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "spacing", tuple(float(v) for v in self.spacing))
        object.__setattr__(self, "shape", tuple(int(v) for v in self.shape))
        if len(self.spacing) != 3 or len(self.shape) != 3:
            raise ValueError(f"a box needs three spacings and three sizes, got {self.spacing}, {self.shape}")
        if min(self.spacing) <= 0 or min(self.shape) < 4:
            raise ValueError(f"box spacing must be positive and its shape at least 4 voxels, got {self.spacing}, {self.shape}")

    @classmethod
    def fitting(cls, volumes: Sequence[SlicedVolume], spacing: Sequence[float] | None = None,
                multiple: int = 8) -> VolumeBox:
        """The box at ``spacing`` (default: each axis's median training-grid spacing over
        ``volumes``) that holds the largest of them, each side rounded up to ``multiple``."""
        spacings = np.array([stack_spacing(v) for v in volumes])
        if spacing is None:
            spacing = tuple(round(float(s), 4) for s in np.median(spacings, axis=0))
        extents = np.array([[n * s for n, s in zip(v.source_shape, v.reference.spacing)] for v in volumes]).max(0)
        shape = tuple(max(multiple, multiple * math.ceil(e / s / multiple - 1e-6)) for e, s in zip(extents, spacing))
        return cls(tuple(spacing), shape)  # type: ignore[arg-type]

    def source_map(self, volume: SlicedVolume) -> AxisMap:
        """Source voxel coordinates of ``volume`` -> box voxel coordinates."""
        return source_to_box(volume.source_shape, volume.reference.spacing, self.spacing, self.shape)

    def to_dict(self) -> dict[str, list]:
        return {"spacing": list(self.spacing), "shape": list(self.shape)}


def stack_spacing(volume: SlicedVolume) -> tuple[float, float, float]:
    """Millimetres per training-stack voxel, in the source axis order."""
    spacing = list(volume.reference.spacing)
    for axis, s in zip(stack_order(volume)[1:], volume.geometry.spacing):
        spacing[axis] = float(s)
    return tuple(spacing)  # type: ignore[return-value]


def _grid(shape: Sequence[int]) -> np.ndarray:
    axes = [np.arange(int(n), dtype=np.float64) for n in shape]
    return np.stack(np.meshgrid(*axes, indexing="ij"))


def inside_grid(coords: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Where ``(D, *S)`` voxel coordinates fall within a grid of ``shape`` (half a voxel of slack)."""
    ok = np.ones(coords.shape[1:], bool)
    for d, n in enumerate(shape):
        ok &= (coords[d] >= -0.5) & (coords[d] <= n - 0.5)
    return ok


def box_in_stack(box: VolumeBox, volume: SlicedVolume) -> tuple[np.ndarray, np.ndarray]:
    """Where each box voxel lies in ``volume``'s training stack.

    Returns:
        ``(coords, inside)``: ``(3, *box.shape)`` float32 stack coordinates in the stack's own
        axis order (``(S, H, W)``), and where they fall within the volume's extent.
    """
    to_stack = box.source_map(volume).inverse().then(source_to_stack(volume))
    coords = to_stack.apply(_grid(box.shape))[stack_order(volume)]
    return coords, inside_grid(coords, volume.images.shape)


def stack_in_box(box: VolumeBox, volume: SlicedVolume) -> np.ndarray:
    """Box coordinates ``(3, S, H, W)`` (box axis order) of every voxel of ``volume``'s training stack."""
    order = stack_order(volume)
    stack_grid = _grid(volume.images.shape)
    source_order = np.empty_like(stack_grid)
    source_order[order] = stack_grid
    to_box = source_to_stack(volume).inverse().then(box.source_map(volume))
    return to_box.apply(source_order)


def box_to_stack_coordinates(box: VolumeBox, volume: SlicedVolume, q: np.ndarray) -> np.ndarray:
    """Box coordinates ``(3, *T)`` -> ``volume``'s training-stack coordinates ``(3, *T)`` (stack order)."""
    to_stack = box.source_map(volume).inverse().then(source_to_stack(volume))
    return to_stack.apply(q)[stack_order(volume)]


def image_box(box: VolumeBox, volume: SlicedVolume) -> np.ndarray:
    """``volume``'s training slices resampled into the box (linear), 0 outside its extent; ``box.shape`` float32."""
    from jointreg.inference.register_grid import resample

    coords, inside = box_in_stack(box, volume)
    out = resample(volume.images[None, None], coords[None])[0, 0]
    return np.where(inside, out, 0.0).astype(np.float32)


def label_box(box: VolumeBox, volume: SlicedVolume, stack: np.ndarray, ignore_index: int) -> np.ndarray:
    """A label stack ``(S, H, W)`` of ``volume`` in the box (one-hot linear + argmax), ``ignore_index`` outside."""
    from jointreg.inference.register_grid import resample_labels

    coords, inside = box_in_stack(box, volume)
    out = resample_labels(np.asarray(stack)[None], coords[None])[0]
    return np.where(inside, out, ignore_index).astype(np.int64)


def probabilities_box(box: VolumeBox, volume: SlicedVolume, stack: np.ndarray) -> np.ndarray:
    """Per-class probabilities ``(S, K, H, W)`` on ``volume``'s training slices in the box
    (linear per channel): ``(K, *box.shape)`` float32, background (channel 0) = 1 outside the
    volume's extent."""
    from jointreg.inference.register_grid import resample

    coords, inside = box_in_stack(box, volume)
    channels = np.ascontiguousarray(np.moveaxis(np.asarray(stack, np.float32), 1, 0))  # (K, S, H, W)
    out = resample(channels[None], coords[None])[0]
    outside = np.zeros_like(out)
    outside[0] = 1.0
    return np.where(inside[None], out, outside).astype(np.float32)
