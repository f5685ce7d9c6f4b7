"""3D mode: a few fully annotated volumes, a 3D registration network, a slice segmentor.

The DeepAtlas setting (``jointreg sparsify --volumes N``): some training volumes are annotated
on every slice (the *atlases*), the others not at all (the *targets*). With ``volumes.enabled``
the run's loop (:mod:`jointreg.training.loop`) stays the same, alternating registration and
segmentation phases, but

* the registration network is 3D and registers whole volumes in a common box
  (:mod:`jointreg.inference.volume_box`): pairs of an atlas (moving) and any other training volume
  (fixed; :class:`VolumePairs`), with the label term wherever the fixed volume is an atlas too;
* the segmentor (2D, on the training slices as in slice mode) learns from the atlases' slices
  (the real group) and from every slice of the targets, labelled by registering each atlas onto
  the target and fusing the atlases' warped one-hot labels (mean probability, then argmax;
  :class:`VolumeGroups`). The labels are rebuilt whenever the registration has changed; the
  warped group is the atlases' images and labels warped onto the targets' slices;
* with ``registration.anatomy_weight``, the segmentor supervises the registration back
  (DeepAtlas): its probabilities on the fixed volume's slices, resampled into the box, are the
  anatomy target (:meth:`VolumeGroups.anatomy`).

``register`` and the run's exported registration read volumes the same way (the box goes into
the model folder's ``preprocessing``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from jointreg.data.batches import to_device
from jointreg.data.slices import SlicedVolume
from jointreg.inference.atlases import (
    BoxedVolumes, atlas_indices, fuse, propagate_atlases, register_onto_stack, source_labels,
)
from jointreg.inference.volume_box import VolumeBox
from jointreg.training.propagation import PropagatedBatch



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
        self._anatomy: dict[int, np.ndarray] = {}
        self._anatomy_version: int | None = None

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

    @torch.no_grad()
    def anatomy(self, segmentor: torch.nn.Module, pairs: Sequence, version: int) -> torch.Tensor:
        """DeepAtlas's anatomy target of registration pairs: the slice segmentor's probabilities
        on each fixed volume's training slices, resampled into the box, ``(B, K, *box)``
        (recomputed when ``version``, the segmentation steps done, has changed)."""
        from jointreg.inference.predict import predict_stack
        from jointreg.inference.volume_box import probabilities_box

        if version != self._anatomy_version:
            self._anatomy = {}
            self._anatomy_version = version
        was = segmentor.training
        for v in {p.fixed for p in pairs} - set(self._anatomy):
            probs = predict_stack(segmentor, self.volumes[v].images, device=self.device)
            self._anatomy[v] = probabilities_box(self.boxed.box, self.volumes[v], probs)
        segmentor.train(was)
        return to_device(np.stack([self._anatomy[p.fixed] for p in pairs]), self.device)

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
                labels = source_labels(model, boxed, volume, num_classes=num_classes, device=device)
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
