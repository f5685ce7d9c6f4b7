"""Cross-validation folds for studies: every case of a fully labelled dataset is a test case once.

A study with a ``folds`` section splits the cases of ``folds.dataset`` (its training and test
splits pooled) into ``folds.count`` groups, deterministically from ``folds.seed``. Fold ``k``
trains on the other groups, sparsified as ``jointreg sparsify`` would (``slices_per_volume``
per volume, ``strategy``, ``classes``), and tests on group ``k`` with its full labels. Each fold
is an ordinary dataset folder ``OUTPUT/folds/fold<k>`` (images hard-linked where the file
system allows, copied otherwise), so each run of a fold is an ordinary run on it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from jointreg.errors import ConfigError, InputError
from jointreg.utils.atomic import link_or_copy


@dataclass(frozen=True)
class FoldsConfig:
    """The ``folds`` section of a study.

    Attributes:
        count: number of folds (>= 2); 0 turns cross-validation off (the base recipe's dataset).
        dataset: a fully labelled dataset folder (e.g. from ``jointreg prepare``).
        seed: seed of the assignment of cases to folds.
        slices_per_volume, strategy, classes: how the training cases of each fold are
            sparsified (see ``jointreg sparsify``).
        volumes: instead, keep this many whole training volumes annotated per fold and none of
            the others (``jointreg sparsify --volumes``; 3D mode, ``volumes.enabled``), chosen
            with ``seed``.
    """

    count: int = 0
    dataset: str = ""
    seed: int = 0
    slices_per_volume: int = 1
    strategy: Literal["largest", "even", "random", "extremes"] = "largest"
    classes: tuple[str, ...] = ()
    volumes: int | None = None

    def __post_init__(self):
        if self.count == 1 or self.count < 0:
            raise ConfigError(f"folds.count: need at least 2 folds (or 0 for none), got {self.count}")
        if self.count and not self.dataset:
            raise ConfigError("folds.dataset: cross-validation needs a fully labelled dataset")
        if self.slices_per_volume < 1:
            raise ConfigError("folds.slices_per_volume: must be >= 1")
        if self.volumes is not None and self.volumes < 1:
            raise ConfigError("folds.volumes: must be >= 1 annotated volume per fold")

    @property
    def enabled(self) -> bool:
        return self.count > 0


def assign_folds(cases: list[str], count: int, seed: int) -> list[list[str]]:
    """Split ``cases`` into ``count`` groups of (nearly) equal size, shuffled with ``seed``;
    each group is sorted. The same cases and seed always give the same folds."""
    if len(cases) < count:
        raise ConfigError(f"folds.count: {count} folds need at least {count} cases, the dataset has {len(cases)}")
    order = np.random.default_rng([seed, 11]).permutation(len(cases))
    return [sorted(cases[i] for i in order[k::count]) for k in range(count)]


def _pooled_cases(source) -> dict[str, str]:
    """Case → split of every labelled case of the source dataset (training split first)."""
    found: dict[str, str] = {}
    for split in ("Tr", "Ts"):
        if not source.has_split(split):
            continue
        for case in source.cases(split):
            label = source.label_path(case, split, full=split == "Tr" and source.has_full_labels("Tr"))
            if case in found:
                raise InputError(source.root, f"case {case!r} is in both imagesTr and imagesTs")
            if not label.is_file():
                raise InputError(label, "label file missing: cross-validation needs every case fully labelled")
            found[case] = split
    return found


def build_fold_datasets(config: FoldsConfig, out: str | os.PathLike[str], *, progress: bool = False) -> list[dict[str, Any]]:
    """Write (or reuse) one sparsified dataset per fold under ``out``.

    Returns:
        Per fold: ``{"fold": k, "dataset": path, "train": [...], "test": [...]}``.

    Raises:
        InputError: the source is not a dataset, a case lacks its full labels, or it is sparse.
    """
    from jointreg.data.dataset import Dataset
    from jointreg.data.sparsify import sparsify_dataset

    source = Dataset.open(config.dataset)
    if source.spec.ignore_label is not None and not source.has_full_labels("Tr"):
        raise InputError(source.root, "is sparsely labelled; folds need the fully labelled dataset")
    pooled = _pooled_cases(source)
    groups = assign_folds(sorted(pooled), config.count, config.seed)
    out = Path(out)
    folds = []
    for k, test in enumerate(groups):
        train = sorted(c for c in pooled if c not in test)
        folder = out / f"fold{k}"
        full = out / f"fold{k}_full"
        manifest = {"train": train, "test": test, "source": str(source.root), "seed": config.seed}
        if not _fold_is_current(folder, manifest, config):
            spec = source.spec.replace(num_training=len(train))
            if full.exists():
                shutil.rmtree(full)
            for case in train + test:
                split = pooled[case]
                target = "Tr" if case in train else "Ts"
                full_labels = split == "Tr" and source.has_full_labels("Tr")
                link_or_copy(source.image_path(case, split), full / f"images{target}" / source.image_path(case, split).name)
                link_or_copy(source.label_path(case, split, full=full_labels), full / f"labels{target}" / f"{case}{spec.file_ending}")
            from jointreg.data.dataset import write_spec

            write_spec(full, spec.replace(labels={k_: v for k_, v in spec.labels.items() if k_ != "ignore"}))
            if config.volumes is not None:
                sparsify_dataset(full, folder, volumes=config.volumes, seed=config.seed, overwrite=True, progress=progress)
            else:
                sparsify_dataset(full, folder, slices_per_volume=config.slices_per_volume, strategy=config.strategy,
                                 seed=config.seed, classes=list(config.classes) or None, overwrite=True,
                                 progress=progress)
            shutil.rmtree(full)
            from jointreg.utils.atomic import write_json

            write_json(folder / "folds.json", {**manifest, "settings": _settings(config)})
        folds.append({"fold": k, "dataset": str(folder), "train": train, "test": test})
    return folds


def _settings(config: FoldsConfig) -> dict[str, Any]:
    settings = {"count": config.count, "slices_per_volume": config.slices_per_volume, "strategy": config.strategy,
                "classes": list(config.classes)}
    if config.volumes is not None:  # only when set, so that existing slice folds stay current
        settings["volumes"] = config.volumes
    return settings


def _fold_is_current(folder: Path, manifest: dict[str, Any], config: FoldsConfig) -> bool:
    import json

    path = folder / "folds.json"
    if not path.is_file():
        return False
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False
    return stored == {**manifest, "settings": _settings(config)}
