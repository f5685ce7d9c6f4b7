"""A 2D segmentor on stacks of training-grid slices: probabilities, labels, a whole sliced volume.

The building blocks of :mod:`jointreg.inference.segment` (files), of pseudo-labelling and of
validation: everything here works on arrays already normalised and resampled to the model's
training grid (:mod:`jointreg.data.slices`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from jointreg.data.slices import SlicedVolume
from jointreg.utils.device import module_device


@torch.no_grad()
def predict_stack(
    segmentor: torch.nn.Module, images: np.ndarray, *, batch_size: int = 16, device: torch.device | None = None
) -> np.ndarray:
    """Class probabilities for a stack of normalised slices.

    Args:
        segmentor: maps ``(B, 1, H, W)`` to logits ``(B, K, H, W)``.
        images: ``(S, H, W)`` float32 in the training grid.
        batch_size: slices per forward pass.
        device: where to run (default: the segmentor's device).

    Returns:
        ``(S, K, H, W)`` float32 softmax probabilities.
    """
    if device is None:
        device = module_device(segmentor)
    was_training = segmentor.training
    segmentor.eval()
    out = []
    for start in range(0, images.shape[0], batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size], np.float32))
        logits = segmentor(chunk.unsqueeze(1).to(device))
        out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    segmentor.train(was_training)
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def channel_argmax(probs: np.ndarray, axis: int = 0) -> np.ndarray:
    """``probs.argmax(axis)`` as int16 (ties: the lowest channel), fast for a few channels.

    numpy's and torch's argmax over a non-last axis of a large array are slow on CPUs; a running
    maximum over the channels is a few elementwise passes.
    """
    probs = np.moveaxis(np.asarray(probs), axis, 0)
    best = np.array(probs[0], dtype=np.float32, copy=True)
    index = np.zeros(best.shape, dtype=np.int16)
    for channel in range(1, probs.shape[0]):
        better = probs[channel] > best
        index[better] = channel
        np.maximum(best, probs[channel], out=best)
    return index


def segment_sliced_volume(
    segmentor: torch.nn.Module,
    volume: SlicedVolume,
    *,
    batch_size: int = 16,
    device: torch.device | None = None,
    return_probabilities: bool = False,
    largest_component: Sequence[int] = (),
) -> tuple[np.ndarray, np.ndarray | None]:
    """Segment a sliced volume and return labels in the SOURCE volume's shape and axis order.

    ``largest_component``: classes whose labels keep only their largest connected component
    (:mod:`jointreg.inference.postprocess`; the probabilities are returned as predicted).

    Returns:
        ``labels`` (source shape, uint8/int16) and, when asked, ``probabilities``
        (``(K, *source shape)`` float32).
    """
    probs = predict_stack(segmentor, volume.images, batch_size=batch_size, device=device)
    source_probs = volume.to_volume(probs, "probabilities")  # (K, X, Y, Z)
    labels = channel_argmax(source_probs, 0)
    if largest_component:
        from jointreg.inference.postprocess import keep_largest_component

        labels = keep_largest_component(labels, largest_component)
    return labels, (source_probs.astype(np.float32) if return_probabilities else None)
