"""3D mode: a few fully annotated volumes, a 3D registration network, a slice segmentor.

The DeepAtlas setting (``jointreg sparsify --volumes N``): some training volumes are annotated
on every slice (the *atlases*), the others not at all (the *targets*). With ``volumes.enabled``
the run's loop (:mod:`jointreg.training.loop`) stays the same, alternating registration and
segmentation phases, but

* the registration network is 3D and registers whole volumes in a common box
  (:mod:`jointreg.data.volume_box`): pairs of an atlas (moving) and any other training volume
  (fixed; :class:`VolumePairs`), with the label term wherever the fixed volume is an atlas too;
* the segmentor (2D, on the training slices as in slice mode) learns from the atlases' slices
  (the real group) and from every slice of the targets, labelled by registering each atlas onto
  the target and fusing the atlases' warped one-hot labels (mean probability, then argmax;
  :class:`VolumeGroups`). The labels are rebuilt whenever the registration has changed; the
  warped group is the atlases' images and labels warped onto the targets' slices.

``register`` and the run's exported registration read volumes the same way (the box goes into
the model folder's ``preprocessing``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from jointreg.data.batches import RegistrationBatch, to_device
from jointreg.data.pairs import labelled_slices
from jointreg.data.slices import SlicedVolume
from jointreg.data.volume_box import VolumeBox, box_to_stack_coordinates, image_box, label_box, stack_in_box
from jointreg.training.propagation import PropagatedBatch


def atlas_indices(volumes: Sequence[SlicedVolume]) -> list[int]:
    """Training volumes annotated on every slice."""
    return [i for i, v in enumerate(volumes) if v.labels is not None and len(labelled_slices(v)) == v.num_slices]


def training_box(recipe, volumes: Sequence[SlicedVolume]) -> VolumeBox:
    """The recipe's box (``volumes.spacing``/``volumes.shape``; each default fitted to ``volumes``)."""
    cfg = recipe.volumes
    fitted = VolumeBox.fitting(volumes, cfg.spacing)
    return VolumeBox(fitted.spacing, cfg.shape if cfg.shape is not None else fitted.shape)


@dataclass(frozen=True)
class VolumePair:
    """Indices of a moving and a fixed training volume."""

    moving: int
    fixed: int
    distance: int = 0


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

    def batch(self, pairs: Sequence[VolumePair], device: torch.device) -> RegistrationBatch:
        m = [p.moving for p in pairs]
        f = [p.fixed for p in pairs]
        return RegistrationBatch(
            moving=to_device(self.images[m], device), fixed=to_device(self.images[f], device),
            moving_label=to_device(self.labels[m], device), fixed_label=to_device(self.labels[f], device),
            distance=torch.zeros(len(pairs), device=device), pairs=list(pairs),
        )


class VolumePairs:
    """Draw registration pairs of whole training volumes.

    The moving volume is an atlas (any volume with probability ``unannotated_moving``); the fixed
    one another atlas with probability ``annotated_fixed`` (when there are two), else any other
    volume.

    Raises:
        ValueError: fewer than two training volumes, or no atlas.
    """

    def __init__(self, volumes: Sequence[SlicedVolume], *, unannotated_moving: float = 0.0,
                 annotated_fixed: float = 0.0):
        self.count = len(volumes)
        self.atlases = atlas_indices(volumes)
        if self.count < 2:
            raise ValueError("3D mode needs at least two training volumes")
        if not self.atlases:
            raise ValueError("3D mode needs at least one training volume annotated on every slice "
                             "(jointreg sparsify --volumes N)")
        self.unannotated_moving, self.annotated_fixed = unannotated_moving, annotated_fixed

    def sample(self, n: int, rng: np.random.Generator) -> list[VolumePair]:
        pairs = []
        for _ in range(n):
            if rng.random() < self.unannotated_moving:
                moving = int(rng.integers(self.count))
            else:
                moving = self.atlases[int(rng.integers(len(self.atlases)))]
            others = [a for a in self.atlases if a != moving]
            if others and rng.random() < self.annotated_fixed:
                fixed = others[int(rng.integers(len(others)))]
            else:
                choices = [i for i in range(self.count) if i != moving]
                fixed = choices[int(rng.integers(len(choices)))]
            pairs.append(VolumePair(moving, fixed))
        return pairs


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
    inside_box = np.ones(q.shape[1:], bool)
    for d, n in enumerate(box.shape):
        inside_box &= (q[d] >= -0.5) & (q[d] <= n - 0.5)
    u = resample(flow, q[None])[0]
    coords = box_to_stack_coordinates(box, source, q + u)
    labels = torch.from_numpy(source.labels.astype(np.int64))[None, None]
    onehot = one_hot(labels, num_classes, ignore_index=boxed.ignore_index)[0].numpy()  # (K + 1, S_a, H, W)
    sampled = resample(onehot[None], coords[None])[0]
    warped = resample(source.images[None, None], coords[None])[0, 0]
    known = inside_box & (sampled[num_classes] < 0.5)
    for d, n in enumerate(source.images.shape):
        known &= (coords[d] >= -0.5) & (coords[d] <= n - 0.5)
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
    from jointreg.data.volume_box import image_box

    image = image_box(boxed.box, target)
    return [register_onto_stack(net, boxed, a, target, image, num_classes=num_classes, device=device)
            for a in range(len(boxed.volumes))]


def atlas_boxes(recipe, train: Sequence[SlicedVolume], ignore_index: int) -> BoxedVolumes:
    """The training atlases alone in the run's box."""
    box = training_box(recipe, train)
    return BoxedVolumes([train[a] for a in atlas_indices(train)], box, ignore_index=ignore_index)


def score_propagation(net: torch.nn.Module, boxed: BoxedVolumes, volumes: Sequence[SlicedVolume], *,
                      num_classes: int, ignore_index: int, device: torch.device,
                      use_full_labels: bool = True) -> dict[str, float]:
    """Mean foreground Dice of the atlases' fused labels on ``volumes``' training slices, and of
    the identity's (the atlases copied through the box), against their (full) labels; the
    atlases themselves are skipped.

    Returns:
        ``label_dice``, ``identity_dice`` and the number of ``volumes`` scored (as a float);
        empty when no volume has labels.
    """
    from jointreg.inference.scoring import class_dice

    scores: dict[str, list[float]] = {"label_dice": [], "identity_dice": []}
    atlases = {a.case for a in boxed.volumes}
    for volume in volumes:
        if volume.case in atlases:  # an atlas registered onto itself says nothing
            continue
        truth = volume.full_labels if use_full_labels and volume.full_labels is not None else volume.labels
        if truth is None or not (truth != ignore_index).any():
            continue
        for name, model in (("label_dice", net), ("identity_dice", None)):
            labels = fuse(propagate_atlases(model, boxed, volume, num_classes=num_classes, device=device), ignore_index)
            scores[name].append(float(np.mean(list(class_dice(labels, truth, num_classes=num_classes,
                                                              ignore_index=ignore_index).values()))))
    if not scores["label_dice"]:
        return {}
    return {**{k: float(np.mean(v)) for k, v in scores.items()}, "volumes": float(len(scores["label_dice"]))}


class VolumeGroups:
    """The segmentor's registration-derived groups in 3D mode (the slice mode's
    :class:`~jointreg.training.propagation.SegmentationGroups`, same interface).

    * propagated: slices of the target volumes with the atlases' fused labels;
    * warped: an atlas's image and labels warped onto a target slice.
    """

    def __init__(self, volumes: Sequence[SlicedVolume], boxed: BoxedVolumes, *, warped_weight: float,
                 propagated_weight: float, num_classes: int, ignore_index: int, device: torch.device):
        self.volumes, self.boxed = list(volumes), boxed
        self.atlases = atlas_indices(volumes)
        self.targets = [i for i in range(len(volumes)) if i not in set(self.atlases)]
        self.warped_weight, self.propagated_weight = warped_weight, propagated_weight
        self.num_classes, self.ignore_index, self.device = num_classes, ignore_index, device
        self.slots = [(v, s) for v in self.targets for s in range(volumes[v].num_slices)]
        self._labels: dict[int, np.ndarray] = {}
        self._warped: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._version: int | None = None

    def refresh(self, net: torch.nn.Module, version: int) -> None:
        """Register every atlas onto every target with the registration as it is now
        (``version``: registration steps done; nothing is recomputed while it stays the same)."""
        if version == self._version:
            return
        self._labels, self._warped = {}, {}
        for v in self.targets:
            results = [register_onto_stack(net, self.boxed, a, self.volumes[v], self.boxed.images[v, 0],
                                           num_classes=self.num_classes, device=self.device) for a in self.atlases]
            self._labels[v] = fuse(results, self.ignore_index)
            for a, r in zip(self.atlases, results):
                labels = np.where(r.known, np.argmax(r.probabilities, axis=0), self.ignore_index).astype(np.int64)
                self._warped[(a, v)] = (r.warped.astype(np.float32), labels)
        self._version = version

    def labels(self, volume: int) -> np.ndarray | None:
        """The fused propagated labels ``(S, H, W)`` of a target volume (after :meth:`refresh`)."""
        return self._labels.get(volume)

    def draw(self, net: torch.nn.Module, n_pairs: int, rng, *, segmentor=None, share=None
             ) -> tuple[PropagatedBatch | None, PropagatedBatch | None]:
        """``(warped, propagated)`` groups of ``n_pairs`` target slices each (``None`` when
        weighted 0 or when there is no target volume)."""
        if not self.slots:
            return None, None
        keep = share if share is not None else list
        warped = propagated = None
        if self.warped_weight > 0:
            slots = keep([self.slots[int(i)] for i in rng.integers(len(self.slots), size=n_pairs)])
            atlases = [self.atlases[int(i)] for i in rng.integers(len(self.atlases), size=len(slots))]
            images = np.stack([self._warped[(a, v)][0][s] for a, (v, s) in zip(atlases, slots)])[:, None]
            labels = np.stack([self._warped[(a, v)][1][s] for a, (v, s) in zip(atlases, slots)])[:, None]
            fixed = np.stack([self.volumes[v].images[s] for v, s in slots])[:, None]
            label_tensor = to_device(labels, self.device)
            warped = PropagatedBatch(to_device(images, self.device), label_tensor, to_device(fixed, self.device),
                                     label_tensor, torch.ones(len(slots), device=self.device))
        if self.propagated_weight > 0:
            slots = keep([self.slots[int(i)] for i in rng.integers(len(self.slots), size=n_pairs)])
            fixed = np.stack([self.volumes[v].images[s] for v, s in slots])[:, None]
            targets = np.stack([self._labels[v][s] for v, s in slots])[:, None]
            propagated = PropagatedBatch(None, None, to_device(fixed, self.device), to_device(targets, self.device),
                                         torch.ones(len(slots), device=self.device))
        return warped, propagated


def evaluate_propagation(net: torch.nn.Module, boxed: BoxedVolumes, groups: dict[str, list[tuple[SlicedVolume, np.ndarray]]],
                         *, num_classes: int, ignore_index: int, device: torch.device,
                         class_names: dict[int, str] | None = None) -> dict[str, dict]:
    """3D propagation Dice on the source grid: the atlases registered onto each volume, fused,
    and mapped back to the volume's own grid, against its complete labels; the identity's too.

    Args:
        groups: name -> ``[(volume, labels on its source grid in the networks' label space)]``
            (e.g. the training targets against ``labelsTr_full``, the test volumes).

    Returns:
        name -> ``{"cases", "label_dice", "identity_dice", "per_class": {registration, identity},
        "per_case": {case: {registration, identity}}}`` (mean foreground Dice; per class by name).
    """
    from jointreg.inference.scoring import class_dice

    names = class_names or {}
    result: dict[str, dict] = {}
    for group, items in groups.items():
        per_case: dict[str, dict[str, float]] = {}
        per_class: dict[str, dict[str, list[float]]] = {"registration": {}, "identity": {}}
        for volume, truth in items:
            if volume.case in {a.case for a in boxed.volumes}:
                continue
            per_case[volume.case] = {}
            for name, model in (("registration", net), ("identity", None)):
                probabilities, known = fused_probabilities(
                    propagate_atlases(model, boxed, volume, num_classes=num_classes, device=device))
                # Unknown as its own channel, so that it comes back where it was.
                stack = np.concatenate([probabilities * known[None], (~known)[None].astype(np.float32)])
                source = volume.to_volume(np.ascontiguousarray(stack.transpose(1, 0, 2, 3)), "probabilities")
                labels = np.argmax(source, axis=0)
                labels = np.where(labels == num_classes, ignore_index, labels)
                dice = class_dice(labels, truth, num_classes=num_classes, ignore_index=ignore_index)
                per_case[volume.case][name] = float(np.mean(list(dice.values())))
                for c, value in dice.items():
                    per_class[name].setdefault(names.get(c, str(c)), []).append(value)
        if not per_case:
            continue
        result[group] = {
            "cases": len(per_case),
            "label_dice": float(np.mean([v["registration"] for v in per_case.values()])),
            "identity_dice": float(np.mean([v["identity"] for v in per_case.values()])),
            "per_class": {k: {c: float(np.mean(v)) for c, v in d.items()} for k, d in per_class.items()},
            "per_case": per_case,
        }
    return result
