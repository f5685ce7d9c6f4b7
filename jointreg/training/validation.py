"""Validation during training: segmentor Dice per volume, registration label Dice / NCC / folding.

Scores are computed on the training grid (fast, good enough to select a model) with the scorers
of :mod:`jointreg.inference.scoring`, which the end-of-run evaluation uses too: one Dice rule
(``docs/metrics.md``) for model selection and for reports. The final evaluation on the test
split uses the source geometry and millimetre metrics (:mod:`jointreg.metrics`).

Validation only reads the networks: they run in eval mode without gradients, and
:func:`isolated_rng` restores torch's, NumPy's and Python's global random states afterwards, so
a run's weights do not depend on whether, or how often, it validates (``logging.monitor`` relies
on this; tested).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch

from jointreg.data.pairs import PairSampler
from jointreg.data.slices import SlicedVolume
from jointreg.inference.predict import predict_stack
from jointreg.inference.scoring import class_dice, score_registration_pairs


def validate_segmentor(
    segmentor: torch.nn.Module,
    volumes: Sequence[SlicedVolume],
    *,
    num_classes: int,
    ignore_index: int,
    use_full_labels: bool = True,
    batch_size: int = 16,
    labels: Mapping[str, int] | None = None,
) -> dict[str, float]:
    """Mean foreground Dice over validation volumes (3D Dice on the training grid).

    Each volume scores every foreground class by :func:`~jointreg.inference.scoring.class_dice`
    (a class absent from both the prediction and the truth scores 1.0, ``ignore`` voxels are
    not counted).

    Args:
        labels: class name → id; per-class keys use the names (``dice/liver``), else the ids.

    Returns:
        ``{"dice": mean over classes of the per-class means, "dice/<class name>": mean over
        volumes}``; empty when no volume has labels.
    """
    per_class: dict[int, list[float]] = {}
    for volume in volumes:
        target = volume.full_labels if (use_full_labels and volume.full_labels is not None) else volume.labels
        if target is None:
            continue
        pred = predict_stack(segmentor, volume.images, batch_size=batch_size).argmax(1)
        for c, score in class_dice(pred, target, num_classes=num_classes, ignore_index=ignore_index).items():
            per_class.setdefault(c, []).append(score)
    if not per_class:
        return {}
    names = {int(v): str(n) for n, v in (labels or {}).items()}
    result = {f"dice/{names.get(c, c)}": float(np.mean(v)) for c, v in sorted(per_class.items())}
    result["dice"] = float(np.mean([np.mean(v) for v in per_class.values()]))
    return result


def validate_registration(
    net: torch.nn.Module,
    volumes: Sequence[SlicedVolume],
    *,
    radius: int,
    num_classes: int,
    ignore_index: int,
    max_pairs: int = 256,
    batch_size: int = 16,
) -> dict[str, float]:
    """Propagated-label Dice (vs. the fixed slices' full labels), NCC and folding % on pairs.

    Pairs: every annotated slice of each volume → the slices within ``radius`` (at most
    ``max_pairs``, evenly subsampled, deterministic), scored by
    :func:`~jointreg.inference.scoring.score_registration_pairs`.

    Returns:
        Means over the pairs: ``ncc``, ``folding_percent``, the number of ``pairs`` (as a
        float), and ``label_dice`` / ``identity_dice`` when the volumes have labels; empty when
        no annotated slice has a neighbour within ``radius``.
    """
    try:
        sampler = PairSampler(volumes, radius=radius)
    except ValueError:
        return {}
    pairs = sampler.same_volume_pairs()
    if len(pairs) > max_pairs:
        keep = np.linspace(0, len(pairs) - 1, max_pairs).round().astype(int)
        pairs = [pairs[i] for i in keep]
    scores = score_registration_pairs(
        net, volumes, pairs, num_classes=num_classes, ignore_index=ignore_index, batch_size=batch_size
    )
    result = {"ncc": scores.mean("ncc"), "folding_percent": scores.mean("folding_percent"), "pairs": float(len(pairs))}
    for name in ("label_dice", "identity_dice"):
        value = scores.mean(name)
        if value is not None:
            result[name] = value
    return result



def validation_scores(recipe, data, nets, volumes: Sequence[SlicedVolume], *, use_full_labels: bool) -> dict[str, float]:
    """The scores of a run's networks on ``volumes``: :func:`validate_segmentor` (classes named
    as in ``data.labels``) and :func:`validate_registration` (under ``registration/`` when the
    run also has a segmentor).

    Args:
        recipe: the run's :class:`~jointreg.training.config.Recipe` (the pairing radius).
        data: its :class:`~jointreg.training.data.TrainingData` (label space).
        nets: its :class:`~jointreg.training.networks.Networks`.
        use_full_labels: score against the volumes' complete labels where they have them.
    """
    from jointreg.utils.device import module_device

    scores: dict[str, float] = {}
    any_net = nets.segmentor if nets.segmentor is not None else nets.registration
    with isolated_rng(module_device(any_net)):
        if nets.segmentor is not None:
            scores.update(validate_segmentor(nets.segmentor, volumes, num_classes=data.num_classes,
                                             ignore_index=data.ignore_index, use_full_labels=use_full_labels,
                                             labels=data.labels))
        if nets.registration is not None and recipe.volumes.enabled:
            from jointreg.training.volume_mode import atlas_boxes, score_propagation

            reg_scores = score_propagation(
                nets.registration, atlas_boxes(recipe, data.train, data.ignore_index), volumes,
                num_classes=data.num_classes, ignore_index=data.ignore_index,
                device=module_device(nets.registration), use_full_labels=use_full_labels,
            )
        elif nets.registration is not None:
            reg_scores = validate_registration(nets.registration, volumes, radius=recipe.pairs.radius,
                                               num_classes=data.num_classes, ignore_index=data.ignore_index)
            scores.update({k if nets.segmentor is None else f"registration/{k}": v for k, v in reg_scores.items()})
    return scores

@contextlib.contextmanager
def isolated_rng(device: torch.device | None = None) -> Iterator[None]:
    """Run a block without touching the global random states of training.

    torch's CPU generator (and ``device``'s when it is a CUDA device), NumPy's legacy global
    generator and Python's ``random`` are put back as they were on exit: whatever a network
    draws while it is scored (a sampling network, dropout left on) cannot change the draws of
    the training steps that follow.
    """
    devices = [device] if device is not None and device.type == "cuda" else []  # device-ok: the CUDA generator to fork
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
