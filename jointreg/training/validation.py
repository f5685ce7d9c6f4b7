"""Validation during training: segmentor Dice per volume, registration label Dice / NCC / folding.

Scores are computed on the training grid (fast, good enough to select a model); the final
evaluation on the test split uses the source geometry and millimetre metrics
(:mod:`jointreg.metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from jointreg.data.pairs import PairSampler
from jointreg.data.slices import SlicedVolume
from jointreg.inference.segment import predict_stack
from jointreg.spatial.warp import warp_labels
from jointreg.training.batches import registration_batch


def dice_per_class(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int) -> dict[int, float]:
    """Dice per foreground class over known voxels; classes absent from both are skipped."""
    known = target != ignore_index
    scores = {}
    for c in range(1, num_classes):
        p = (pred == c) & known
        t = (target == c) & known
        denominator = p.sum() + t.sum()
        if denominator == 0:
            continue
        scores[c] = float(2.0 * (p & t).sum() / denominator)
    return scores


def validate_segmentor(
    segmentor: torch.nn.Module,
    volumes: Sequence[SlicedVolume],
    *,
    num_classes: int,
    ignore_index: int,
    use_full_labels: bool = True,
    batch_size: int = 16,
) -> dict[str, float]:
    """Mean foreground Dice over validation volumes (3D Dice on the training grid).

    Returns:
        ``{"dice": mean, "dice/<class id>": per-class mean}``; empty when nothing is scorable.
    """
    per_class: dict[int, list[float]] = {}
    for volume in volumes:
        target = volume.full_labels if (use_full_labels and volume.full_labels is not None) else volume.labels
        if target is None:
            continue
        pred = predict_stack(segmentor, volume.images, batch_size=batch_size).argmax(1)
        for c, score in dice_per_class(pred, target, num_classes, ignore_index).items():
            per_class.setdefault(c, []).append(score)
    if not per_class:
        return {}
    result = {f"dice/{c}": float(np.mean(v)) for c, v in sorted(per_class.items())}
    result["dice"] = float(np.mean([np.mean(v) for v in per_class.values()]))
    return result


@torch.no_grad()
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
    ``max_pairs``, evenly subsampled, deterministic).
    """
    from jointreg.metrics.registration import folding_percent, ncc as ncc_metric

    try:
        sampler = PairSampler(volumes, radius=radius)
    except ValueError:
        return {}
    pairs = sampler.same_volume_pairs()
    if len(pairs) > max_pairs:
        keep = np.linspace(0, len(pairs) - 1, max_pairs).round().astype(int)
        pairs = [pairs[i] for i in keep]
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    dices, identity_dices, nccs, folds = [], [], [], []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        batch = registration_batch(volumes, chunk, ignore_index=ignore_index, device=device)
        out = net(batch.moving, batch.fixed)
        warped = warp_labels(batch.moving_label, out.flow, num_classes, ignore_index=ignore_index)[:, 0].cpu().numpy()
        nccs.extend(ncc_metric(out.warped, batch.fixed).cpu().tolist())
        folds.extend(folding_percent(out.flow).cpu().tolist())
        for i, pair in enumerate(chunk):
            fixed_volume = volumes[pair.fixed[0]]
            target = fixed_volume.full_labels if fixed_volume.full_labels is not None else fixed_volume.labels
            if target is None:
                continue
            t = target[pair.fixed[1]]
            moving_label = batch.moving_label[i, 0].cpu().numpy()
            scores = dice_per_class(warped[i], t, num_classes, ignore_index)
            base = dice_per_class(moving_label, t, num_classes, ignore_index)
            if scores:
                dices.append(float(np.mean(list(scores.values()))))
            if base:
                identity_dices.append(float(np.mean(list(base.values()))))
    net.train(was_training)
    result = {"ncc": float(np.mean(nccs)), "folding_percent": float(np.mean(folds)), "pairs": float(len(pairs))}
    if dices:
        result["label_dice"] = float(np.mean(dices))
    if identity_dices:
        result["identity_dice"] = float(np.mean(identity_dices))
    return result
