"""Pad inputs to a multiple of the network's total stride and crop outputs back."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Zero-pad the spatial dims of ``x`` (B, C, *S) at the end up to a multiple of ``multiple``.

    Returns:
        The padded tensor and the original spatial size (for :func:`crop_to`).
    """
    size = tuple(x.shape[2:])
    pads: list[int] = []
    for s in reversed(size):
        pads += [0, (-s) % multiple]
    if any(pads):
        x = F.pad(x, pads)
    return x, size


def crop_to(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Crop the spatial dims of ``x`` back to ``size`` (undoes :func:`pad_to_multiple`)."""
    index = (slice(None), slice(None), *(slice(0, s) for s in size))
    return x[index]
