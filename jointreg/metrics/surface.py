"""Boundary (surface) distances in millimetres: HD, HD95 and ASSD.

Definitions (``docs/metrics.md`` has the full text):

* The *boundary* ``∂M`` of a mask ``M`` is the set of its voxels that have a face neighbour
  (4-neighbourhood in 2D, 6 in 3D) outside ``M``, or that lie on the edge of the image. This is
  ``M XOR erode(M)`` — the definition of MONAI's ``get_mask_edges`` and of medpy.
* ``d(p, ∂G)`` is the Euclidean distance in millimetres (voxel index × spacing per axis) from a
  boundary voxel ``p`` of the prediction to the nearest boundary voxel of the ground truth;
  ``D_PG`` is the list of these over ``∂P``, ``D_GP`` the reverse direction.
* HD = max(max D_PG, max D_GP).
* HD95 = max(P95(D_PG), P95(D_GP)): the larger of the two *directional* 95th percentiles
  (linear interpolation between order statistics, as numpy and MONAI). medpy's ``hd95`` takes
  the 95th percentile of the pooled list instead, which is never larger than ours.
* ASSD = (Σ D_PG + Σ D_GP) / (|∂P| + |∂G|): the mean of the pooled distances of both directions
  (MONAI's symmetric average surface distance and medpy 0.5's ``assd``). It is not the mean of
  the two directional means, which weights a short boundary as much as a long one.

Unknown voxels (``known`` = False, e.g. the ground truth's ``ignore`` label) are handled by
(1) removing them from both masks, and (2) not letting them create a boundary: a voxel is on the
boundary only if a *known* neighbour lies outside the mask (or the image ends there). Hence a
structure annotated on one slice of a 3D volume has the in-plane contour of that slice as its
boundary, not the whole slice. If a non-empty mask has no known neighbour outside it at all
(it is wrapped in unknown voxels), both boundaries of that class fall back to the plain
``M XOR erode(M)`` of the restricted masks.

Empty masks: both empty → every distance is 0; exactly one empty → distances are undefined
(NaN) and the structure is flagged ``missed``. Never 0, never infinite.

The nearest-neighbour search is MONAI's ``get_surface_distance`` (an exact KD-tree query on
CPU); the boundaries are computed here because MONAI has no notion of unknown voxels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from jointreg.metrics._arrays import as_numpy, as_spacing

HD95_PERCENTILE = 95.0


def boundary(mask: Any, known: Any | None = None) -> np.ndarray:
    """Boundary voxels of a binary mask, with unknown voxels not creating boundaries.

    Args:
        mask: binary mask, ``(*spatial)``; voxels outside ``known`` are dropped first.
        known: optional mask of voxels whose truth is known (same shape). ``None``: all known.

    Returns:
        bool array of ``mask``'s shape, True on boundary voxels.

    Example:
        >>> m = np.zeros((5, 5), bool); m[1:4, 1:4] = True
        >>> int(boundary(m).sum())   # the 3x3 square minus its centre
        8
    """
    mask = as_numpy(mask).astype(bool, copy=False)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    if known is None:
        solid = mask
    else:
        known = as_numpy(known).astype(bool, copy=False)
        mask = mask & known
        # Unknown voxels are treated as "inside" for the erosion: they are no evidence of an edge.
        solid = mask | ~known
    interior = ndimage.binary_erosion(solid, structure=structure, border_value=0)
    return mask & ~interior


@dataclass(frozen=True)
class SurfaceDistances:
    """Boundary-to-boundary distances in millimetres, one entry per boundary voxel.

    Attributes:
        pred_to_gt: ``(|∂P|,)`` distance from each prediction boundary voxel to ``∂G``.
        gt_to_pred: ``(|∂G|,)`` distance from each ground-truth boundary voxel to ``∂P``.
    """

    pred_to_gt: np.ndarray
    gt_to_pred: np.ndarray

    def hausdorff(self, percentile: float | None = None) -> float:
        """HD (``percentile=None``) or the max of the two directional percentiles (HD95 at 95)."""
        if percentile is None:
            return float(max(self.pred_to_gt.max(), self.gt_to_pred.max()))
        if not 0.0 <= percentile <= 100.0:
            raise ValueError(f"percentile must lie in [0, 100], got {percentile}")
        return float(max(np.percentile(self.pred_to_gt, percentile), np.percentile(self.gt_to_pred, percentile)))

    @property
    def hd(self) -> float:
        return self.hausdorff(None)

    @property
    def hd95(self) -> float:
        return self.hausdorff(HD95_PERCENTILE)

    @property
    def assd(self) -> float:
        """Mean of both directions' distances pooled (weighted by boundary sizes)."""
        total = float(self.pred_to_gt.sum(dtype=np.float64) + self.gt_to_pred.sum(dtype=np.float64))
        return total / (self.pred_to_gt.size + self.gt_to_pred.size)


@dataclass(frozen=True)
class SurfaceMetrics:
    """HD, HD95 and ASSD of one structure in millimetres, with the empty-mask rule applied.

    Attributes:
        hd: Hausdorff distance (max), mm; NaN when ``missed``.
        hd95: max of the two directional 95th percentiles, mm; NaN when ``missed``.
        assd: average symmetric surface distance, mm; NaN when ``missed``.
        missed: exactly one of prediction and ground truth is empty (over known voxels).
    """

    hd: float
    hd95: float
    assd: float
    missed: bool

    @classmethod
    def both_empty(cls) -> SurfaceMetrics:
        return cls(0.0, 0.0, 0.0, False)

    @classmethod
    def one_empty(cls) -> SurfaceMetrics:
        nan = float("nan")
        return cls(nan, nan, nan, True)


def _crop_box(a: np.ndarray, b: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """Bounding box of ``a | b`` grown by ``margin`` voxels (clipped to the image)."""
    either = a | b
    box = []
    for axis in range(either.ndim):
        others = tuple(i for i in range(either.ndim) if i != axis)
        hits = np.flatnonzero(either.any(axis=others))
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + margin + 1, either.shape[axis])))
    return tuple(box)


def _nearest_distances(from_edges: np.ndarray, to_edges: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    from monai.metrics.utils import get_surface_distance

    distances = get_surface_distance(from_edges, to_edges, distance_metric="euclidean", spacing=list(spacing))
    return np.asarray(distances, dtype=np.float64)


def surface_distances(
    pred_mask: Any, gt_mask: Any, spacing: float | Sequence[float] | None = None, known: Any | None = None
) -> SurfaceDistances:
    """Distances between the boundaries of two non-empty binary masks.

    Args:
        pred_mask: predicted mask ``(*spatial)`` (2D or 3D; numpy or torch).
        gt_mask: ground-truth mask, same shape.
        spacing: voxel size per spatial axis in mm (one number = isotropic; ``None`` = 1 mm).
        known: optional mask of voxels whose truth is known; see the module docstring.

    Raises:
        ValueError: shapes differ, or a mask is empty over the known voxels (use
            :func:`surface_metrics` for the empty-mask rules).
    """
    pred = as_numpy(pred_mask).astype(bool, copy=False)
    gt = as_numpy(gt_mask).astype(bool, copy=False)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    spacing = as_spacing(spacing, gt.ndim)
    if known is not None:
        known = as_numpy(known).astype(bool, copy=False)
        if known.shape != gt.shape:
            raise ValueError(f"known-voxel mask shape {known.shape} differs from {gt.shape}")
        pred = pred & known
        gt = gt & known
    if not pred.any() or not gt.any():
        raise ValueError("surface distances need two non-empty masks")
    # The erosion only looks one voxel out, so a one-voxel margin keeps the result exact.
    box = _crop_box(pred, gt)
    pred, gt = pred[box], gt[box]
    known = None if known is None else known[box]
    edges_pred, edges_gt = boundary(pred, known), boundary(gt, known)
    if known is not None and not (edges_pred.any() and edges_gt.any()):
        edges_pred, edges_gt = boundary(pred), boundary(gt)
    return SurfaceDistances(
        pred_to_gt=_nearest_distances(edges_pred, edges_gt, spacing),
        gt_to_pred=_nearest_distances(edges_gt, edges_pred, spacing),
    )


def surface_metrics(
    pred_mask: Any,
    gt_mask: Any,
    spacing: float | Sequence[float] | None = None,
    known: Any | None = None,
    *,
    percentile: float = HD95_PERCENTILE,
    frame_axis: int | None = None,
) -> SurfaceMetrics:
    """HD, HD``percentile`` and ASSD in mm with the empty-mask rules (see module docstring).

    Args:
        frame_axis: for a 2D+t stack (e.g. an echo loop), the time axis: distances are then
            measured within each frame, in 2D with the other axes' spacing (the time axis's
            "spacing" is a frame interval, not a length), and the boundary distances of all
            frames are pooled (HD = the largest, ASSD = their mean). The empty-mask rules hold
            per frame: frames where both masks are empty are skipped, and a frame where exactly
            one is empty makes the structure *missed*.

    Example:
        >>> a = np.zeros((20, 20), bool); a[5:10, 5:10] = True
        >>> surface_metrics(np.roll(a, 3, axis=0), a, spacing=2.0).hd   # 3 voxels x 2 mm
        6.0
    """
    pred = as_numpy(pred_mask).astype(bool, copy=False)
    gt = as_numpy(gt_mask).astype(bool, copy=False)
    if known is not None:
        known = as_numpy(known).astype(bool, copy=False)
    if frame_axis is not None:
        return _framewise_metrics(pred, gt, spacing, known, percentile, frame_axis)
    pred_any, gt_any = _present(pred, gt, known)
    if not pred_any and not gt_any:
        return SurfaceMetrics.both_empty()
    if not pred_any or not gt_any:
        return SurfaceMetrics.one_empty()
    distances = surface_distances(pred, gt, spacing, known)
    return SurfaceMetrics(
        hd=distances.hd, hd95=distances.hausdorff(percentile), assd=distances.assd, missed=False
    )


def _present(pred: np.ndarray, gt: np.ndarray, known: np.ndarray | None) -> tuple[bool, bool]:
    """Whether each mask holds any (known) voxel: the input of the empty-mask rules."""
    if known is None:
        return bool(pred.any()), bool(gt.any())
    return bool((pred & known).any()), bool((gt & known).any())


def _framewise_metrics(pred: np.ndarray, gt: np.ndarray, spacing, known, percentile: float, axis: int) -> SurfaceMetrics:
    """:func:`surface_metrics` frame by frame along ``axis``, distances pooled."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    if not 0 <= axis < gt.ndim:
        raise ValueError(f"frame axis {axis} is not an axis of a {gt.ndim}D array")
    in_plane = tuple(v for a, v in enumerate(as_spacing(spacing, gt.ndim)) if a != axis)
    to_gt, to_pred = [], []
    for t in range(gt.shape[axis]):
        p, g = np.take(pred, t, axis=axis), np.take(gt, t, axis=axis)
        k = None if known is None else np.take(known, t, axis=axis)
        p_any, g_any = _present(p, g, k)
        if not p_any and not g_any:
            continue
        if not p_any or not g_any:
            return SurfaceMetrics.one_empty()
        frame = surface_distances(p, g, in_plane, k)
        to_gt.append(frame.pred_to_gt)
        to_pred.append(frame.gt_to_pred)
    if not to_gt:
        return SurfaceMetrics.both_empty()
    pooled = SurfaceDistances(np.concatenate(to_gt), np.concatenate(to_pred))
    return SurfaceMetrics(hd=pooled.hd, hd95=pooled.hausdorff(percentile), assd=pooled.assd, missed=False)


def hausdorff_distance(
    pred_mask: Any,
    gt_mask: Any,
    spacing: float | Sequence[float] | None = None,
    known: Any | None = None,
    *,
    percentile: float | None = None,
) -> float:
    """HD in mm (or the max of the directional ``percentile``-th percentiles); NaN if one is empty."""
    metrics = surface_metrics(
        pred_mask, gt_mask, spacing, known, percentile=100.0 if percentile is None else percentile
    )
    return metrics.hd if percentile is None else metrics.hd95


def average_symmetric_surface_distance(
    pred_mask: Any, gt_mask: Any, spacing: float | Sequence[float] | None = None, known: Any | None = None
) -> float:
    """ASSD in mm (pooled over both directions); 0 if both masks are empty, NaN if one is."""
    return surface_metrics(pred_mask, gt_mask, spacing, known).assd
