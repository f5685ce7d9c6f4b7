"""The networks' label space and the one dataset-id → network-id lookup.

A dataset declares its classes in ``dataset.json`` (name → id, background 0, nnU-Net's ``ignore``
the highest id). A run may train on a subset of them; its networks then predict background 0 and
the kept classes as ``1..K-1`` in the dataset's order, and ``K`` is their ignore index. Training
(building the label space) and pseudo-labelling (mapping another dataset onto a trained model's
classes) use the same lookup, matched by class name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jointreg.errors import ConfigError, InputError


def network_labels(class_labels: Mapping[str, int], names: Sequence[str], source: Path) -> dict[str, int]:
    """Network label ids for the classes ``names`` (all foreground classes when empty).

    The background keeps the dataset's name for id 0; kept classes are numbered ``1..`` in the
    dataset's order.

    Raises:
        ConfigError: a name that is not a foreground class of the dataset (``source`` names it).
    """
    unknown = [n for n in names if n not in class_labels or class_labels[n] == 0]
    if unknown:
        valid = ", ".join(n for n, i in class_labels.items() if i != 0)
        raise ConfigError(f"data.classes: {unknown[0]!r} is not a foreground class of {source} (classes: {valid})")
    background = next(n for n, i in class_labels.items() if i == 0)
    kept = [n for n, i in class_labels.items() if i != 0 and (not names or n in names)]
    return {background: 0, **{n: i + 1 for i, n in enumerate(kept)}}


def label_lookup(
    dataset_labels: Mapping[str, int], ignore_label: int | None, model_labels: Mapping[str, int], source: Path
) -> np.ndarray:
    """Dataset label id → network label id (by class name; classes the networks lack → background).

    The dataset's ``ignore`` maps to ``len(model_labels)``, the networks' ignore index.

    Raises:
        InputError: a network class that the dataset does not have.
    """
    missing = [n for n in model_labels if n not in dataset_labels]
    if missing:
        raise InputError(source, f"has no class {missing[0]!r}, which the run's networks predict (labels {dict(model_labels)})")
    top = max([*dataset_labels.values(), ignore_label or 0])
    lut = np.zeros(top + 1, np.int16)
    for name, value in dataset_labels.items():
        lut[value] = model_labels.get(name, 0)
    if ignore_label is not None:
        lut[ignore_label] = len(model_labels)
    return lut
