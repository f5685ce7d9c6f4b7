"""Tensor batches from sliced volumes: registration pairs, real labelled slices, propagation.

Label tensors are ``(B, 1, H, W)`` int64 class ids where ``ignore_index`` marks unknown pixels.
Datasets have classes ``0..K-1`` and ``ignore = K`` (nnU-Net's convention), so a one-hot over
``K + 1`` channels carries "unknown" through warping as its own channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from jointreg.data.pairs import SlicePair
from jointreg.data.slices import SlicedVolume


@dataclass
class RegistrationBatch:
    """A batch of registration pairs.

    Attributes:
        moving, fixed: ``(B, 1, H, W)`` float32 images in [0, 1].
        moving_label, fixed_label: ``(B, 1, H, W)`` int64, ``ignore_index`` where unknown.
        distance: ``(B,)`` float32 slice distance of each pair.
        pairs: the pairs, for logging.
    """

    moving: torch.Tensor
    fixed: torch.Tensor
    moving_label: torch.Tensor
    fixed_label: torch.Tensor
    distance: torch.Tensor
    pairs: list[SlicePair]

    def __len__(self) -> int:
        return len(self.pairs)


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array as a tensor on ``device``; for CUDA through pinned (page-locked) memory
    with a non-blocking copy, so the transfer overlaps the GPU's work on the previous step."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _label(volume: SlicedVolume, index: int, ignore_index: int, shape: tuple[int, int]) -> np.ndarray:
    if volume.labels is None:
        return np.full(shape, ignore_index, np.int64)
    return volume.labels[index].astype(np.int64)


def registration_batch(
    volumes: Sequence[SlicedVolume], pairs: Sequence[SlicePair], *, ignore_index: int, device: torch.device
) -> RegistrationBatch:
    """Stack the images and labels of ``pairs`` into tensors on ``device``."""
    shape = volumes[0].images.shape[1:]
    moving = np.stack([volumes[p.moving[0]].images[p.moving[1]] for p in pairs])
    fixed = np.stack([volumes[p.fixed[0]].images[p.fixed[1]] for p in pairs])
    moving_label = np.stack([_label(volumes[p.moving[0]], p.moving[1], ignore_index, shape) for p in pairs])
    fixed_label = np.stack([_label(volumes[p.fixed[0]], p.fixed[1], ignore_index, shape) for p in pairs])
    as_tensor = lambda a: to_device(a[:, None], device)  # noqa: E731
    return RegistrationBatch(
        moving=as_tensor(moving.astype(np.float32)),
        fixed=as_tensor(fixed.astype(np.float32)),
        moving_label=as_tensor(moving_label),
        fixed_label=as_tensor(fixed_label),
        distance=torch.tensor([float(p.distance) for p in pairs], device=device),
        pairs=list(pairs),
    )


def labelled_batch(
    volumes: Sequence[SlicedVolume],
    slots: Sequence[tuple[int, int]],
    *,
    augment=None,
    seeds: Sequence[int] | None = None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(B, 1, H, W)`` and labels ``(B, 1, H, W)`` of labelled slices, augmented.

    Args:
        slots: ``(volume, slice)`` indices.
        augment: a callable ``(image, label, seed) -> (image, label)`` or ``None``.
        seeds: one seed per slot for the augmentation.
    """
    images, labels = [], []
    for i, (v, s) in enumerate(slots):
        image = volumes[v].images[s]
        label = volumes[v].labels[s].astype(np.int64)
        if augment is not None:
            image, label = augment(image, label, seeds[i] if seeds is not None else i)
        images.append(image)
        labels.append(label)
    image_tensor = to_device(np.stack(images).astype(np.float32)[:, None], device)
    label_tensor = to_device(np.stack(labels).astype(np.int64)[:, None], device)
    return image_tensor, label_tensor
