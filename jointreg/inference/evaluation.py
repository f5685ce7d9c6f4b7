"""Evaluate trained networks on a dataset split, in the source geometry and in millimetres.

Segmentors: each test volume is segmented slice by slice, mapped back to its source grid,
(optionally) written as NIfTI with the image's affine, and scored against its full labels with
:mod:`jointreg.metrics` (Dice, HD, HD95, ASSD in mm; missed structures flagged). The predictions
folder gets a ``segmentation.json`` naming its label ids (the segmentor's classes), so that
``jointreg evaluate`` on it scores those classes only; the report gets one montage per case
(ground-truth and predicted contours, worst case first: :mod:`jointreg.metrics.gallery`).

Registration networks: docs/design.md's protocol, loop variant — in each volume the slice with the largest
foreground area is the moving (annotated) slice and every slice within the pairing radius is a
fixed slice; the moving label is warped onto each fixed slice (one-hot, linear, argmax) and scored
against the fixed slice's true label, next to copying the label unchanged (identity). This is
scored on the training grid by :func:`jointreg.inference.scoring.score_registration_pairs`, the
scorer training validation uses too, with the Dice rule of ``docs/metrics.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jointreg.data.dataset import Dataset
from jointreg.data.pairs import SlicePair
from jointreg.data.slices import SlicedVolume
from jointreg.inference.predict import segment_sliced_volume
from jointreg.inference.scoring import SCORE_NAMES, score_registration_pairs, truth_labels
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
    largest_component: Sequence[int] = (),
    raw_report_dir: Path | None = None,
    montage_slices: int = 4,
) -> dict[str, Any]:
    """Segment ``volumes``, write predictions and an evaluation report; return the summary.

    Args:
        labels: the segmentor's foreground classes (name → id).
        label_lut: maps the dataset's label ids to the segmentor's (when it was trained on a
            subset of the classes); applied to the ground truth.
        largest_component: classes post-processed as the exported segmentor does it
            (:mod:`jointreg.inference.postprocess`); the predictions and the report are the
            post-processed ones.
        raw_report_dir: with post-processing, also report the predictions without it here.
        montage_slices: slices per case in the report's montages (0: none).

    Returns:
        The summary; with post-processing and ``raw_report_dir``, the summary without it is
        under ``"without_postprocessing"``.
    """
    from tqdm.auto import tqdm

    from jointreg.data.nifti import write_volume
    from jointreg.inference.postprocess import keep_largest_component
    from jointreg.inference.segment import MANIFEST_NAME
    from jointreg.metrics import evaluate_arrays, summarize, write_report
    from jointreg.metrics.gallery import CaseMontage, case_montage_png

    ignore = dataset.spec.ignore_label
    if ignore is not None and label_lut is not None:
        ignore = int(label_lut[ignore])
    rows, raw_cases, montages = [], [], {}
    for volume in tqdm(volumes, desc="evaluate", disable=None if progress else True, unit="case"):
        raw, _ = segment_sliced_volume(segmentor, volume)
        prediction = keep_largest_component(raw, largest_component) if largest_component else raw
        if predictions_dir is not None:
            write_volume(predictions_dir / f"{volume.case}{dataset.spec.file_ending}", prediction,
                         reference=volume.reference, is_label=True)
        truth = dataset.read_label(volume.case, split)
        gt = truth.array if label_lut is None else label_lut[truth.array]
        case_rows = evaluate_arrays([(volume.case, prediction, gt, truth.spacing, truth.frame_axis)], labels,
                                    ignore_label=ignore)
        rows += case_rows
        if largest_component and raw_report_dir is not None:
            raw_cases.append((volume.case, raw, gt, truth.spacing, truth.frame_axis))
        if montage_slices:
            item = CaseMontage(volume.case, dataset.image_path(volume.case, split), gt, {"prediction": prediction}, case_rows)
            montages[volume.case] = case_montage_png(item, labels, spacing=truth.spacing, count=montage_slices,
                                                     ignore_label=ignore)
    if predictions_dir is not None and volumes:
        # What the ids mean (the segmentor's classes): `jointreg evaluate` scores these only.
        write_json(predictions_dir / MANIFEST_NAME, {
            "labels": {"background": 0, **{str(n): int(v) for n, v in labels.items() if int(v) != 0}},
            "source": "jointreg run evaluation", "dataset": str(dataset.root), "split": split,
            "largest_component": [int(c) for c in largest_component],
        })
    info = {"split": split, "dataset": str(dataset.root), "largest_component": [int(c) for c in largest_component]}
    write_report(rows, report_dir, info=info, overwrite=True, montages=montages)
    summary = summarize(rows)
    if largest_component and raw_report_dir is not None:
        raw_rows = evaluate_arrays(raw_cases, labels, ignore_label=ignore)
        write_report(raw_rows, raw_report_dir, info={**info, "largest_component": []}, overwrite=True, plots=False)
        summary["without_postprocessing"] = summarize(raw_rows)
    return summary


def _largest_slice(labels: np.ndarray, ignore_index: int) -> int:
    area = ((labels > 0) & (labels != ignore_index)).reshape(labels.shape[0], -1).sum(1)
    return int(np.argmax(area))


def largest_slice_pairs(volumes: Sequence[SlicedVolume], *, radius: int, ignore_index: int) -> list[SlicePair]:
    """The protocol's pairs (docs/design.md): in each labelled volume, the slice with the largest foreground area
    (of :func:`~jointreg.inference.scoring.truth_labels`) onto every other slice within ``radius``."""
    pairs = []
    for v, volume in enumerate(volumes):
        target = truth_labels(volume)
        if target is None:
            continue
        m = _largest_slice(target, ignore_index)
        for f in range(max(0, m - radius), min(volume.num_slices, m + radius + 1)):
            if f != m:
                pairs.append(SlicePair((v, m), (v, f), abs(f - m)))
    return pairs


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
    """Propagated-label Dice / NCC / folding % on every volume (docs/design.md protocol, loop variant).

    Pairs: :func:`largest_slice_pairs`; scores:
    :func:`~jointreg.inference.scoring.score_registration_pairs` (a fixed slice without the
    structure scores 1.0 when the propagated mask is empty too, 0.0 when it is not).

    Returns:
        Means over pairs: ``label_dice`` (registration), ``identity_dice`` (copying the label),
        ``ncc``, ``identity_ncc``, ``folding_percent`` (each ``None`` without pairs), and the
        number of ``pairs``.
    """
    pairs = largest_slice_pairs(volumes, radius=radius, ignore_index=ignore_index)
    scores = score_registration_pairs(
        net, volumes, pairs, num_classes=num_classes, ignore_index=ignore_index, batch_size=batch_size
    )
    result: dict[str, Any] = {name: scores.mean(name) for name in SCORE_NAMES}
    result["pairs"] = len(pairs)
    if out_json is not None:
        write_json(out_json, result)
    return result
