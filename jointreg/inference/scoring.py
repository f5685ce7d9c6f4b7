"""The scores that model selection (training validation) and reports (evaluation) share.

* :func:`class_dice` / :func:`mean_foreground_dice`: Dice of integer label maps, per class and
  averaged over the foreground classes, with the empty-mask and ``ignore`` rules of
  :mod:`jointreg.metrics.overlap` (``docs/metrics.md``).
* :func:`score_registration_pairs`: a registration network on a list of slice pairs, one
  :class:`PairScore` per pair (propagated-label Dice, the Dice of copying the label unchanged,
  NCC before and after, folding %). The callers choose the pairs; the scoring is the same.

Everything is computed on the training grid (fast; good enough to select a model and to compare
runs). The final segmentation evaluation in the source geometry, in millimetres, is
:mod:`jointreg.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

from jointreg.metrics.overlap import dice
from jointreg.utils.device import module_device

if TYPE_CHECKING:  # torch is imported where it is used
    import torch

    from jointreg.data.pairs import SlicePair
    from jointreg.data.slices import SlicedVolume


def class_dice(pred: np.ndarray, truth: np.ndarray, *, num_classes: int, ignore_index: int) -> dict[int, float]:
    """Dice of every foreground class ``1 .. num_classes - 1`` over the known voxels.

    This is the rule of :func:`jointreg.metrics.overlap.dice`, the one ``docs/metrics.md``
    documents: voxels whose truth is ``ignore_index`` count for neither mask; a class absent
    from both masks scores 1.0 (nothing to find, nothing found) and a class present in exactly
    one scores 0.0 (missed, or found where there is none). Model selection and the reports use
    this one definition, so a validation score and a report figure always mean the same thing.

    Args:
        pred: integer label map, any shape ``(*S)``; may contain ``ignore_index`` (counted as no
            class).
        truth: integer label map of the same shape; ``ignore_index`` marks unknown voxels.
        num_classes: classes proper, background 0 included (the ignore id excluded).
        ignore_index: the id of unknown voxels.

    Returns:
        ``{class id: Dice in [0, 1]}`` for every foreground class.

    Raises:
        ValueError: ``num_classes < 2`` (no foreground class to score).
    """
    if num_classes < 2:
        raise ValueError(f"Dice needs at least one foreground class; num_classes is {num_classes}")
    known = truth != ignore_index
    return {c: dice(pred == c, truth == c, known) for c in range(1, num_classes)}


def mean_foreground_dice(pred: np.ndarray, truth: np.ndarray, *, num_classes: int, ignore_index: int) -> float:
    """The mean of :func:`class_dice` over the foreground classes (same arguments)."""
    scores = class_dice(pred, truth, num_classes=num_classes, ignore_index=ignore_index)
    return float(np.mean(list(scores.values())))


def truth_labels(volume: SlicedVolume) -> np.ndarray | None:
    """The labels a sliced volume is scored against: its complete labels when it has them.

    Returns:
        ``(S, H, W)`` integer labels (``full_labels``, else ``labels``), or ``None``.
    """
    return volume.full_labels if volume.full_labels is not None else volume.labels


@dataclass(frozen=True)
class PairScore:
    """The scores of one registration pair, on the training grid.

    Attributes:
        pair: the scored pair (indices into the scored volumes).
        label_dice: :func:`mean_foreground_dice` of the moving label warped by the network
            against the fixed slice's truth (:func:`truth_labels`); ``None`` when the fixed
            volume has no labels.
        identity_dice: the same for the moving label copied unchanged (no registration).
        ncc: global NCC in ``[-1, 1]`` between the warped moving image and the fixed image.
        identity_ncc: the same for the moving image unchanged.
        folding_percent: percentage of pixels where the displacement folds (``det J <= 0``).
    """

    pair: SlicePair
    label_dice: float | None
    identity_dice: float | None
    ncc: float
    identity_ncc: float
    folding_percent: float


SCORE_NAMES = tuple(f.name for f in fields(PairScore) if f.name != "pair")
"""The figures of a :class:`PairScore`, in report order."""


@dataclass(frozen=True)
class RegistrationScores:
    """Per-pair scores of :func:`score_registration_pairs`, in the order of the pairs."""

    pairs: tuple[PairScore, ...]

    def __len__(self) -> int:
        return len(self.pairs)

    def mean(self, name: str) -> float | None:
        """Mean of one figure (one of :data:`SCORE_NAMES`) over the pairs that have it.

        Returns:
            The mean, or ``None`` when no pair has a value.
        """
        if name not in SCORE_NAMES:
            raise KeyError(f"unknown score {name!r}; valid: {', '.join(SCORE_NAMES)}")
        values = [getattr(p, name) for p in self.pairs if getattr(p, name) is not None]
        return float(np.mean(values)) if values else None


def score_registration_pairs(
    net: torch.nn.Module,
    volumes: Sequence[SlicedVolume],
    pairs: Sequence[SlicePair],
    *,
    num_classes: int,
    ignore_index: int,
    batch_size: int = 16,
) -> RegistrationScores:
    """Run a registration network on ``pairs`` and score every pair (:class:`PairScore`).

    The moving slice's label (``volume.labels``: what was annotated) is warped onto the fixed
    slice (one-hot, linear, argmax; :func:`jointreg.spatial.warp_labels`) and compared with the
    fixed slice's truth by :func:`mean_foreground_dice`. The network runs in eval mode without
    gradients and is put back in its previous mode afterwards.

    Args:
        net: maps ``(B, 1, H, W)`` moving and fixed images to an output with ``warped``
            ``(B, 1, H, W)`` and ``flow`` ``(B, 2, H, W)`` (pixels).
        volumes: the sliced volumes the pairs index into.
        pairs: the pairs to score.
        num_classes: classes proper, background included; ``ignore_index`` is the next id.
        ignore_index: the id of unknown pixels.
        batch_size: pairs per forward pass.

    Returns:
        One :class:`PairScore` per pair, in order.
    """
    import torch

    from jointreg.data.batches import registration_batch
    from jointreg.metrics.registration import folding_percent, ncc
    from jointreg.spatial.warp import warp_labels

    device = module_device(net)
    was_training = net.training
    net.eval()
    scores: list[PairScore] = []
    try:
        with torch.no_grad():
            for start in range(0, len(pairs), batch_size):
                chunk = list(pairs[start:start + batch_size])
                batch = registration_batch(volumes, chunk, ignore_index=ignore_index, device=device)
                out = net(batch.moving, batch.fixed)
                warped = warp_labels(batch.moving_label, out.flow, num_classes, ignore_index=ignore_index)[:, 0].cpu().numpy()
                copied = batch.moving_label[:, 0].cpu().numpy()
                nccs = ncc(out.warped, batch.fixed).cpu().tolist()
                identity_nccs = ncc(batch.moving, batch.fixed).cpu().tolist()
                folds = folding_percent(out.flow).cpu().tolist()
                for i, pair in enumerate(chunk):
                    truth = truth_labels(volumes[pair.fixed[0]])
                    moved = same = None
                    # A fixed slice without a single known voxel says nothing (not "both empty").
                    if truth is not None and (truth[pair.fixed[1]] != ignore_index).any():
                        rules = dict(num_classes=num_classes, ignore_index=ignore_index)
                        moved = mean_foreground_dice(warped[i], truth[pair.fixed[1]], **rules)
                        same = mean_foreground_dice(copied[i], truth[pair.fixed[1]], **rules)
                    scores.append(PairScore(pair, moved, same, nccs[i], identity_nccs[i], folds[i]))
    finally:
        net.train(was_training)
    return RegistrationScores(tuple(scores))
