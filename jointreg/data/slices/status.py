"""The slicing axis of a volume, and what is known about the labels of each slice."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import numpy as np

# Relative tolerance when comparing spacings: affine column norms of an "isotropic" volume
# differ in the last bits, and such noise must not pick the axis.
_SPACING_RTOL = 1e-3


def through_plane_axis(spacing: Sequence[float]) -> int:
    """The axis with the largest spacing (ties, within 0.1 %, go to the last such axis).

    Args:
        spacing: voxel size per array axis in millimetres, e.g. ``(1.25, 1.25, 7.7)``.

    Returns:
        The axis index; an isotropic volume gives the last axis (2 for 3D).
    """
    values = [float(s) for s in spacing]
    if not values:
        raise ValueError("spacing is empty")
    top = max(values)
    return max(i for i, s in enumerate(values) if s >= top * (1.0 - _SPACING_RTOL))


class SliceStatus(str, Enum):
    """What is known about a slice's labels."""

    ANNOTATED = "annotated"  # some known voxel is foreground (partly annotated counts)
    EMPTY = "empty-annotated"  # annotated, and everything annotated is background
    UNANNOTATED = "unannotated"  # no label, or every voxel is ``ignore``


def slice_status(label2d: np.ndarray | None, ignore_label: int | None) -> SliceStatus:
    """Classify one label slice.

    Args:
        label2d: integer label slice ``(h, w)``, or ``None`` when the case has no label.
        ignore_label: the ``ignore`` id, or ``None`` when the dataset has none.
    """
    if label2d is None or label2d.size == 0:
        return SliceStatus.UNANNOTATED
    known = label2d != ignore_label if ignore_label is not None else np.ones(label2d.shape, bool)
    if not known.any():
        return SliceStatus.UNANNOTATED
    return SliceStatus.ANNOTATED if (label2d[known] > 0).any() else SliceStatus.EMPTY


def stack_status(stack: np.ndarray | None, ignore_label: int | None, num_slices: int | None = None) -> tuple[SliceStatus, ...]:
    """:func:`slice_status` of every slice of a stack ``(S, h, w)`` (vectorised).

    Args:
        stack: label slices ``(S, h, w)``; ``None`` gives ``num_slices`` unannotated slices.
        ignore_label: the ``ignore`` id or ``None``.
        num_slices: the number of slices when ``stack`` is ``None``.
    """
    if stack is None:
        return (SliceStatus.UNANNOTATED,) * int(num_slices or 0)
    flat = stack.reshape(stack.shape[0], -1)
    known = flat != ignore_label if ignore_label is not None else np.ones(flat.shape, bool)
    any_known = known.any(axis=1)
    any_fg = (known & (flat > 0)).any(axis=1)
    return tuple(
        SliceStatus.UNANNOTATED if not k else SliceStatus.ANNOTATED if f else SliceStatus.EMPTY
        for k, f in zip(any_known, any_fg)
    )
