"""Per-case, per-class segmentation metrics on integer label maps: Dice, HD, HD95, ASSD (mm).

The pure entry point is :func:`evaluate_case` (one prediction and its ground truth, in memory);
:func:`evaluate_arrays` runs it over many cases. Each result is a :class:`ClassMetrics` row, the
unit that reports (:mod:`jointreg.metrics.report`) summarise and write.

Example:
    >>> gt = np.zeros((32, 32), np.int16); gt[8:20, 8:20] = 1
    >>> pred = np.roll(gt, 3, axis=0)
    >>> row, = evaluate_case(pred, gt, {"organ": 1}, spacing=(2.0, 1.0))
    >>> row.dice, row.hd
    (0.75, 6.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from jointreg.metrics._arrays import as_numpy, as_spacing
from jointreg.metrics.overlap import overlap_counts
from jointreg.metrics.surface import HD95_PERCENTILE, SurfaceMetrics, surface_metrics

METRICS = ("dice", "hd", "hd95", "assd")
"""Metric names, in report order."""

METRIC_UNITS = {"dice": "", "hd": "mm", "hd95": "mm", "assd": "mm"}
METRIC_TITLES = {"dice": "Dice", "hd": "HD (mm)", "hd95": "HD95 (mm)", "assd": "ASSD (mm)"}
HIGHER_IS_BETTER = {"dice": True, "hd": False, "hd95": False, "assd": False}

STATUS_OK = "ok"
STATUS_MISSING = "missing"
"""Row status: ``ok`` (evaluated) or ``missing`` (no prediction for the case; metrics NaN)."""


@dataclass(frozen=True)
class ClassMetrics:
    """Metrics of one class in one case.

    Attributes:
        case: case id.
        class_name: class name (from the label map).
        class_id: integer label of the class.
        dice: Dice over known voxels; 1 when both masks are empty, 0 when exactly one is.
        hd: Hausdorff distance in mm; 0 when both empty, NaN when ``missed``.
        hd95: max of the two directional 95th percentiles in mm; same rules as ``hd``.
        assd: average symmetric surface distance in mm; same rules as ``hd``.
        missed: exactly one of prediction and ground truth is empty (a missed or a spurious
            structure); the distances are NaN and summaries count the case as missed.
        status: ``ok``, or ``missing`` when there was no prediction (all metrics NaN).
        gt_voxels: ground-truth voxels of the class (known voxels only).
        pred_voxels: predicted voxels of the class (known voxels only).
    """

    case: str
    class_name: str
    class_id: int
    dice: float
    hd: float
    hd95: float
    assd: float
    missed: bool = False
    status: str = STATUS_OK
    gt_voxels: int = 0
    pred_voxels: int = 0

    def value(self, metric: str) -> float:
        """The value of ``metric`` (one of :data:`METRICS`)."""
        if metric not in METRICS:
            raise KeyError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
        return float(getattr(self, metric))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def missing(cls, case: str, class_name: str, class_id: int) -> ClassMetrics:
        """The row for a case without a prediction."""
        nan = math.nan
        return cls(case, class_name, int(class_id), nan, nan, nan, nan, False, STATUS_MISSING, 0, 0)


def _squeeze_singleton_axes(
    arrays: Sequence[np.ndarray], spacing: tuple[float, ...], frame_axis: int | None = None
) -> tuple[list[np.ndarray], tuple[float, ...], int | None]:
    # A one-voxel-thick axis carries no surface: without this, a (X, Y, 1) volume would make
    # every voxel a boundary voxel (the image ends above and below it). Returns the frame axis
    # renumbered (None once it is squeezed away: a single frame is a plain 2D image).
    keep = [axis for axis, size in enumerate(arrays[0].shape) if size > 1]
    if len(keep) == arrays[0].ndim or not keep:
        return list(arrays), spacing, frame_axis
    shape = tuple(arrays[0].shape[a] for a in keep)
    frame = keep.index(frame_axis) if frame_axis in keep else None
    return [a.reshape(shape) for a in arrays], tuple(spacing[a] for a in keep), frame


def _label_items(labels: Mapping[str, int] | Sequence[int]) -> list[tuple[str, int]]:
    if isinstance(labels, Mapping):
        return [(str(name), int(value)) for name, value in labels.items()]
    return [(f"label_{int(value)}", int(value)) for value in labels]


def evaluate_case(
    pred: Any,
    gt: Any,
    labels: Mapping[str, int] | Sequence[int],
    spacing: float | Sequence[float] | None,
    ignore_label: int | None = None,
    *,
    case: str = "",
    percentile: float = HD95_PERCENTILE,
    frame_axis: int | None = None,
) -> list[ClassMetrics]:
    """Dice, HD, HD95 and ASSD of every class in ``labels`` for one case.

    Args:
        pred: predicted label map ``(*spatial)`` (2D or 3D, integer ids; numpy or torch).
        gt: ground-truth label map, same shape; voxels equal to ``ignore_label`` are unknown.
        labels: classes to evaluate, ``{name: id}`` (or a list of ids, named ``label_<id>``);
            usually the foreground classes of a dataset.
        spacing: voxel size per spatial axis in mm (the volume's spacing for 3D, the in-plane
            spacing for 2D slices); one number = isotropic; ``None`` = 1 mm.
        ignore_label: ground-truth id of unknown voxels (nnU-Net's ``ignore``), or ``None``.
            Unknown voxels are removed from both maps and create no boundary (see
            :mod:`jointreg.metrics.surface`).
        case: case id written into the rows.
        percentile: the percentile of the "HD95" column (95 by default).
        frame_axis: the time axis of a 2D+t case (an echo loop): HD, HD95 and ASSD are then
            measured within each frame (:func:`~jointreg.metrics.surface.surface_metrics`);
            Dice pools all frames.

    Returns:
        One :class:`ClassMetrics` per class, in the order of ``labels``.

    Raises:
        ValueError: shapes differ, or ``spacing`` does not match the number of axes.
    """
    pred_arr = as_numpy(pred)
    gt_arr = as_numpy(gt)
    if pred_arr.shape != gt_arr.shape:
        raise ValueError(f"case {case!r}: prediction shape {pred_arr.shape} differs from ground truth {gt_arr.shape}")
    if gt_arr.ndim not in (2, 3):
        raise ValueError(f"case {case!r}: expected 2D or 3D label maps, got shape {gt_arr.shape}")
    spacing_mm = as_spacing(spacing, gt_arr.ndim)
    (pred_arr, gt_arr), spacing_mm, frame_axis = _squeeze_singleton_axes([pred_arr, gt_arr], spacing_mm, frame_axis)
    if gt_arr.ndim < 3:
        frame_axis = None
    known = None if ignore_label is None else gt_arr != ignore_label
    if known is not None and known.all():
        known = None
    rows = []
    for name, class_id in _label_items(labels):
        pred_mask = pred_arr == class_id
        gt_mask = gt_arr == class_id
        counts = overlap_counts(pred_mask, gt_mask, known)
        if counts.pred == 0 and counts.gt == 0:
            surface = SurfaceMetrics.both_empty()
        elif counts.pred == 0 or counts.gt == 0:
            surface = SurfaceMetrics.one_empty()
        else:
            surface = surface_metrics(pred_mask, gt_mask, spacing_mm, known, percentile=percentile, frame_axis=frame_axis)
        rows.append(
            ClassMetrics(
                case=case, class_name=name, class_id=class_id, dice=counts.dice,
                hd=surface.hd, hd95=surface.hd95, assd=surface.assd, missed=surface.missed,
                status=STATUS_OK, gt_voxels=counts.gt, pred_voxels=counts.pred,
            )
        )
    return rows


def evaluate_arrays(
    cases: Iterable[tuple[str, Any, Any, float | Sequence[float] | None]],
    labels: Mapping[str, int] | Sequence[int],
    *,
    ignore_label: int | None = None,
    progress: bool = False,
) -> list[ClassMetrics]:
    """Evaluate many in-memory predictions; rows for all cases, case by case.

    Args:
        cases: ``(case_id, pred, gt, spacing)`` tuples, arrays as in :func:`evaluate_case`;
            a fifth element is the case's ``frame_axis`` (2D+t cases).
        labels: classes to evaluate, ``{name: id}``.
        ignore_label: ground-truth id of unknown voxels, or ``None``.
        progress: show a progress bar (tqdm; silent when not a terminal).

    Example:
        >>> rows = evaluate_arrays([("c1", pred, gt, (1.25, 1.25, 7.7))], {"liver": 1})  # doctest: +SKIP
        >>> write_report(rows, "runs/x/eval")                                         # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    rows: list[ClassMetrics] = []
    for case, pred, gt, spacing, *frame in tqdm(cases, desc="evaluate", unit="case", disable=not progress or None):
        rows.extend(evaluate_case(pred, gt, labels, spacing, ignore_label, case=str(case),
                                  frame_axis=frame[0] if frame else None))
    return rows
