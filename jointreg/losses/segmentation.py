"""Segmentation losses with an ``ignore`` label: soft Dice, Dice, CE + Dice, and the
registration's warped-label Dice term.

Label maps are ``(B, 1, *S)`` integer ids ``0 .. C-1`` plus, optionally, ``ignore_index`` for
unknown voxels. Ignore voxels contribute nothing (neither to cross-entropy nor to any Dice sum);
a batch with only ignore voxels gives a loss of 0 with a zero (not NaN) gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from jointreg.losses.similarity import _reduce
from jointreg.spatial.labels import known_mask, one_hot


def soft_dice(
    probs: Tensor,
    target: Tensor,
    *,
    mask: Tensor | None = None,
    eps: float = 1e-5,
    include_background: bool = True,
    batch: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """Soft Dice coefficient per sample and channel.

    ``dice_c = (2 Σ m·p_c·t_c + eps) / (Σ m·(p_c + t_c) + eps)`` over the voxels of each sample
    (or of the whole batch with ``batch=True``, nnU-Net's "batch Dice"). A class absent from both
    prediction and target scores 1; ``eps`` keeps gradients finite for empty classes.

    Args:
        probs: ``(B, C, *S)`` probabilities (e.g. softmax output or warped one-hot labels).
        target: ``(B, C, *S)`` one-hot (or soft) targets.
        mask: ``(B, 1, *S)`` voxel weights, 0 for voxels to leave out.
        eps: smoothing added to numerator and denominator.
        include_background: keep channel 0 (``False`` drops it).
        batch: pool the sums over the batch before the ratio.
        reduction: ``"mean"`` (scalar), ``"sum"`` or ``"none"`` (``(B, C)``, or ``(C,)`` with
            ``batch=True``).

    Returns:
        Dice coefficient(s) in ``[0, 1]`` (higher = better).
    """
    if probs.shape != target.shape:
        raise ValueError(f"probs {tuple(probs.shape)} and target {tuple(target.shape)} must have the same shape")
    if not include_background:
        probs, target = probs[:, 1:], target[:, 1:]
    if probs.shape[1] == 0:
        raise ValueError("no channels left to score (include_background=False with a single channel)")
    target = target.to(probs.dtype)
    if mask is not None:
        m = mask.to(probs.dtype)
        probs_m, target_m = probs * m, target * m
    else:
        probs_m, target_m = probs, target
    intersection = (probs_m * target).flatten(2).sum(2)  # (B, C)
    denominator = (probs_m + target_m).flatten(2).sum(2)
    if batch:
        intersection, denominator = intersection.sum(0), denominator.sum(0)
    return _reduce((2 * intersection + eps) / (denominator + eps), reduction)


def _targets(target: Tensor, classes: int, ignore_index: int | None, dtype) -> tuple[Tensor, Tensor]:
    """One-hot targets ``(B, C, *S)`` (ignore voxels all-zero) and the known-voxel mask."""
    onehot = one_hot(target, classes, ignore_index=ignore_index, dtype=dtype)[:, :classes]
    return onehot, known_mask(target, ignore_index, dtype=dtype)


def dice_loss(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int | None = None,
    include_background: bool = False,
    weight: Tensor | None = None,
    eps: float = 1e-5,
    batch: bool = False,
) -> Tensor:
    """``1 - mean soft Dice`` of ``softmax(logits)`` against integer labels.

    Args:
        logits: ``(B, C, *S)`` raw scores.
        target: ``(B, 1, *S)`` integer ids in ``0 .. C-1`` or ``ignore_index``.
        ignore_index: label of unknown voxels (left out of every sum).
        include_background: score class 0 too.
        weight: optional ``(B, 1, *S)`` non-negative voxel weights (Dice is scale-invariant: only
            relative weights within a sample matter).
        eps: Dice smoothing.
        batch: batch Dice (see :func:`soft_dice`).

    Returns:
        Scalar loss in ``[0, 1]``.
    """
    probs = torch.softmax(logits, dim=1)
    onehot, known = _targets(target, logits.shape[1], ignore_index, probs.dtype)
    mask = known if weight is None else known * weight.to(probs.dtype)
    return 1 - soft_dice(probs, onehot, mask=mask, eps=eps, include_background=include_background, batch=batch)


def ce_dice_loss(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int | None = None,
    ce_weight: float = 1.0,
    dice_weight: float = 1.0,
    include_background: bool = False,
    weight: Tensor | None = None,
    sample_weight: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """``ce_weight · CE + dice_weight · (1 - soft Dice)``, ignore voxels excluded from both.

    ``CE = Σ_known w·ce / (number of known voxels)``: a voxel weight ``w`` (e.g. the trust in a
    propagated label) scales its cross-entropy in absolute terms; with ``w = 1`` this is the
    usual mean over the known voxels. With no known voxel the loss is 0.

    A per-sample weight ``s_b`` scales both terms of sample ``b``: the CE voxels of the sample
    are weighted by ``s_b`` and the Dice term is ``Σ_b s_b (1 - Dice_b) / B``. (A voxel weight
    cannot do this for Dice, which is a ratio: a constant weight per sample cancels.)

    Args:
        logits: ``(B, C, *S)`` raw scores.
        target: ``(B, 1, *S)`` integer ids in ``0 .. C-1`` or ``ignore_index``.
        ignore_index: label of unknown voxels.
        ce_weight, dice_weight: weights of the two terms.
        include_background: score class 0 in the Dice term.
        weight: optional ``(B, 1, *S)`` non-negative voxel weights.
        sample_weight: optional ``(B,)`` non-negative per-sample weights.
        eps: Dice smoothing.

    Returns:
        Scalar loss.
    """
    classes = logits.shape[1]
    onehot, known = _targets(target, classes, ignore_index, logits.dtype)
    mask = known if weight is None else known * weight.to(logits.dtype)
    per_sample = None
    if sample_weight is not None:
        per_sample = sample_weight.to(logits.dtype).reshape(-1)
        if per_sample.shape[0] != logits.shape[0]:
            raise ValueError(f"sample_weight has {per_sample.shape[0]} values for a batch of {logits.shape[0]}")
    total = logits.new_zeros(())
    if ce_weight:
        log_probs = torch.log_softmax(logits, dim=1)
        ce_map = -(log_probs * onehot).sum(1, keepdim=True)  # 0 at ignore voxels (all-zero one-hot)
        ce_mask = mask if per_sample is None else mask * per_sample.view(-1, *([1] * (mask.dim() - 1)))
        ce = (ce_map * ce_mask).sum() / known.sum().clamp_min(1.0)
        total = total + ce_weight * ce
    if dice_weight:
        probs = torch.softmax(logits, dim=1)
        if per_sample is None:
            dice = soft_dice(probs, onehot, mask=mask, eps=eps, include_background=include_background)
            total = total + dice_weight * (1 - dice)
        else:
            dice = soft_dice(probs, onehot, mask=mask, eps=eps, include_background=include_background, reduction="none")
            total = total + dice_weight * (per_sample * (1 - dice.mean(1))).mean()
    return total


def warped_label_dice_loss(
    warped_probs: Tensor,
    target: Tensor,
    *,
    ignore_index: int | None = None,
    mask: Tensor | None = None,
    include_background: bool = False,
    eps: float = 1e-5,
) -> Tensor:
    """Registration's label term: ``1 - soft Dice(warped moving label, target label)``.

    Args:
        warped_probs: ``(B, C, *S)`` the moving label's one-hot map warped by the field
            (:func:`jointreg.spatial.warp_onehot`); differentiable with respect to the field.
        target: ``(B, 1, *S)`` integer labels of the fixed image (``ignore_index`` = unknown),
            or ``(B, C, *S)`` probabilities (e.g. a segmentor's softmax on the fixed image).
        ignore_index: unknown label id in an integer ``target``.
        mask: optional ``(B, 1, *S)`` extra voxel weights, e.g. 0 where the warped MOVING label
            was unknown (its warped ignore channel > 0.5).
        include_background: score class 0 too.
        eps: Dice smoothing.

    Returns:
        Scalar loss in ``[0, 1]``.
    """
    classes = warped_probs.shape[1]
    if target.is_floating_point():
        onehot, known = target, None
    else:
        onehot, known = _targets(target, classes, ignore_index, warped_probs.dtype)
    if known is not None and mask is not None:
        weights = known * mask.to(warped_probs.dtype)
    else:
        weights = known if known is not None else mask
    return 1 - soft_dice(warped_probs, onehot, mask=weights, eps=eps, include_background=include_background)


class DiceLoss(nn.Module):
    """:func:`dice_loss` as a module: ``forward(logits, target, weight=None)``."""

    def __init__(self, ignore_index: int | None = None, include_background: bool = False, eps: float = 1e-5,
                 batch: bool = False):
        super().__init__()
        self.ignore_index, self.include_background, self.eps, self.batch = ignore_index, include_background, eps, batch

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return dice_loss(logits, target, ignore_index=self.ignore_index, include_background=self.include_background,
                         weight=weight, eps=self.eps, batch=self.batch)


class CEDiceLoss(nn.Module):
    """:func:`ce_dice_loss` as a module: ``forward(logits, target, weight=None)``."""

    def __init__(self, ignore_index: int | None = None, ce_weight: float = 1.0, dice_weight: float = 1.0,
                 include_background: bool = False, eps: float = 1e-5):
        super().__init__()
        self.ignore_index, self.ce_weight, self.dice_weight = ignore_index, ce_weight, dice_weight
        self.include_background, self.eps = include_background, eps

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        return ce_dice_loss(logits, target, ignore_index=self.ignore_index, ce_weight=self.ce_weight,
                            dice_weight=self.dice_weight, include_background=self.include_background,
                            weight=weight, eps=self.eps)

