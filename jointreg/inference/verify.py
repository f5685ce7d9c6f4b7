"""Where a propagated structure ends: stop a registration-propagated label at the first slice
whose propagated region no longer looks like the annotated structure (Sli2Vol's verification
step, by appearance).

Registration moves an annotated structure onto every slice, including slices past the organ's
end, where it lands on other tissue. Walking outward from each annotated slice, a slice keeps a
class only while at least ``threshold`` of its propagated pixels have an intensity within the
``percentiles`` of that class on the annotated slice (same volume, same scale); from the first
slice that fails, or where the class vanished, to the next annotated slice, the class's
propagated pixels become background. Annotated voxels are never changed.

Measured on the 5 training volumes of CHAOS-T2 fold 0 (one annotated slice each, 64² grid,
FMIRNet of the joint run): liver Dice of the registration pseudo-labels 0.597 → 0.760 (direct),
0.588 → 0.759 (chain); copying the label 0.495 → 0.740 with the same rule (identity
registration): the stopping rule carries most of the gain, registration adds 0.02-0.04.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

DEFAULT_THRESHOLD = 0.6
DEFAULT_PERCENTILES = (5.0, 95.0)
_SQUARE = np.ones((3, 3), bool)


def stop_at_appearance_change(
    labels: np.ndarray,
    images: np.ndarray,
    annotated: Sequence[int],
    classes: Iterable[int],
    *,
    propagated: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
) -> np.ndarray:
    """Remove each class from the slices past the end of its annotated appearance.

    Args:
        labels: ``(S, H, W)`` labels: annotated slices and propagated ones.
        images: ``(S, H, W)`` intensities of the same volume (any monotone scale).
        annotated: indices of the annotated slices.
        classes: foreground class ids to check.
        propagated: ``(S, H, W)`` bool, the voxels that propagation labelled (only those change).
        threshold: the fraction of a slice's propagated class pixels that must lie within the
            annotated range.
        percentiles: the annotated class's intensity range (low, high), in percent.

    Returns:
        New labels; removed pixels are background (0).
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1]; got {threshold}")
    out = np.array(labels, copy=True)
    marks = sorted(int(a) for a in annotated)
    is_annotated = set(marks)
    n = labels.shape[0]
    for c in classes:
        for a in marks:
            reference = images[a][labels[a] == c]
            if reference.size == 0:
                continue
            low, high = np.percentile(reference, percentiles)
            for step in (1, -1):
                ended = False
                s = a + step
                while 0 <= s < n and s not in is_annotated:
                    region = (out[s] == c) & propagated[s]
                    if not ended:
                        values = images[s][region]
                        ended = values.size == 0 or float(((values >= low) & (values <= high)).mean()) < threshold
                    if ended:
                        out[s][region] = 0
                    s += step
    return out


def gate_by_appearance(
    labels: np.ndarray,
    images: np.ndarray,
    annotated: Sequence[int],
    classes: Iterable[int],
    *,
    propagated: np.ndarray,
    percentile: float,
) -> np.ndarray:
    """Remove the propagated pixels of each class whose intensity the annotated class never has.

    The per-slice check (:func:`stop_at_appearance_change`) decides *whether* a class goes on
    onto a slice; within a slice it kept, a propagated region still covers neighbouring tissue
    where registration did not shrink it (the liver towards its inferior tip, blood pool inside
    a propagated myocardium). Per class, the range is the ``percentile`` .. ``100 − percentile``
    intensities of its voxels on the annotated slices; propagated pixels of the class outside
    it become background, then each slice's remaining propagated region of the class is opened
    by a 3 × 3 square (specks the gate leaves are dropped, not kept as islands) and its holes
    are filled again (within the propagated region): what lies enclosed by the structure
    belongs to it, whatever its intensity (papillary muscles in the LV blood pool, vessels in
    the liver; without the filling the gate cost the LV 0.03 Dice on MS-CMR). Annotated voxels
    are never changed; ``percentile`` 0 changes nothing.

    Args:
        labels, images, annotated, classes, propagated: as :func:`stop_at_appearance_change`.
        percentile: the tail cut on each side, in percent, ``0 <= percentile < 50``.

    Returns:
        New labels; removed pixels are background (0).
    """
    out = np.array(labels, copy=True)
    ranges = appearance_ranges(images, labels, annotated, classes, percentile)
    for c, (low, high) in ranges.items():
        for s in range(labels.shape[0]):
            region = (out[s] == c) & propagated[s]
            if region.any():
                out[s][region & ~kept_by_appearance(region, images[s], low, high)] = 0
    return out


def appearance_ranges(
    images: np.ndarray, labels: np.ndarray, annotated: Sequence[int], classes: Iterable[int], percentile: float,
) -> dict[int, tuple[float, float]]:
    """Per class, the ``percentile`` .. ``100 − percentile`` intensities of its voxels on the
    annotated slices (classes without an annotated voxel are left out; ``percentile`` 0: none).

    Raises:
        ValueError: ``percentile`` outside ``[0, 50)``.
    """
    if not 0.0 <= percentile < 50.0:
        raise ValueError(f"percentile must be in [0, 50); got {percentile}")
    if percentile == 0.0:
        return {}
    marks = sorted(int(a) for a in annotated)
    ranges = {}
    for c in classes:
        reference = np.concatenate([images[a][labels[a] == c] for a in marks]) if marks else np.empty(0)
        if reference.size:
            low, high = np.percentile(reference, [percentile, 100.0 - percentile])
            ranges[int(c)] = (float(low), float(high))
    return ranges


def kept_by_appearance(region: np.ndarray, image: np.ndarray, low: float, high: float) -> np.ndarray:
    """The part of one slice's ``region`` (bool ``(H, W)``) that the gate keeps: its pixels with an
    intensity in ``[low, high]``, opened by a 3 × 3 square, holes filled again within ``region``."""
    from scipy import ndimage

    kept = ndimage.binary_opening(region & (image >= low) & (image <= high), _SQUARE)
    return ndimage.binary_fill_holes(kept) & region


def check_propagated(
    labels: np.ndarray,
    images: np.ndarray,
    annotated: Sequence[int],
    classes: Iterable[int],
    *,
    propagated: np.ndarray,
    threshold: float | None,
    gate: float,
) -> np.ndarray:
    """The appearance rules of propagated labels, in their order: each class stopped at the
    first slice where it no longer looks like itself (``threshold``; ``None``: off), then its
    kept pixels gated by the annotated intensities (``gate``; 0: off). Used alike by
    ``pseudolabel`` and by the joint loop's chain labels."""
    classes = list(classes)
    out = labels
    if threshold is not None:
        out = stop_at_appearance_change(out, images, annotated, classes, propagated=propagated, threshold=threshold)
    if gate:
        out = gate_by_appearance(out, images, annotated, classes, propagated=propagated, percentile=gate)
    return out
