"""Input normalisation shared by the segmentation metrics (numpy in, numpy out)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def as_numpy(array: Any) -> np.ndarray:
    """A numpy view of ``array``; torch tensors are detached and moved to the CPU first.

    torch is never imported here: tensors are recognised by their ``detach`` method, so metric
    code stays usable (and cheap to import) without it.
    """
    if hasattr(array, "detach") and hasattr(array, "cpu"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def as_spacing(spacing: float | Sequence[float] | np.ndarray | None, ndim: int) -> tuple[float, ...]:
    """Per-axis spacing in millimetres for an ``ndim``-dimensional grid.

    Args:
        spacing: one number (isotropic), one number per axis, or ``None`` (1 mm).
        ndim: number of spatial axes.

    Raises:
        ValueError: wrong length, or a non-positive / non-finite entry.
    """
    if spacing is None:
        values = (1.0,) * ndim
    else:
        flat = np.atleast_1d(as_numpy(spacing)).astype(np.float64).ravel()
        if flat.size == 1:
            flat = np.repeat(flat, ndim)
        if flat.size != ndim:
            raise ValueError(f"spacing {tuple(flat.tolist())} has {flat.size} entries for {ndim} spatial axes")
        values = tuple(float(v) for v in flat)
    if not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing must be positive and finite, got {values}")
    return values
