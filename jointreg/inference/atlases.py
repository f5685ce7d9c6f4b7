"""Registering annotated volumes (atlases) onto other volumes in the 3D box, for 3D mode.

:class:`BoxedVolumes` holds volumes in the box (:mod:`jointreg.inference.volume_box`);
:func:`register_onto_stack` registers one atlas onto a volume and brings the atlas's one-hot
labels and image onto that volume's training slices; :func:`fused_probabilities` / :func:`fuse`
average several atlases, each where it reaches. Used by 3D-mode training
(:mod:`jointreg.training.volume_mode`) and by ``jointreg pseudolabel`` with a 3D-mode run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from jointreg.data.batches import RegistrationBatch, to_device
from jointreg.data.pairs import labelled_slices
from jointreg.data.slices import SlicedVolume
from jointreg.inference.volume_box import (
    VolumeBox, box_to_stack_coordinates, image_box, inside_grid, label_box, stack_in_box,
)


def atlas_indices(volumes: Sequence[SlicedVolume]) -> list[int]:
    """Training volumes annotated on every slice."""
    return [i for i, v in enumerate(volumes) if v.labels is not None and len(labelled_slices(v)) == v.num_slices]


class BoxedVolumes:
    """The training volumes in the box: images ``(N, 1, *box)`` and labels ``(N, 1, *box)``
    (``ignore_index`` where unknown), built once."""

    def __init__(self, volumes: Sequence[SlicedVolume], box: VolumeBox, *, ignore_index: int):
        self.volumes, self.box, self.ignore_index = list(volumes), box, ignore_index
        self.images = np.stack([image_box(box, v) for v in volumes])[:, None]
        self.labels = np.stack([
            label_box(box, v, v.labels, ignore_index) if v.labels is not None
            else np.full(box.shape, ignore_index, np.int64) for v in volumes
        ])[:, None]

    def batch(self, pairs: Sequence, device: torch.device) -> RegistrationBatch:
        """Tensors of pairs with ``moving`` and ``fixed`` volume indices (:class:`~jointreg.training.volume_mode.VolumePair`)."""
        m = [p.moving for p in pairs]
        f = [p.fixed for p in pairs]
        return RegistrationBatch(
            moving=to_device(self.images[m], device), fixed=to_device(self.images[f], device),
            moving_label=to_device(self.labels[m], device), fixed_label=to_device(self.labels[f], device),
            distance=torch.zeros(len(pairs), device=device), pairs=list(pairs),
        )


@dataclass
class Propagated:
    """An atlas's registration onto a volume, on that volume's training slices.

    Attributes:
        probabilities: ``(K, S, H, W)`` the atlas's warped one-hot labels.
        known: ``(S, H, W)`` where the atlas reached (inside its extent and the box).
        warped: ``(S, H, W)`` the atlas's image warped onto the slices.
    """

    probabilities: np.ndarray
    known: np.ndarray
    warped: np.ndarray


@torch.no_grad()
def register_onto_stack(net: torch.nn.Module | None, boxed: BoxedVolumes, atlas: int, target: SlicedVolume,
                        target_image: np.ndarray, *, num_classes: int, device: torch.device) -> Propagated:
    """Register atlas ``atlas`` (an index into ``boxed``) onto ``target`` (its box image
    ``target_image``, ``box.shape``) and bring the atlas's labels and image onto the target's
    training slices. ``net=None``: the identity (the atlas copied through the box)."""
    from jointreg.inference.register_grid import resample
    from jointreg.spatial.labels import one_hot

    box, source = boxed.box, boxed.volumes[atlas]
    if net is None:
        flow = np.zeros((1, 3, *box.shape), np.float32)
    else:
        was = net.training
        net.eval()
        moving = to_device(boxed.images[atlas:atlas + 1], device)
        fixed = to_device(np.asarray(target_image, np.float32)[None, None], device)
        flow = net(moving, fixed).flow.float().cpu().numpy()
        net.train(was)
    q = stack_in_box(box, target)
    u = resample(flow, q[None])[0]
    coords = box_to_stack_coordinates(box, source, q + u)
    labels = torch.from_numpy(source.labels.astype(np.int64))[None, None]
    onehot = one_hot(labels, num_classes, ignore_index=boxed.ignore_index)[0].numpy()  # (K + 1, S_a, H, W)
    sampled = resample(onehot[None], coords[None])[0]
    warped = resample(source.images[None, None], coords[None])[0, 0]
    known = inside_grid(q, box.shape) & inside_grid(coords, source.images.shape) & (sampled[num_classes] < 0.5)
    return Propagated(sampled[:num_classes], known, warped)


def fused_probabilities(propagated: Sequence[Propagated]) -> tuple[np.ndarray, np.ndarray]:
    """``(K, S, H, W)`` the atlases' mean probabilities (each atlas counted where it reached)
    and ``(S, H, W)`` where any atlas reached."""
    total = sum(p.probabilities * p.known[None] for p in propagated)
    count = sum(p.known.astype(np.float32) for p in propagated)
    return total / np.maximum(count, 1.0)[None], count > 0


def fuse(propagated: Sequence[Propagated], ignore_index: int) -> np.ndarray:
    """``(S, H, W)`` labels: the argmax of :func:`fused_probabilities` where any atlas reached,
    ``ignore_index`` elsewhere."""
    probabilities, known = fused_probabilities(propagated)
    return np.where(known, np.argmax(probabilities, axis=0), ignore_index).astype(np.int64)


def propagate_atlases(net: torch.nn.Module | None, boxed: BoxedVolumes, target: SlicedVolume, *, num_classes: int,
                      device: torch.device) -> list[Propagated]:
    """Every atlas of ``boxed`` registered onto ``target`` (``net=None``: the identity)."""
    image = image_box(boxed.box, target)
    return [register_onto_stack(net, boxed, a, target, image, num_classes=num_classes, device=device)
            for a in range(len(boxed.volumes))]


def source_labels(net: torch.nn.Module | None, boxed: BoxedVolumes, target: SlicedVolume, *, num_classes: int,
                  device: torch.device) -> np.ndarray:
    """The atlases' fused labels on ``target``'s own (source) grid, int16 in source axis order;
    ``num_classes`` (one past the last class) where no atlas reached."""
    from jointreg.inference.predict import channel_argmax

    probabilities, known = fused_probabilities(propagate_atlases(net, boxed, target, num_classes=num_classes,
                                                                 device=device))
    # "Unknown" as its own channel, so that it comes back where it was.
    stack = np.concatenate([probabilities * known[None], (~known)[None].astype(np.float32)])
    return channel_argmax(target.to_volume(np.ascontiguousarray(stack.transpose(1, 0, 2, 3)), "probabilities"), 0)
