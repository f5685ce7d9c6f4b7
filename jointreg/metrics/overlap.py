"""Volume overlap: the Dice similarity coefficient, with unknown voxels excluded.

Dice = 2·|P ∩ G| / (|P| + |G|), counted over the *known* voxels only (those whose ground-truth
label is not ``ignore``). Both masks empty → 1.0 (nothing to find, nothing found); exactly one
empty → 0.0. Dice does not depend on spacing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from jointreg.metrics._arrays import as_numpy


@dataclass(frozen=True)
class OverlapCounts:
    """Voxel counts of one class over the known voxels.

    Attributes:
        true_positive: voxels in both the prediction and the ground truth.
        pred: voxels in the prediction.
        gt: voxels in the ground truth.
    """

    true_positive: int
    pred: int
    gt: int

    @property
    def dice(self) -> float:
        return dice_from_counts(self.true_positive, self.pred, self.gt)


def dice_from_counts(true_positive: int, pred: int, gt: int) -> float:
    """Dice from voxel counts; ``pred == gt == 0`` gives 1.0 by the empty-mask rule."""
    total = pred + gt
    if total == 0:
        return 1.0
    return 2.0 * true_positive / total


def overlap_counts(pred_mask: Any, gt_mask: Any, known: Any | None = None) -> OverlapCounts:
    """Count the overlap of two binary masks, restricted to ``known`` voxels.

    Args:
        pred_mask: predicted mask, any shape (``*spatial``); non-zero = inside.
        gt_mask: ground-truth mask of the same shape.
        known: optional mask of voxels whose truth is known; others are not counted.
    """
    pred = as_numpy(pred_mask).astype(bool, copy=False)
    gt = as_numpy(gt_mask).astype(bool, copy=False)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    if known is not None:
        known = as_numpy(known).astype(bool, copy=False)
        if known.shape != gt.shape:
            raise ValueError(f"known-voxel mask shape {known.shape} differs from {gt.shape}")
        pred = pred & known
        gt = gt & known
    return OverlapCounts(
        true_positive=int(np.count_nonzero(pred & gt)),
        pred=int(np.count_nonzero(pred)),
        gt=int(np.count_nonzero(gt)),
    )


def dice(pred_mask: Any, gt_mask: Any, known: Any | None = None) -> float:
    """Dice coefficient of two binary masks (numpy arrays or torch tensors).

    Example:
        >>> a = np.zeros((4, 4), bool); a[:2] = True
        >>> b = np.zeros((4, 4), bool); b[:1] = True
        >>> round(dice(a, b), 4)
        0.6667
    """
    return overlap_counts(pred_mask, gt_mask, known).dice
