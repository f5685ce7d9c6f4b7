"""The invertible in-plane map between source slices and the fixed training grid."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from jointreg.data.slices.resample import resize_bilinear, resize_labels

# What PlaneGeometry resamples: intensity slices, integer label slices, per-class probabilities.
KINDS = ("image", "label", "probabilities")


def _as_pair(values: Sequence[Any], cast: type) -> tuple[Any, Any]:
    pair = tuple(cast(v) for v in values)
    if len(pair) != 2:
        raise ValueError(f"expected two values, got {values!r}")
    return pair  # type: ignore[return-value]


@dataclass(frozen=True)
class PlaneGeometry:
    """Invertible in-plane map between a source slice grid and the training grid.

    The source field of view ``(h * sh, w * sw)`` mm is scaled by one factor (mm per training
    pixel) chosen so that it fits in ``(H, W)``: ``scale = max(h*sh/H, w*sw/W)``. The resized
    slice ``resized_shape`` is centred in the training grid with ``padding`` pixels around it
    (the extra pixel of an odd padding goes after).

    Attributes:
        source_shape: ``(h, w)`` in-plane shape of the source slices (source axis order).
        source_spacing: ``(sh, sw)`` in-plane spacing of the source, millimetres.
        size: ``(H, W)`` training grid.

    Example:
        A 200 × 100 slice at 1 × 2 mm spans 200 × 200 mm: on a 128 × 128 grid it fills the
        grid at 1.5625 mm per pixel, with no padding.
    """

    source_shape: tuple[int, int]
    source_spacing: tuple[float, float]
    size: tuple[int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "source_shape", _as_pair(self.source_shape, int))
        object.__setattr__(self, "source_spacing", _as_pair(self.source_spacing, float))
        object.__setattr__(self, "size", _as_pair(self.size, int))
        if min(self.source_shape) < 1 or min(self.size) < 1:
            raise ValueError(f"empty grid: source {self.source_shape}, size {self.size}")
        if not min(self.source_spacing) > 0:
            raise ValueError(f"spacing must be positive, got {self.source_spacing}")

    # --- derived geometry --------------------------------------------------------------
    @property
    def field_of_view(self) -> tuple[float, float]:
        """Source extent ``(h * sh, w * sw)`` in millimetres."""
        return (self.source_shape[0] * self.source_spacing[0], self.source_shape[1] * self.source_spacing[1])

    @property
    def scale(self) -> float:
        """Millimetres per training pixel before rounding the resized shape."""
        fov = self.field_of_view
        return max(fov[0] / self.size[0], fov[1] / self.size[1])

    @property
    def resized_shape(self) -> tuple[int, int]:
        """``(rh, rw)``: the source field of view on the training grid, before padding."""
        fov, scale = self.field_of_view, self.scale
        return tuple(  # type: ignore[return-value]
            max(1, min(limit, int(math.floor(extent / scale + 0.5)))) for extent, limit in zip(fov, self.size)
        )

    @property
    def padding(self) -> tuple[int, int, int, int]:
        """``(top, bottom, left, right)`` padding in training pixels."""
        rh, rw = self.resized_shape
        top, left = (self.size[0] - rh) // 2, (self.size[1] - rw) // 2
        return (top, self.size[0] - rh - top, left, self.size[1] - rw - left)

    @property
    def spacing(self) -> tuple[float, float]:
        """Millimetres per training pixel ``(H, W)``: square up to the rounding of ``resized_shape``."""
        fov, resized = self.field_of_view, self.resized_shape
        return (fov[0] / resized[0], fov[1] / resized[1])

    # --- mapping -----------------------------------------------------------------------
    def to_training(self, stack: np.ndarray, kind: str, *, pad_value: float = 0.0) -> np.ndarray:
        """Resample source slices onto the training grid.

        Args:
            stack: ``(S, h, w)`` for ``"image"`` and ``"label"``; ``(S, C, h, w)`` for
                ``"probabilities"``.
            kind: ``"image"`` (bilinear, antialiased when shrinking), ``"label"`` (one-hot
                bilinear + argmax; integer ids kept, ``ignore`` is a class like any other) or
                ``"probabilities"`` (bilinear per channel).
            pad_value: fill for images and labels outside the field of view; probabilities
                are padded with channel 0 (background) = 1 and the others 0.

        Returns:
            ``(S, H, W)`` (float32 images, integer labels) or ``(S, C, H, W)`` float32.
        """
        self._check(stack, kind, self.source_shape, "source")
        rh, rw = self.resized_shape
        top, bottom, left, right = self.padding
        if kind == "label":
            resized = resize_labels(np.asarray(stack), (rh, rw))
            out = np.full((stack.shape[0], *self.size), pad_value, dtype=resized.dtype)
            out[:, top : top + rh, left : left + rw] = resized
            return out
        if kind == "image":
            resized = resize_bilinear(np.asarray(stack)[:, None], (rh, rw), antialias=True)[:, 0]
            out = np.full((stack.shape[0], *self.size), pad_value, dtype=np.float32)
            out[:, top : top + rh, left : left + rw] = resized
            return out
        resized = resize_bilinear(np.asarray(stack), (rh, rw), antialias=False)
        out = np.zeros((stack.shape[0], stack.shape[1], *self.size), dtype=np.float32)
        out[:, 0] = 1.0
        out[:, :, top : top + rh, left : left + rw] = resized
        return out

    def to_source(self, stack: np.ndarray, kind: str) -> np.ndarray:
        """Inverse of :meth:`to_training`: crop the padding, resample back to ``(h, w)``.

        Args:
            stack: ``(S, H, W)`` (``"image"``, ``"label"``) or ``(S, C, H, W)``
                (``"probabilities"``) on the training grid.
            kind: as in :meth:`to_training`.

        Returns:
            ``(S, h, w)`` or ``(S, C, h, w)`` on the source grid.
        """
        self._check(stack, kind, self.size, "training")
        rh, rw = self.resized_shape
        top, _, left, _ = self.padding
        crop = np.asarray(stack)[..., top : top + rh, left : left + rw]
        if kind == "label":
            return resize_labels(crop, self.source_shape)
        if kind == "image":
            return resize_bilinear(crop[:, None], self.source_shape, antialias=True)[:, 0]
        return resize_bilinear(crop, self.source_shape, antialias=False)

    @staticmethod
    def _check(stack: np.ndarray, kind: str, shape: tuple[int, int], grid: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; valid: {', '.join(KINDS)}")
        ndim = 4 if kind == "probabilities" else 3
        if stack.ndim != ndim or tuple(stack.shape[-2:]) != tuple(shape):
            expected = "(S, C, " if ndim == 4 else "(S, "
            raise ValueError(f"{kind} stack of shape {stack.shape} does not match the {grid} grid {expected}{shape[0]}, {shape[1]})")

    # --- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"source_shape": list(self.source_shape), "source_spacing": list(self.source_spacing), "size": list(self.size)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlaneGeometry:
        return cls(tuple(data["source_shape"]), tuple(data["source_spacing"]), tuple(data["size"]))
