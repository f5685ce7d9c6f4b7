"""The output dataset: checking the folder, writing cases, the final ``dataset.json``.

Only the standard library is imported at module level (see :mod:`data_tools._common`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_tools._common.labels import BACKGROUND, short_list, value_counts
from jointreg.errors import ConfigError, InputError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from jointreg.data.dataset import DatasetSpec
    from jointreg.data.nifti import Volume


def check_new_output(out: str | os.PathLike[str], *, overwrite: bool, inputs: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """Refuse an output folder that exists (unless ``overwrite``) or that holds an input.

    Called before any input is read, so that a mistake costs nothing.

    Raises:
        InputError: ``out`` exists without ``overwrite``, is a file, or contains an input.
    """
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise InputError(out, "exists and is not a folder")
        if not overwrite:
            raise InputError(out, "already exists; pass --overwrite to replace it")
        resolved = out.resolve()
        for item in inputs:
            source = Path(item).resolve()
            if source == resolved or resolved in source.parents:
                raise InputError(out, f"contains the input {item}; --overwrite would delete it")
    return out


@dataclass
class DatasetBuilder:
    """Writes cases into a dataset folder and keeps what ``dataset.json`` needs.

    Use it through :func:`dataset_output`. Images are stored as float32, labels as integers,
    both with the geometry of ``reference`` (NIfTI sources: header kept) or ``affine``.

    An unlabelled training case gets a label that is ``ignore`` everywhere (nnU-Net's label for
    unknown voxels, the highest id), as ``jointreg sparsify`` writes for unlabelled volumes: the
    dataset stays valid and training treats the case as unannotated. Unlabelled test cases get
    no label file.

    Attributes:
        root: the (temporary) dataset folder.
        modality: channel name for ``dataset.json`` (``CT``, ``MR``, ...); may be set after
            construction, must be set before :meth:`finish`.
        labels: class name -> id when known in advance; every written label is checked against
            it. ``None``: take the values found in the labels, named ``label_<value>``.
    """

    root: Path
    modality: str | None
    name: str
    labels: Mapping[str, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: {"Tr": 0, "Ts": 0})
    seen_values: set[int] = field(default_factory=set)
    voxels: dict[int, int] = field(default_factory=dict)
    ignore: int | None = None

    def __post_init__(self) -> None:
        from jointreg.data.dataset import Dataset

        self._dataset = Dataset.create(self.root, self._spec())

    def _spec(self) -> DatasetSpec:
        from jointreg.data.dataset import IGNORE_NAME, DatasetSpec

        if self.labels is not None:
            labels = dict(self.labels)
        else:
            labels = {BACKGROUND: 0}
            labels.update({f"label_{v}": v for v in sorted(self.seen_values) if v != 0})
        if self.ignore is not None:
            labels[IGNORE_NAME] = self.ignore
        return DatasetSpec({"0": self.modality or ""}, labels, self.counts["Tr"], name=self.name, extra=self.extra)

    def add(
        self,
        case: str,
        image: np.ndarray,
        *,
        reference: Volume | None = None,
        affine: np.ndarray | None = None,
        label: np.ndarray | None = None,
        split: str = "Tr",
        label_source: str | os.PathLike[str] | None = None,
    ) -> None:
        """Write one case.

        Args:
            case: final case id.
            image: ``(X, Y, Z)`` intensities.
            reference: volume whose affine and header to copy (or give ``affine``).
            affine: 4×4 voxel-to-RAS affine in mm when there is no reference.
            label: ``(X, Y, Z)`` class ids, or ``None`` for an unlabelled case (``ignore``
                everywhere in the training split, no label file in the test split).
            split: ``"Tr"`` or ``"Ts"``.
            label_source: the file the label came from, for error messages.

        Raises:
            InputError: label values not declared in ``labels``, or a shape mismatch.
        """
        import numpy as np

        given = label is not None
        if label is None and split == "Tr":
            if self.ignore is None:
                self.ignore = max([0, *self.seen_values, *(self.labels or {}).values()]) + 1
            label = np.full(image.shape, self.ignore, dtype=np.int16)
        if label is not None:
            if tuple(label.shape) != tuple(image.shape):
                raise InputError(label_source, f"label shape {label.shape} differs from image shape {image.shape}")
            counts = value_counts(label)
            if given:
                if self.ignore is not None and max(counts) >= self.ignore:
                    raise ValueError("a labelled case after an unlabelled one with a lower ignore id; convert them separately")
                if self.labels is not None:
                    declared = set(self.labels.values())
                    bad = [v for v in counts if v not in declared]
                    if bad:
                        raise InputError(label_source, f"label values {short_list(bad)} are not declared (declared: {sorted(declared)})")
                self.seen_values.update(counts)
            for v, c in counts.items():
                self.voxels[v] = self.voxels.get(v, 0) + c
        self._dataset.write_image(case, image, reference=reference, affine=affine if reference is None else None, split=split)
        if label is not None:
            self._dataset.write_label(case, label, reference=reference, affine=affine if reference is None else None, split=split)
        self.counts[split] += 1

    def finish(self) -> DatasetSpec:
        """Write the final ``dataset.json``; returns its spec."""
        from jointreg.data.dataset import write_spec

        if sum(self.counts.values()) == 0:
            raise InputError(None, "no case was converted")
        if not self.modality:
            raise ConfigError("a modality is needed (e.g. --modality CT or MR)")
        conversion = self.extra.setdefault("conversion", {})
        conversion["cases_per_split"] = dict(self.counts)
        if self.voxels:
            conversion["label_voxels"] = {str(v): c for v, c in sorted(self.voxels.items())}
        spec = self._spec()
        write_spec(self.root, spec)
        return spec


@contextlib.contextmanager
def dataset_output(
    out: str | os.PathLike[str],
    *,
    modality: str | None,
    name: str = "",
    labels: Mapping[str, int] | None = None,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Iterator[DatasetBuilder]:
    """Build a dataset under a temporary name; it appears at ``out`` only when complete.

    ``modality`` may be ``None`` at first (the DICOM converter learns it from the files) as
    long as it is set on the builder before the block ends.

    Example:
        >>> with dataset_output(out, modality="MR", labels=lmap.labels) as ds:   # doctest: +SKIP
        ...     ds.add("case001", image, reference=volume, label=label)
    """
    from jointreg.utils.atomic import atomic_dir

    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        builder = DatasetBuilder(tmp, modality, name or out.name, labels, dict(extra or {}))
        yield builder
        builder.finish()


def describe(out: str | os.PathLike[str]) -> str:
    """A short description of a converted dataset (from its ``dataset.json``), for the CLI."""
    from jointreg.data.dataset import read_spec

    spec = read_spec(out)
    conversion = spec.extra.get("conversion", {}) if isinstance(spec.extra, Mapping) else {}
    counts = conversion.get("cases_per_split", {"Tr": spec.num_training, "Ts": 0})
    names = {str(v): n for n, v in spec.labels.items()}
    text = (
        f"wrote {out}: {counts.get('Tr', 0)} training case(s), {counts.get('Ts', 0)} test case(s), "
        f"modality {spec.modality}, labels {dict(spec.labels)}"
    )
    voxels = conversion.get("label_voxels")
    if voxels:
        text += "\nlabelled voxels: " + ", ".join(f"{names.get(v, v)}={c}" for v, c in voxels.items())
    return text
