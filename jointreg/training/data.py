"""The training data of a run: sliced training and validation volumes in the networks' label space."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jointreg.data.dataset import Dataset, DatasetSpec
from jointreg.data.label_space import label_lookup, network_labels
from jointreg.data.pairs import labelled_slices
from jointreg.data.slices import SlicedVolume, SliceSpec, load_sliced_dataset, slice_status
from jointreg.errors import ConfigError, InputError
from jointreg.training.config import Recipe


@dataclass
class TrainingData:
    """The sliced training/validation volumes and the label space the networks use.

    Attributes:
        labels: class name → id of the networks (background 0, consecutive; a subset of the
            dataset's classes when the recipe selects some).
        label_lut: maps dataset label ids (ignore included) to network ids.
        monitor: training volumes with their complete labels, scored for the logs only
            (``logging.monitor``); separate copies, so training never sees those labels.
    """

    dataset: Dataset
    spec: DatasetSpec
    slice_spec: SliceSpec
    train: list[SlicedVolume]
    validation: list[SlicedVolume]
    labels: dict[str, int]
    ignore_index: int
    label_lut: np.ndarray
    monitor: list[SlicedVolume] = dataclasses.field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def foreground_labels(self) -> dict[str, int]:
        return {name: i for name, i in self.labels.items() if i != 0}



def class_subset(spec: DatasetSpec, names: tuple[str, ...], source: Path) -> tuple[dict[str, int], np.ndarray, int]:
    """Network labels, the dataset-id → network-id lookup table, and the network's ignore id.

    With ``names`` empty the dataset's classes are kept as they are.
    """
    labels = network_labels(spec.class_labels, names, source)
    return labels, label_lookup(spec.class_labels, spec.ignore_label, labels, source), len(labels)


def check_label_ids(spec: DatasetSpec, source: Path) -> None:
    ids = sorted(spec.class_labels.values())
    if ids != list(range(len(ids))):
        raise InputError(source, f"class ids must be consecutive 0..{len(ids) - 1}, found {ids}")


def slice_spec_for(recipe: Recipe) -> SliceSpec:
    d = recipe.data
    return SliceSpec(
        axis=d.axis, size=tuple(d.size), normalization=d.normalization,
        ct_window=tuple(d.ct_window), mr_percentiles=tuple(d.mr_percentiles),
    )


def load_training_data(recipe: Recipe, *, progress: bool = True) -> TrainingData:
    """Open the recipe's dataset, slice it, split off validation cases, and check it is usable.

    Raises:
        InputError / ConfigError: no dataset, no annotated slice, class-count mismatches,
            missing full labels for ``labels: full``, unknown validation cases.
    """
    if not recipe.data.dataset:
        raise ConfigError("data.dataset: no dataset given (set it in the recipe or with --set data.dataset=PATH)")
    dataset = Dataset.open(recipe.data.dataset)
    spec = dataset.spec
    check_label_ids(spec, dataset.root / "dataset.json")
    labels, lut, ignore_index = class_subset(spec, tuple(recipe.data.classes), dataset.root / "dataset.json")
    num_classes = len(labels)
    if num_classes < 2:
        raise InputError(dataset.root / "dataset.json", "needs at least one foreground class")
    classes_arg = recipe.segmentation.arguments.get("classes")
    if classes_arg is not None and int(classes_arg) != num_classes:
        raise ConfigError(
            f"segmentation.arguments.classes = {classes_arg} disagrees with {dataset.root / 'dataset.json'}, "
            f"which declares {num_classes} classes ({', '.join(labels)})"
        )
    cases = dataset.cases("Tr")
    if not cases:
        raise InputError(dataset.images_dir("Tr"), "no training cases")
    missing_labels = [c for c in cases if not dataset.label_path(c).exists()]
    if missing_labels:
        raise InputError(dataset.label_path(missing_labels[0]), "label file missing (run jointreg validate)")
    validation_cases = _validation_cases(recipe, cases)
    full = recipe.data.labels == "full"
    has_full = dataset.has_full_labels("Tr")
    if full and not has_full and spec.ignore_label is not None:
        raise InputError(dataset.root, "data.labels is 'full' but the dataset has no labelsTr_full/ folder")
    slice_spec = slice_spec_for(recipe)
    train_cases = [c for c in cases if c not in validation_cases]
    if not train_cases:
        raise ConfigError("data: every training case is used for validation")
    train = load_sliced_dataset(dataset, slice_spec, cases=train_cases, full_labels=full and has_full, progress=progress)
    if full and has_full:
        # A case without its own full-label file keeps its (sparse) labels.
        train = [
            _restatus(dataclasses.replace(v, labels=v.full_labels, full_labels=None), ignore_index)
            if v.full_labels is not None else v
            for v in train
        ]
    validation = []
    if validation_cases:
        want_full = recipe.data.validation_labels == "full" and has_full
        validation = load_sliced_dataset(dataset, slice_spec, cases=validation_cases, full_labels=want_full, progress=progress)
    monitor = []
    if recipe.logging.monitor == "training":
        if not has_full:
            raise InputError(dataset.root, "logging.monitor is 'training' but the dataset has no labelsTr_full/ "
                             "folder (complete labels of the training cases to score against)")
        monitor = load_sliced_dataset(dataset, slice_spec, cases=train_cases[:recipe.logging.monitor_cases],
                                      full_labels=True, progress=progress)
    if not any(labelled_slices(v) for v in train):
        raise InputError(dataset.root / "labelsTr", "no annotated slice in any training case (nothing to learn from)")
    if recipe.evaluation.enabled:
        _check_evaluation_labels(dataset, recipe.evaluation.split)
    if not np.array_equal(lut, np.arange(len(lut))):
        train = [remap_volume(v, lut, ignore_index) for v in train]
        validation = [remap_volume(v, lut, ignore_index) for v in validation]
        monitor = [remap_volume(v, lut, ignore_index) for v in monitor]
    return TrainingData(dataset, spec, slice_spec, train, validation, labels, ignore_index, lut, monitor)


def _check_evaluation_labels(dataset: Dataset, split: str) -> None:
    """Read the evaluation split's label maps once before training, so that one the run could
    not score (a value ``dataset.json`` does not declare: :meth:`Dataset.read_label`) stops the
    run now, not after its training."""
    for case in dataset.cases(split):
        if dataset.label_path(case, split).exists():
            dataset.read_label(case, split)


def remap_volume(volume: SlicedVolume, lut: np.ndarray, ignore_index: int) -> SlicedVolume:
    labels = None if volume.labels is None else lut[volume.labels]
    full = None if volume.full_labels is None else lut[volume.full_labels]
    volume = dataclasses.replace(volume, labels=labels, full_labels=full)
    return _restatus(volume, ignore_index) if labels is not None else volume


def _restatus(volume: SlicedVolume, ignore_index: int) -> SlicedVolume:
    status = tuple(slice_status(volume.labels[i], ignore_index) for i in range(volume.labels.shape[0]))
    return dataclasses.replace(volume, status=status)


def _validation_cases(recipe: Recipe, cases: list[str]) -> list[str]:
    d = recipe.data
    if d.validation_cases:
        unknown = [c for c in d.validation_cases if c not in cases]
        if unknown:
            raise ConfigError(f"data.validation_cases: unknown case(s) {unknown}; cases are e.g. {cases[:3]}")
        return list(d.validation_cases)
    if d.validation_count:
        if d.validation_count >= len(cases):
            raise ConfigError(f"data.validation_count: {d.validation_count} leaves no training case (of {len(cases)})")
        rng = np.random.default_rng([recipe.seed, 7])
        return sorted(rng.choice(cases, size=d.validation_count, replace=False).tolist())
    return []


def sample_labelled(volumes: list[SlicedVolume], n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``n`` (volume, slice) indices of annotated slices, drawn uniformly with replacement."""
    slots = [(v, s) for v, vol in enumerate(volumes) for s in labelled_slices(vol)]
    return [slots[i] for i in rng.integers(len(slots), size=n)]
