"""Label maps as channels: one-hot encoding with an optional ``ignore`` channel."""

from __future__ import annotations

import torch
from torch import Tensor


def one_hot(
    labels: Tensor,
    num_classes: int,
    *,
    ignore_index: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """One-hot encode an integer label map.

    Args:
        labels: ``(B, 1, *S)`` integer ids in ``0 .. num_classes - 1`` (or ``ignore_index``).
        num_classes: classes proper, background included, ignore excluded.
        ignore_index: when given, voxels with this id get their own last channel
            (index ``num_classes``) instead of raising.
        dtype: of the result.

    Returns:
        ``(B, num_classes [+ 1], *S)``; every voxel has exactly one channel set to 1.

    Raises:
        ValueError: a label outside ``0 .. num_classes - 1`` that is not ``ignore_index``.
    """
    if labels.dim() < 3 or labels.shape[1] != 1:
        raise ValueError(f"labels must be (B, 1, *S); got shape {tuple(labels.shape)}")
    if labels.is_floating_point():
        raise TypeError(f"labels must be an integer tensor; got {labels.dtype}")
    channels = num_classes + (0 if ignore_index is None else 1)
    index = labels.long()
    if ignore_index is not None:
        index = torch.where(index == ignore_index, torch.full_like(index, num_classes), index)
    if not torch.jit.is_tracing() and index.numel() and (int(index.min()) < 0 or int(index.max()) >= channels):
        bad = sorted({int(v) for v in torch.unique(labels)} - set(range(num_classes)) - {ignore_index})
        raise ValueError(
            f"label values {bad} are outside the classes 0..{num_classes - 1}"
            + ("" if ignore_index is None else f" and the ignore label {ignore_index}")
        )
    out = torch.zeros((labels.shape[0], channels, *labels.shape[2:]), dtype=dtype, device=labels.device)
    return out.scatter_(1, index, 1.0)


def known_mask(labels: Tensor, ignore_index: int | None, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(B, 1, *S)`` mask: 1 where the label is known, 0 where it is ``ignore_index``."""
    if ignore_index is None:
        return torch.ones(labels.shape, dtype=dtype, device=labels.device)
    return (labels != ignore_index).to(dtype)
