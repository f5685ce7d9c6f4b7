"""The canonical dataset: nnU-Net v2's raw layout with its ``ignore`` label.

::

    DATASET/
      dataset.json                 channel_names, labels (name -> id), numTraining, file_ending
      imagesTr/{case}_0000.nii.gz  training images (one channel)
      labelsTr/{case}.nii.gz       labels; voxels equal to the "ignore" id are unannotated
      imagesTs/, labelsTs/         optional test split, same naming
      labelsTr_full/               optional: complete labels kept aside by ``jointreg sparsify``

Every command reads and writes this layout, so nnU-Net and MONAI can use jointreg's outputs as
they are. ``ignore`` (nnU-Net's convention: the highest id, named "ignore") marks voxels whose
class is unknown; losses and metrics skip them. It is not background.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from jointreg.data.nifti import Volume, read_image, read_label, write_volume
from jointreg.errors import InputError
from jointreg.utils.atomic import TMP_PREFIX, write_json
from jointreg.utils.yaml_io import load_json_file

IGNORE_NAME = "ignore"
# A dataset.json with a thousand cases listed is ~100 kB; anything this large is not a real one.
MAX_SPEC_BYTES = 16 << 20
MAX_LABEL_ID = 2**15 - 1
CHANNEL_SUFFIX = "_0000"
SPLITS = ("Tr", "Ts")


def undeclared_values(values, labels: Mapping[str, int]) -> str | None:
    """``"label value(s) 3, 4 not declared in the labels (background=0, liver=1)"`` for the
    ``values`` (ids found in a label map) that ``labels`` (``dataset.json``'s) lacks; ``None``
    when every value is declared."""
    known = {int(v) for v in labels.values()}
    undeclared = sorted({int(v) for v in values} - known)
    if not undeclared:
        return None
    shown = ", ".join(str(v) for v in undeclared[:10]) + (", ..." if len(undeclared) > 10 else "")
    declared = ", ".join(f"{n}={v}" for n, v in sorted(labels.items(), key=lambda kv: kv[1]))
    return f"label value(s) {shown} not declared in the labels ({declared})"


@dataclass(frozen=True)
class DatasetSpec:
    """The fields of ``dataset.json`` that jointreg uses.

    Attributes:
        channel_names: ``{"0": "CT"}``; the channel name selects intensity normalisation.
        labels: class name -> integer id, including ``background`` (0) and, for sparse
            datasets, ``ignore`` (the highest id).
        num_training: number of training cases.
        file_ending: ``.nii.gz``.
        name: free-text dataset name.
        extra: other keys of ``dataset.json``, written back unchanged.
    """

    channel_names: Mapping[str, str]
    labels: Mapping[str, int]
    num_training: int
    file_ending: str = ".nii.gz"
    name: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    # --- derived views -----------------------------------------------------------------
    @property
    def modality(self) -> str:
        """Name of channel 0 (e.g. ``CT``, ``T2``, ``MRI``, ``echo``)."""
        return str(self.channel_names.get("0", next(iter(self.channel_names.values()), "")))

    @property
    def ignore_label(self) -> int | None:
        return self.labels.get(IGNORE_NAME)

    @property
    def class_labels(self) -> dict[str, int]:
        """Classes proper (background included), without ``ignore``, sorted by id."""
        items = [(n, int(v)) for n, v in self.labels.items() if n != IGNORE_NAME]
        return dict(sorted(items, key=lambda kv: kv[1]))

    @property
    def num_classes(self) -> int:
        """Number of classes a segmentor predicts (background included, ``ignore`` excluded)."""
        return len(self.class_labels)

    @property
    def foreground_labels(self) -> dict[str, int]:
        return {n: v for n, v in self.class_labels.items() if v != 0}

    def with_ignore(self) -> DatasetSpec:
        """This spec with an ``ignore`` label added (one above the highest class id)."""
        if self.ignore_label is not None:
            return self
        labels = dict(self.class_labels)
        labels[IGNORE_NAME] = max(labels.values()) + 1
        return DatasetSpec(self.channel_names, labels, self.num_training, self.file_ending, self.name, self.extra)

    def replace(self, **changes: Any) -> DatasetSpec:
        fields = dict(
            channel_names=self.channel_names, labels=self.labels, num_training=self.num_training,
            file_ending=self.file_ending, name=self.name, extra=self.extra,
        )
        fields.update(changes)
        return DatasetSpec(**fields)

    # --- (de)serialisation -------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.name:
            data["name"] = self.name
        data["channel_names"] = dict(self.channel_names)
        data["labels"] = {n: int(v) for n, v in self.labels.items()}
        data["numTraining"] = int(self.num_training)
        data["file_ending"] = self.file_ending
        data.update({k: v for k, v in self.extra.items() if k not in data})
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, source: str | PathLike[str] = "dataset.json") -> DatasetSpec:
        """Parse and check a ``dataset.json`` mapping.

        Raises:
            InputError: missing keys, region-based or non-integer labels, a missing background,
                an ``ignore`` label that is not the highest id, several channels.
        """
        if not isinstance(data, Mapping):
            raise InputError(source, "dataset.json must hold a JSON object")
        for key in ("channel_names", "labels"):
            if key not in data:
                raise InputError(source, f"missing key '{key}'")
        channels = data["channel_names"]
        if not isinstance(channels, Mapping) or not channels:
            raise InputError(source, "'channel_names' must be a non-empty object like {\"0\": \"CT\"}")
        if len(channels) != 1:
            raise InputError(source, f"only single-channel datasets are supported, found {len(channels)} channels")
        for key, value in channels.items():
            # The name selects the normalisation: null, 5 or a list would silently become "None".
            if not isinstance(value, str) or not value.strip():
                raise InputError(source, f"channel_names[{key!r}] must be a name like \"CT\" or \"T2\", found {value!r:.40}")
        raw_labels = data["labels"]
        if not isinstance(raw_labels, Mapping) or not raw_labels:
            raise InputError(source, "'labels' must be a non-empty object of name -> integer id")
        labels: dict[str, int] = {}
        for name, value in raw_labels.items():
            if isinstance(value, (list, tuple)):
                raise InputError(source, f"label '{name}' is region-based ({value}); only integer labels are supported")
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(source, f"label '{name}' has a non-integer id {value!r:.40}")
            if not 0 <= value <= MAX_LABEL_ID:
                raise InputError(
                    source, f"label '{name}' has id {value}; ids must lie in 0..{MAX_LABEL_ID} "
                    "(label maps are stored as int16, and lookups are sized by the largest id)"
                )
            labels[str(name)] = int(value)
        if 0 not in labels.values():
            raise InputError(source, "labels must include background with id 0")
        if len(set(labels.values())) != len(labels):
            raise InputError(source, "two labels share the same id")
        if IGNORE_NAME in labels and labels[IGNORE_NAME] != max(labels.values()):
            raise InputError(source, "the 'ignore' label must have the highest id")
        ending = str(data.get("file_ending", ".nii.gz"))
        if ending not in (".nii.gz", ".nii"):
            raise InputError(source, f"file_ending {ending!r} is not supported (use .nii.gz)")
        known = {"channel_names", "labels", "numTraining", "file_ending", "name"}
        extra = {k: v for k, v in data.items() if k not in known}
        num = data.get("numTraining", 0)
        if isinstance(num, bool) or not isinstance(num, int) or num < 0:
            raise InputError(source, f"numTraining must be a non-negative integer, found {num!r}")
        return cls(
            channel_names={str(k): str(v) for k, v in channels.items()},
            labels=labels,
            num_training=int(num),
            file_ending=ending,
            name=str(data.get("name", "")),
            extra=extra,
        )


def read_spec(path: str | PathLike[str]) -> DatasetSpec:
    """Read ``dataset.json`` (a file, or a dataset folder containing it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "dataset.json"
    if not path.exists():
        raise InputError(path, "file not found (every dataset needs a dataset.json)")
    data = load_json_file(path, MAX_SPEC_BYTES, what="dataset.json")
    return DatasetSpec.from_json(data, source=path)


def write_spec(root: str | PathLike[str], spec: DatasetSpec) -> Path:
    path = Path(root) / "dataset.json"
    write_json(path, spec.to_json())
    return path


@dataclass(frozen=True)
class Dataset:
    """A dataset folder in the canonical layout.

    Example:
        >>> ds = Dataset.open("data/liver")                      # doctest: +SKIP
        >>> for case in ds.cases():                              # doctest: +SKIP
        ...     image, label = ds.read_image(case), ds.read_label(case)
    """

    root: Path
    spec: DatasetSpec

    @classmethod
    def open(cls, root: str | PathLike[str]) -> Dataset:
        root = Path(root)
        if not root.exists():
            raise InputError(root, "dataset folder not found")
        if not root.is_dir():
            raise InputError(root, "not a folder")
        return cls(root, read_spec(root))

    # --- paths -------------------------------------------------------------------------
    def images_dir(self, split: str = "Tr") -> Path:
        return self.root / f"images{_check_split(split)}"

    def labels_dir(self, split: str = "Tr", *, full: bool = False) -> Path:
        return self.root / (f"labels{_check_split(split)}" + ("_full" if full else ""))

    def image_path(self, case: str, split: str = "Tr") -> Path:
        return self.images_dir(split) / f"{case}{CHANNEL_SUFFIX}{self.spec.file_ending}"

    def label_path(self, case: str, split: str = "Tr", *, full: bool = False) -> Path:
        return self.labels_dir(split, full=full) / f"{case}{self.spec.file_ending}"

    def has_split(self, split: str) -> bool:
        return self.images_dir(split).is_dir()

    def has_full_labels(self, split: str = "Tr") -> bool:
        return self.labels_dir(split, full=True).is_dir()

    # --- listing -----------------------------------------------------------------------
    def cases(self, split: str = "Tr") -> list[str]:
        """Case ids with an image in ``images{split}``, sorted."""
        return list_cases(self.images_dir(split), self.spec.file_ending)

    def labelled_cases(self, split: str = "Tr") -> list[str]:
        return [c for c in self.cases(split) if self.label_path(c, split).exists()]

    # --- reading -----------------------------------------------------------------------
    def read_image(self, case: str, split: str = "Tr") -> Volume:
        return read_image(self.image_path(case, split))

    def read_label(self, case: str, split: str = "Tr", *, full: bool = False) -> Volume:
        """The label map of ``case``.

        Raises:
            InputError: as :func:`~jointreg.data.nifti.read_label`, and for a value that
                ``dataset.json`` does not declare (a label map from another dataset, or one whose
                ``dataset.json`` lost classes), which would otherwise be read as another class.
        """
        volume = read_label(self.label_path(case, split, full=full))
        declared = self.spec.labels
        top = max(declared.values())
        contiguous = len(set(declared.values())) == top + 1
        if volume.array.size and (volume.array.max() > top or not contiguous):
            problem = undeclared_values(np.unique(volume.array), declared)
            if problem:
                raise InputError(volume.path, f"{problem} of {self.root / 'dataset.json'}")
        return volume

    # --- writing -----------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | PathLike[str], spec: DatasetSpec) -> Dataset:
        """Create the folder layout and ``dataset.json`` (rewrite it when the count is known)."""
        root = Path(root)
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        (root / "labelsTr").mkdir(parents=True, exist_ok=True)
        write_spec(root, spec)
        return cls(root, spec)

    def write_image(
        self, case: str, array: np.ndarray, *, reference: Volume | None = None,
        affine: np.ndarray | None = None, split: str = "Tr",
    ) -> Path:
        """Write ``images{split}/{case}_0000`` with the geometry of ``reference`` or ``affine``."""
        return write_volume(self.image_path(case, split), array, reference=reference, affine=affine)

    def write_label(
        self, case: str, array: np.ndarray, *, reference: Volume | None = None,
        affine: np.ndarray | None = None, split: str = "Tr", full: bool = False,
    ) -> Path:
        """Write ``labels{split}[_full]/{case}`` as an integer label map."""
        return write_volume(
            self.label_path(case, split, full=full), array, reference=reference, affine=affine, is_label=True
        )

    def with_spec(self, spec: DatasetSpec) -> Dataset:
        """Rewrite ``dataset.json`` and return the updated dataset."""
        write_spec(self.root, spec)
        return Dataset(self.root, spec)


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def list_cases(images_dir: str | PathLike[str], file_ending: str = ".nii.gz") -> list[str]:
    """Case ids of ``{case}_0000{file_ending}`` files in a folder (temporaries skipped)."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        return []
    suffix = CHANNEL_SUFFIX + file_ending
    return sorted(
        p.name[: -len(suffix)]
        for p in images_dir.iterdir()
        if p.name.endswith(suffix) and not p.name.startswith((TMP_PREFIX, "."))
    )
