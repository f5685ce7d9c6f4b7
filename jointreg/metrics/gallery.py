"""Galleries of case montages: one PNG per case and a worst-first Markdown page linking them.

The pictures themselves are :mod:`jointreg.metrics.montage`; this module finds what to draw
(the image next to a labels folder, the predictions' label maps), orders the cases worst first
and writes the pages of ``jointreg evaluate`` (and every run's evaluation), ``jointreg study``
(one row per method) and ``jointreg pseudolabel``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np

from jointreg.errors import JointregError
from jointreg.metrics.montage import DEFAULT_SLICES, DEFAULT_TILE, case_montage, png_bytes, write_png
from jointreg.metrics.segmentation import STATUS_OK, ClassMetrics

log = logging.getLogger(__name__)

MONTAGE_DIR = "montages"
GALLERY_MD = "montages.md"
"""A gallery's layout: ``FOLDER/montages/{case}.png`` and the page ``FOLDER/montages.md``."""


@dataclass(frozen=True)
class GalleryEntry:
    """One case of a gallery page: its montage file and what it scored.

    Attributes:
        case: case id.
        link: the montage's path relative to the gallery's folder (URL-quoted).
        score: lower is worse (the order of the page); ``None`` sorts last.
        text: the scores shown next to the case (e.g. ``liver 0.812``).
    """

    case: str
    link: str
    score: float | None = None
    text: str = ""


def worst_first(entries: Sequence[GalleryEntry]) -> list[GalleryEntry]:
    """Entries by increasing score (worst first), unscored ones last, ties by case id."""
    return sorted(entries, key=lambda e: (e.score is None, e.score if e.score is not None else 0.0, e.case))


def gallery_table(entries: Sequence[GalleryEntry]) -> str:
    """A Markdown table of ``entries`` in their order: rank, case, scores, montage link."""
    lines = ["| rank | case | scores | montage |", "|---|---|---|---|"]
    lines += [f"| {i} | {e.case} | {e.text or '–'} | [{e.case}]({e.link}) |" for i, e in enumerate(entries, 1)]
    return "\n".join(lines)


def gallery_markdown(entries: Sequence[GalleryEntry], *, title: str, note: str = "") -> str:
    """A Markdown page: the worst-first table of the cases, then every montage in that order."""
    ordered = worst_first(entries)
    lines = [f"# {title}", ""] + ([note, ""] if note else []) + [gallery_table(ordered)]
    for e in ordered:
        lines += ["", f"## {e.case}" + (f" — {e.text}" if e.text else ""), "", f"![{e.case}]({e.link})"]
    return "\n".join(lines) + "\n"


def write_gallery(
    folder: str | PathLike[str],
    pictures: Mapping[str, bytes | np.ndarray],
    scores: Mapping[str, tuple[float | None, str]] | None = None,
    *,
    title: str,
    note: str = "",
) -> list[GalleryEntry]:
    """Write ``folder/montages/{case}.png`` and the page ``folder/montages.md``, each atomically.

    Args:
        pictures: case → montage (PNG bytes or an RGB array).
        scores: case → (score, text); lower scores come first (worst first).
        title, note: the page's heading and a line under it.

    Returns:
        The entries in page order (worst first), links relative to ``folder``.
    """
    from urllib.parse import quote

    from jointreg.utils.atomic import remove_stale_temporaries, write_text

    folder = Path(folder)
    remove_stale_temporaries(folder / MONTAGE_DIR)  # leftovers of a killed earlier write
    scores = scores or {}
    entries = []
    for case, picture in pictures.items():
        write_png(folder / MONTAGE_DIR / f"{case}.png", picture)
        score, text = scores.get(case, (None, ""))
        entries.append(GalleryEntry(case, f"{MONTAGE_DIR}/{quote(case)}.png", score, text))
    ordered = worst_first(entries)
    write_text(folder / GALLERY_MD, gallery_markdown(ordered, title=title, note=note))
    return ordered


# --- what to draw ------------------------------------------------------------------------------
def images_folder_for(labels_dir: str | PathLike[str]) -> Callable[[str], Path | None] | None:
    """For a dataset's labels folder, ``case → image file`` (channel 0), else ``None``.

    ``labelsTs`` pairs with ``imagesTs``; ``labelsTr`` and ``labelsTr_full`` with ``imagesTr``.
    A folder outside a dataset (no ``dataset.json`` beside it) has no images: its montages
    draw the contours on a dark background.
    """
    labels_dir = Path(labels_dir)
    parent = labels_dir.parent
    if not (parent / "dataset.json").is_file() or not labels_dir.name.startswith("labels"):
        return None
    images = parent / ("imagesTs" if labels_dir.name.startswith("labelsTs") else "imagesTr")
    if not images.is_dir():
        return None

    def find(case: str) -> Path | None:
        for ending in (".nii.gz", ".nii"):
            path = images / f"{case}_0000{ending}"
            if path.is_file():
                return path
        return None

    return find


def load_montage_image(image: str | PathLike[str] | np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """The image to draw under the contours, or ``None`` when it is absent, unreadable or of
    another shape than the label maps (a picture is never a reason to fail an evaluation)."""
    from jointreg.data.nifti import read_image

    if image is None:
        return None
    if isinstance(image, np.ndarray):
        array = image
    else:
        try:
            array = read_image(image, ndim=None, check_finite=False).array
        except JointregError as exc:
            log.warning("montage without image: %s", exc)
            return None
    while array.ndim > len(shape) and array.shape[-1] == 1:
        array = array[..., 0]
    if tuple(array.shape) != tuple(shape):
        log.warning("montage without image: %s has shape %s, the labels %s", image, array.shape, shape)
        return None
    return array


def case_scores(rows: Sequence[ClassMetrics]) -> dict[str, tuple[float | None, str]]:
    """Per case: the mean Dice over its classes (a missed structure counts 0; the order of a
    gallery) and a short text (``liver 0.812, spleen 0.000 (missed)``); no prediction: ``None``."""
    by_case: dict[str, list[ClassMetrics]] = {}
    for row in rows:
        by_case.setdefault(row.case, []).append(row)
    result = {}
    for case, mine in by_case.items():
        scored = [r for r in mine if r.status == STATUS_OK and math.isfinite(r.dice)]
        if not scored:
            result[case] = (None, "no prediction")
            continue
        text = ", ".join(f"{r.class_name} {r.dice:.3f}" + (" (missed)" if r.missed else "") for r in scored)
        result[case] = (float(np.mean([r.dice for r in scored])), text)
    return result



def combined_scores(rows_by_method: Mapping[str, Sequence[ClassMetrics]]) -> dict[str, tuple[float | None, str]]:
    """Per case, over methods: the mean of each method's :func:`case_scores` (the hardest cases
    come first) and each method's mean Dice (``UNet 0.523, RUNet 0.659``)."""
    per_method = {name: case_scores(rows) for name, rows in rows_by_method.items()}
    cases = sorted({case for scores in per_method.values() for case in scores})
    result = {}
    for case in cases:
        scored = [(name, scores[case][0]) for name, scores in per_method.items()
                  if case in scores and scores[case][0] is not None]
        text = ", ".join(f"{name} {score:.3f}" for name, score in scored)
        result[case] = (float(np.mean([s for _, s in scored])) if scored else None, text or "no prediction")
    return result

@dataclass(frozen=True)
class CaseMontage:
    """What one case's montage shows.

    Attributes:
        image: an image file or array (``None``: a dark background).
        truth: the ground-truth label map, or ``None``.
        predictions: row name → label map (ids of the classes drawn).
        rows: the case's metric rows; the title shows them unless ``title`` is given.
    """

    case: str
    image: Path | np.ndarray | None
    truth: np.ndarray | None
    predictions: Mapping[str, np.ndarray]
    rows: Sequence[ClassMetrics] = ()
    title: str | None = None


def case_montage_png(
    item: CaseMontage,
    classes: Mapping[str, int],
    *,
    spacing: Sequence[float],
    count: int = DEFAULT_SLICES,
    ignore_label: int | None = None,
    tile: int = DEFAULT_TILE,
) -> bytes:
    """The PNG of one case's montage (:func:`jointreg.metrics.montage.case_montage`)."""
    maps = [m for m in (item.truth, *item.predictions.values()) if m is not None]
    image = load_montage_image(item.image, maps[0].shape if maps else ())
    title = item.title
    if title is None:
        title = f"{item.case}: {case_scores(item.rows)[item.case][1]}" if item.rows else item.case
    picture = case_montage(image, item.truth, item.predictions, classes, spacing=spacing, count=count,
                           title=title, ignore_label=ignore_label, tile=tile)
    return png_bytes(picture)


@dataclass(frozen=True)
class MethodPredictions:
    """Where one method's predictions of some cases are: ``(predictions folder, ground-truth
    labels folder)`` pairs, e.g. one per cross-validation fold."""

    name: str
    sources: Sequence[tuple[Path, Path]] = field(default_factory=tuple)


def _find_case(method: MethodPredictions, case: str) -> tuple[Path, Path, Path] | None:
    for pred_dir, gt_dir in method.sources:
        for ending in (".nii.gz", ".nii"):
            pred, gt = Path(pred_dir) / f"{case}{ending}", Path(gt_dir) / f"{case}{ending}"
            if pred.is_file() and gt.is_file():
                return pred, gt, Path(pred_dir)
    return None


def write_method_gallery(
    folder: str | PathLike[str],
    methods: Sequence[MethodPredictions],
    scores: Mapping[str, tuple[float | None, str]],
    classes: Sequence[str],
    *,
    title: str,
    count: int = DEFAULT_SLICES,
) -> list[GalleryEntry]:
    """A gallery comparing methods: per case (of ``scores``), the ground truth and one row per
    method that predicted it, ids matched by class name (:mod:`jointreg.metrics.label_maps`).

    Args:
        scores: case → (score, text), e.g. :func:`case_scores` of the baseline's report.
        classes: the class names to draw.
    """
    from jointreg.data.dataset import read_spec
    from jointreg.data.nifti import read_label
    from jointreg.metrics.label_maps import prediction_label_map, prediction_lookup

    pictures: dict[str, bytes] = {}
    for case in scores:
        found = {m.name: hit for m in methods if (hit := _find_case(m, case)) is not None}
        if not found:
            continue
        gt_file = next(iter(found.values()))[1]
        spec = read_spec(gt_file.parent.parent) if (gt_file.parent.parent / "dataset.json").is_file() else None
        gt_labels = dict(spec.class_labels) if spec else {}
        drawn = {n: gt_labels[n] for n in classes if n in gt_labels}
        truth = read_label(gt_file, ndim=None)
        predictions = {}
        for name, (pred_file, _, pred_dir) in found.items():
            array = read_label(pred_file, ndim=None).array
            pred_map, _ = prediction_label_map(pred_dir)
            lut = prediction_lookup(pred_map, gt_labels) if pred_map and gt_labels else None
            if lut is not None:
                array = np.asarray(lut, np.int16)[np.minimum(array, len(lut) - 1)]
            if array.shape == truth.array.shape:
                predictions[name] = array
        images = images_folder_for(gt_file.parent)
        item = CaseMontage(case, images(case) if images else None, truth.array, predictions,
                           title=f"{case}: {scores[case][1]}")
        pictures[case] = case_montage_png(item, drawn, spacing=truth.spacing, count=count,
                                          ignore_label=spec.ignore_label if spec else None)
    return write_gallery(folder, pictures, scores, title=title)
