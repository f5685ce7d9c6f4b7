"""Evaluate trained networks on a dataset split, in the source geometry and in millimetres.

Segmentors: each test volume is segmented slice by slice, mapped back to its source grid,
(optionally) written as NIfTI with the image's affine, and scored against its full labels with
:mod:`jointreg.metrics` (Dice, HD, HD95, ASSD in mm; missed structures flagged).

Registration networks: the FIELD.md protocol — in each volume the slice with the largest
foreground area is the moving (annotated) slice and every slice within the pairing radius is a
fixed slice; the moving label is warped onto each fixed slice (one-hot, linear, argmax) and scored
against the fixed slice's true label, next to copying the label unchanged (identity).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jointreg.data.dataset import Dataset
from jointreg.data.slices import SlicedVolume
from jointreg.inference.segment import segment_sliced_volume
from jointreg.utils.atomic import write_json


def evaluate_segmentor_on_volumes(
    segmentor: torch.nn.Module,
    volumes: Sequence[SlicedVolume],
    dataset: Dataset,
    *,
    split: str,
    labels: dict[str, int],
    predictions_dir: Path | None,
    report_dir: Path,
    label_lut: np.ndarray | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Segment ``volumes``, write predictions and an evaluation report; return the summary.

    Args:
        labels: the segmentor's foreground classes (name → id).
        label_lut: maps the dataset's label ids to the segmentor's (when it was trained on a
            subset of the classes); applied to the ground truth.
    """
    from tqdm.auto import tqdm

    from jointreg.data.nifti import write_volume
    from jointreg.metrics import evaluate_arrays, summarize, write_report

    cases = []
    for volume in tqdm(volumes, desc="evaluate", disable=None if progress else True, unit="case"):
        prediction, _ = segment_sliced_volume(segmentor, volume)
        if predictions_dir is not None:
            write_volume(predictions_dir / f"{volume.case}{dataset.spec.file_ending}", prediction,
                         reference=volume.reference, is_label=True)
        truth = dataset.read_label(volume.case, split)
        gt = truth.array if label_lut is None else label_lut[truth.array]
        cases.append((volume.case, prediction, gt, truth.spacing))
    ignore = dataset.spec.ignore_label
    if ignore is not None and label_lut is not None:
        ignore = int(label_lut[ignore])
    rows = evaluate_arrays(cases, labels, ignore_label=ignore)
    write_report(rows, report_dir, info={"split": split, "dataset": str(dataset.root)}, overwrite=True)
    return summarize(rows)


def _largest_slice(labels: np.ndarray, ignore_index: int) -> int:
    area = ((labels > 0) & (labels != ignore_index)).reshape(labels.shape[0], -1).sum(1)
    return int(np.argmax(area))


@torch.no_grad()
def evaluate_registration_on_volumes(
    net: torch.nn.Module,
    volumes: Sequence[SlicedVolume],
    *,
    radius: int,
    num_classes: int,
    ignore_index: int,
    out_json: Path | None = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Propagated-label Dice / NCC / folding % on every volume (FIELD.md protocol).

    Returns:
        Means over pairs: ``label_dice`` (registration), ``identity_dice`` (copying the label),
        ``ncc``, ``identity_ncc``, ``folding_percent``, and the number of ``pairs``.
    """
    from jointreg.data.pairs import SlicePair
    from jointreg.metrics.registration import folding_percent, ncc
    from jointreg.spatial.warp import warp_labels
    from jointreg.training.batches import registration_batch
    from jointreg.training.validation import dice_per_class

    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    pairs = []
    for v, volume in enumerate(volumes):
        target = volume.full_labels if volume.full_labels is not None else volume.labels
        if target is None:
            continue
        m = _largest_slice(target, ignore_index)
        for f in range(max(0, m - radius), min(volume.num_slices, m + radius + 1)):
            if f != m:
                pairs.append(SlicePair((v, m), (v, f), abs(f - m)))
    sums: dict[str, list[float]] = {"label_dice": [], "identity_dice": [], "ncc": [], "identity_ncc": [], "folding_percent": []}
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        batch = registration_batch(volumes, chunk, ignore_index=ignore_index, device=device)
        out = net(batch.moving, batch.fixed)
        warped = warp_labels(batch.moving_label, out.flow, num_classes, ignore_index=ignore_index)[:, 0].cpu().numpy()
        sums["ncc"] += ncc(out.warped, batch.fixed).cpu().tolist()
        sums["identity_ncc"] += ncc(batch.moving, batch.fixed).cpu().tolist()
        sums["folding_percent"] += folding_percent(out.flow).cpu().tolist()
        for i, pair in enumerate(chunk):
            truth = batch.fixed_label[i, 0].cpu().numpy()
            moved = dice_per_class(warped[i], truth, num_classes, ignore_index)
            copied = dice_per_class(batch.moving_label[i, 0].cpu().numpy(), truth, num_classes, ignore_index)
            # A fixed slice without the structure scores 0 when the propagated mask is not empty.
            sums["label_dice"].append(float(np.mean(list(moved.values()))) if moved else 1.0)
            sums["identity_dice"].append(float(np.mean(list(copied.values()))) if copied else 1.0)
    net.train(was_training)
    result: dict[str, Any] = {k: (float(np.mean(v)) if v else None) for k, v in sums.items()}
    result["pairs"] = len(pairs)
    if out_json is not None:
        write_json(out_json, result)
    return result
