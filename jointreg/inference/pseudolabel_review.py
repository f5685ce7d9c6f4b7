"""A picture per pseudo-labelled case, worst first, so that a person can check a whole output.

``jointreg pseudolabel`` calls :func:`write_pseudolabel_review` once every case is labelled. It
writes ``OUT/montages/{case}.png`` (a few slices of the image with the pseudo-label's contours)
and the page ``OUT/montages.md`` (:mod:`jointreg.metrics.gallery`). nnU-Net and MONAI ignore
both.

Which cases come first:

* when the source dataset keeps complete labels (``labelsTr_full/``, as ``jointreg sparsify``
  writes them), the pseudo-labels are scored against them (Dice per class; the montage also
  shows them, white under the pseudo-label), lowest mean Dice first;
* otherwise, in ``fusion`` mode, the lowest mean agreement between registration and segmentor
  over the case's pseudo-labelled slices (``provenance/{case}.json``) comes first;
* otherwise there is no quality signal, and the cases keep their order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jointreg.metrics.montage import DEFAULT_SLICES

TITLE = "Pseudo-labels, worst first"


def _agreement(provenance: Path) -> float | None:
    """The mean registration/segmentor agreement over a case's pseudo-labelled slices, if any."""
    try:
        slices = json.loads(provenance.read_text(encoding="utf-8")).get("slices", [])
    except (OSError, ValueError, AttributeError):
        return None
    values = [s["agreement"] for s in slices if isinstance(s, dict) and isinstance(s.get("agreement"), (int, float))]
    return float(np.mean(values)) if values else None


def _class_dice(pseudo: np.ndarray, truth: np.ndarray, classes: Mapping[str, int], ignore: int) -> dict[str, float]:
    from jointreg.metrics.overlap import dice

    known = truth != ignore
    return {name: dice(pseudo == v, truth == v, known) for name, v in classes.items()}


def write_pseudolabel_review(
    out: str | Path,
    source,
    labels: Mapping[str, int],
    lut: Sequence[int],
    *,
    count: int = DEFAULT_SLICES,
    progress: bool = True,
) -> Path:
    """Write the montages and ``montages.md`` of a finished pseudo-label output; returns the page.

    Args:
        out: the pseudo-label dataset (``imagesTr/``, ``labelsTr/``, ``provenance/``).
        source: the sparse :class:`~jointreg.data.dataset.Dataset` it was made from.
        labels: the output's classes (name → id, the run's label space).
        lut: source dataset id → output id (``ignore`` → ``len(labels)``).
        count: slices per montage.
    """
    from tqdm.auto import tqdm

    from jointreg.data.nifti import read_label
    from jointreg.inference.pseudolabel_case import PROVENANCE_DIR
    from jointreg.metrics.gallery import GALLERY_MD, CaseMontage, case_montage_png, write_gallery

    out = Path(out)
    ending = source.spec.file_ending
    classes = {n: int(v) for n, v in labels.items() if int(v) != 0}
    ignore = len(labels)
    table = np.asarray(lut, np.int16)
    with_truth = source.has_full_labels("Tr")
    pictures: dict[str, bytes] = {}
    scores: dict[str, tuple[float | None, str]] = {}
    cases = [c for c in source.cases("Tr") if (out / "labelsTr" / f"{c}{ending}").is_file()]
    for case in tqdm(cases, desc="montages", unit="case", disable=None if progress else True):
        pseudo = read_label(out / "labelsTr" / f"{case}{ending}")
        truth = None
        full = source.label_path(case, full=True)
        if with_truth and full.is_file():
            truth = table[np.minimum(read_label(full).array, len(table) - 1)]
            if truth.shape != pseudo.array.shape:
                truth = None
        if truth is not None:
            per_class = _class_dice(pseudo.array, truth, classes, ignore)
            text = ", ".join(f"{n} {d:.3f}" for n, d in per_class.items()) + " (vs labelsTr_full)"
            scores[case] = (float(np.mean(list(per_class.values()))) if per_class else None, text)
        else:
            agreement = _agreement(out / PROVENANCE_DIR / f"{case}.json")
            scores[case] = (agreement, "" if agreement is None else f"agreement {agreement:.3f}")
        item = CaseMontage(case, out / "imagesTr" / f"{case}_0000{ending}", truth, {"pseudo-label": pseudo.array},
                           title=f"{case}: {scores[case][1]}" if scores[case][1] else case)
        pictures[case] = case_montage_png(item, classes, spacing=pseudo.spacing, count=count, ignore_label=ignore)
    if with_truth:
        note = "Mean Dice against the complete labels (labelsTr_full) of the source, lowest first."
    elif any(score is not None for score, _ in scores.values()):
        note = "Mean agreement of registration and segmentor over the pseudo-labelled slices, lowest first."
    else:
        note = ("No quality signal (no labelsTr_full in the source, and not --mode fusion): cases in id order; "
                "the montages show the pseudo-label contours.")
    write_gallery(out, pictures, scores, title=TITLE, note=note)
    return out / GALLERY_MD
