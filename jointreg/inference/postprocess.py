"""nnU-Net's post-processing rule: keep only the largest connected component of a class, when
that does not lower the Dice on held-out labels.

With one annotated slice per volume a segmentor learns the organ's appearance but little of its
place; it then marks look-alike tissue far from the organ (bowel for liver on T2 MR), which is
what drives HD95. Organs such as the liver, the heart's cavities and the myocardium are one
connected piece, so removing every other piece removes those false positives. Whether a class
benefits is decided per run on labels the segmentor did not train on when there are any
(validation cases), and the decision travels in the exported segmentor, so that ``jointreg
segment`` and ``jointreg pseudolabel`` apply it too.

Components are 3D, face-connected (6-neighbourhood), on the volume's voxel grid.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

POSTPROCESSING = "postprocessing"  # key of the exported segmentor's config "extra"


def keep_largest_component(labels: np.ndarray, classes: Iterable[int]) -> np.ndarray:
    """``labels`` with every voxel of each class in ``classes`` outside that class's largest
    connected component set to background (0). Other classes are untouched.

    Args:
        labels: an integer label map of any dimension.
        classes: class ids to clean.

    Returns:
        A new array (same shape and dtype).
    """
    from scipy import ndimage

    out = np.array(labels, copy=True)
    for c in classes:
        mask = labels == c
        if not mask.any():
            continue
        components, count = ndimage.label(mask)
        if count <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        out[mask & (components != int(np.argmax(sizes)))] = 0
    return out


def _dice(prediction: np.ndarray, truth: np.ndarray, c: int, known: np.ndarray) -> float:
    from jointreg.metrics.overlap import dice

    return float(dice(prediction == c, truth == c, known=known))


def choose_largest_component(
    cases: Sequence[tuple[np.ndarray, np.ndarray]], classes: Sequence[int], *, ignore_label: int | None = None,
) -> dict[str, Any]:
    """Decide per class whether keeping the largest component is applied.

    A class gets the rule when its mean Dice over ``cases`` with the rule is at least the mean
    without it (ties apply it: a component no label contradicts is still far from the organ,
    and the organs this tool segments are one piece).

    Args:
        cases: ``(prediction, truth)`` label maps of the same shape per case; ``ignore_label``
            voxels of the truth are not scored.
        classes: the foreground class ids to decide for.

    Returns:
        ``{"largest_component": [class ids], "dice": {id: {"raw": mean, "largest_component": mean}}}``.
    """
    chosen, scores = [], {}
    for c in classes:
        raw, cleaned = [], []
        for prediction, truth in cases:
            known = np.ones(truth.shape, bool) if ignore_label is None else truth != ignore_label
            raw.append(_dice(prediction, truth, c, known))
            cleaned.append(_dice(keep_largest_component(prediction, [c]), truth, c, known))
        if not raw:
            continue
        scores[str(c)] = {"raw": float(np.mean(raw)), "largest_component": float(np.mean(cleaned))}
        if np.mean(cleaned) >= np.mean(raw):
            chosen.append(int(c))
    return {"largest_component": chosen, "dice": scores}


def largest_component_classes(config: dict[str, Any]) -> list[int]:
    """The classes a model folder's config asks to clean (none for models exported without it)."""
    return [int(c) for c in config.get("extra", {}).get(POSTPROCESSING, {}).get("largest_component", [])]
