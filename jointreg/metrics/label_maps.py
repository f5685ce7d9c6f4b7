"""What the ids of a folder of predicted label maps mean, and how they map onto the ground truth's.

A model knows its own classes: a run trained on the liver alone writes liver = 1 and nothing
else, whatever else the dataset labels. Reports score only what the predictions can hold (see
:mod:`jointreg.metrics.folders`), and match ids by class name.
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from pathlib import Path

from jointreg.data.dataset import MAX_LABEL_ID, read_spec
from jointreg.errors import InputError


PREDICTION_LABEL_FILES = ("segmentation.json", "dataset.json")
"""Files in a prediction folder that say what its label ids mean: ``jointreg segment``'s (and a
run's ``predictions/``) manifest, nnU-Net's / a pseudo-label dataset's ``dataset.json``."""


def prediction_label_map(pred_dir: str | PathLike[str]) -> tuple[dict[str, int] | None, str | None]:
    """The classes the predictions in ``pred_dir`` can hold (name → id, background included).

    Looks for :data:`PREDICTION_LABEL_FILES` in the folder, and for the ``dataset.json`` of its
    parent when the folder is a dataset's ``labels*`` folder. ``ignore`` is not a class.

    Returns:
        The map and the file it came from, or ``(None, None)`` when the folder has none.

    Raises:
        InputError: such a file that is not valid JSON or has no usable ``labels`` mapping.
    """
    import json

    pred_dir = Path(pred_dir)
    candidates = [pred_dir / name for name in PREDICTION_LABEL_FILES]
    if pred_dir.name.startswith("labels"):
        candidates.append(pred_dir.parent / "dataset.json")
    for path in candidates:
        if not path.is_file():
            continue
        if path.name == "dataset.json":
            return dict(read_spec(path).class_labels), str(path)
        try:
            labels = json.loads(path.read_text(encoding="utf-8")).get("labels")
            found = {str(n): int(v) for n, v in labels.items() if n != "ignore"}
        except (OSError, ValueError, TypeError, AttributeError):
            raise InputError(path, "no valid 'labels' mapping (class name -> id)") from None
        if any(v < 0 for v in found.values()):
            raise InputError(path, "'labels' holds a negative id")
        if any(v > MAX_LABEL_ID for v in found.values()):  # the lookup below is sized by the largest id
            raise InputError(path, f"'labels' holds an id above {MAX_LABEL_ID} (label maps are int16)")
        return found, str(path)
    return None, None


def prediction_lookup(pred_map: Mapping[str, int], gt_labels: Mapping[str, int]) -> tuple[int, ...] | None:
    """Prediction id → ground-truth id by class name (classes the truth lacks → 0); ``None``
    when every id already means the same class."""
    if all(gt_labels.get(name) == v for name, v in pred_map.items() if v != 0):
        return None
    lut = [0] * (max(pred_map.values(), default=0) + 1)
    for name, v in pred_map.items():
        lut[v] = int(gt_labels.get(name, 0))
    return tuple(lut)
