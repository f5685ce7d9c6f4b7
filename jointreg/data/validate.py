"""Check a dataset folder against the data contract and collect every problem.

:func:`validate_dataset` never stops at the first problem: it reports, per file, everything
that would make training, evaluation or nnU-Net fail later (missing or unpaired files,
unreadable or truncated NIfTI, content the reader refuses (colour, complex or unknown datatypes,
zero or non-finite voxel spacing, scaled label maps; :mod:`jointreg.data.nifti`), non-3D arrays,
image/label shape or affine mismatches, NaN intensities, label values not declared in
``dataset.json``, a wrong ``numTraining``, label ids with gaps, which nnU-Net refuses, files
longer than their header says, whose voxels would be misread), and
summarises what it read (cases per split, voxels per class, slices per annotation status along
the through-plane axis, spacing range).

Problems make the dataset unusable as it is (``jointreg validate`` exits with code 2);
warnings are worth knowing but legal, e.g. a case whose label is ``ignore`` everywhere, which a
sparse dataset uses for an unlabelled volume, or an image whose header scales its stored values
(``scl_slope``/``scl_inter``): the intensities jointreg trains on are the scaled ones, as in
nibabel, ITK and nnU-Net, and the warning says so, so that a changed scaling is noticed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from jointreg.data.dataset import CHANNEL_SUFFIX, SPLITS, DatasetSpec, read_spec, undeclared_values
from jointreg.data.nifti import NIFTI_SUFFIXES, Volume, read_image, read_label, same_geometry, header_fixes, trailing_bytes
from jointreg.data.slices import SliceStatus, stack_status, through_plane_axis
from jointreg.errors import InputError
from jointreg.utils.atomic import TMP_PREFIX

GEOMETRY_ATOL_MM = 1e-3


@dataclass
class ValidationReport:
    """The outcome of :func:`validate_dataset`.

    Attributes:
        root: the dataset folder.
        problems: ``(path, message)`` for everything that makes the dataset unusable.
        warnings: ``(path, message)`` for legal but notable findings.
        summary: counts gathered while reading (see :func:`validate_dataset`).
    """

    root: Path
    problems: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, path: str | PathLike[str] | None, message: str) -> None:
        self.problems.append((str(path if path is not None else self.root), message))

    def warn(self, path: str | PathLike[str] | None, message: str) -> None:
        self.warnings.append((str(path if path is not None else self.root), message))

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "ok": self.ok,
            "problems": [{"path": p, "message": m} for p, m in self.problems],
            "warnings": [{"path": p, "message": m} for p, m in self.warnings],
            "summary": self.summary,
        }

    def format_summary(self) -> str:
        """A few human-readable lines (the CLI prints them on stdout)."""
        s = self.summary
        lines = [f"{self.root}: {s.get('name') or 'dataset'}, modality {s.get('modality') or '?'}"]
        for split, counts in s.get("cases", {}).items():
            lines.append(f"  {split}: {counts['images']} image(s), {counts['labels']} label(s)")
            status = s.get("slices_per_status", {}).get(split)
            if status and any(status.values()):
                lines.append("      slices: " + ", ".join(f"{n} {k}" for k, n in status.items()))
            voxels = s.get("voxels_per_class", {}).get(split)
            if voxels:
                lines.append("      voxels: " + ", ".join(f"{k} {n}" for k, n in voxels.items()))
        spacing = s.get("spacing_mm")
        if spacing:
            ranges = " x ".join(f"{lo:g}-{hi:g}" if lo != hi else f"{lo:g}" for lo, hi in zip(spacing["min"], spacing["max"]))
            lines.append(f"  spacing: {ranges} mm")
        verdict = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        if self.warnings:
            verdict += f", {len(self.warnings)} warning(s)"
        lines.append(f"  {verdict}")
        return "\n".join(lines)


def validate_dataset(root: str | PathLike[str], *, atol: float = GEOMETRY_ATOL_MM) -> ValidationReport:
    """Check every file of a dataset folder.

    Args:
        root: the dataset folder (canonical layout, see :mod:`jointreg.data.dataset`).
        atol: largest accepted difference between image and label affines, millimetres.

    Returns:
        A :class:`ValidationReport`. ``summary`` holds ``name``, ``modality``, ``labels``,
        ``cases`` (per split: images, labels), ``voxels_per_class`` (per split: class name ->
        voxel count, ``ignore`` included), ``slices_per_status`` (per split: status -> number
        of slices cut along each volume's through-plane axis), ``through_plane_axes`` (axis ->
        number of volumes), ``spacing_mm`` and ``shape`` (per-axis ``min`` and ``max``).
    """
    root = Path(root)
    report = ValidationReport(root)
    if not root.exists():
        report.problem(root, "dataset folder not found")
        return report
    if not root.is_dir():
        report.problem(root, "not a folder")
        return report
    if not any(p for p in root.iterdir() if not p.name.startswith(".")):
        report.problem(root, "folder is empty (expected dataset.json, imagesTr/ and labelsTr/)")
        return report

    spec: DatasetSpec | None = None
    try:
        spec = read_spec(root)
    except InputError as exc:
        report.problem(exc.path, exc.problem)
    if spec is not None:
        _check_consecutive(root / "dataset.json", spec, report)
    checker = _Checker(root, spec, report, atol)
    if not (root / "imagesTr").is_dir():
        report.problem(root / "imagesTr", "folder not found (training images go in imagesTr/CASE_0000.nii.gz)")
    counts = {split: checker.check_split(split) for split in SPLITS}
    num_training = counts["Tr"]
    if (root / "imagesTr").is_dir() and num_training == 0:
        report.problem(root / "imagesTr", f"no training cases (expected files named CASE{CHANNEL_SUFFIX}{checker.ending})")
    if spec is not None and spec.num_training != num_training:
        report.problem(
            root / "dataset.json",
            f"numTraining is {spec.num_training} but imagesTr holds {num_training} case(s) "
            f"(nnU-Net refuses such datasets: set numTraining to {num_training})",
        )
    report.summary = checker.summary()
    return report


class _Checker:
    """Per-file checks and the running summary (one instance per validation)."""

    def __init__(self, root: Path, spec: DatasetSpec | None, report: ValidationReport, atol: float):
        self.root, self.spec, self.report, self.atol = root, spec, report, atol
        self.ending = spec.file_ending if spec is not None else ".nii.gz"
        self.ignore = spec.ignore_label if spec is not None else None
        self.id_to_name = {int(v): n for n, v in spec.labels.items()} if spec is not None else {}
        self.cases: dict[str, dict[str, int]] = {}
        self.voxels: dict[str, Counter[int]] = {}
        self.status: dict[str, Counter[str]] = {}
        self.axes: Counter[int] = Counter()
        self.spacings: list[tuple[float, ...]] = []
        self.shapes: list[tuple[int, ...]] = []

    # --- folder listing ----------------------------------------------------------------
    def _list(self, folder: Path, suffix: str) -> dict[str, Path]:
        """Case id -> file for ``{case}{suffix}`` files; reports files that do not fit."""
        found: dict[str, Path] = {}
        for path in sorted(folder.iterdir()):
            name = path.name
            if name.startswith((TMP_PREFIX, ".")):
                continue
            if name.endswith(suffix):  # a folder with this name is reported by the reader
                found[name[: -len(suffix)]] = path
            elif path.is_dir():
                self.report.warn(path, "unexpected folder, ignored")
            elif folder.name.startswith("images") and _is_other_channel(name, self.ending):
                self.report.problem(path, "only single-channel datasets are supported (found a second channel)")
            elif name.endswith(NIFTI_SUFFIXES):
                self.report.problem(path, f"file name does not fit the layout (expected CASE{suffix})")
            else:
                self.report.warn(path, "not a NIfTI file, ignored")
        return found

    def check_split(self, split: str) -> int:
        images_dir = self.root / f"images{split}"
        labels_dir = self.root / f"labels{split}"
        full_dir = self.root / f"labels{split}_full"
        if not images_dir.is_dir():
            for folder in (labels_dir, full_dir):
                if folder.is_dir():
                    self.report.problem(folder, f"folder without images{split}/")
            return 0
        images = self._list(images_dir, CHANNEL_SUFFIX + self.ending)
        labels = self._list(labels_dir, self.ending) if labels_dir.is_dir() else {}
        full = self._list(full_dir, self.ending) if full_dir.is_dir() else {}
        if split == "Tr" and not labels_dir.is_dir() and images:
            self.report.problem(labels_dir, "folder not found (training labels go in labelsTr/CASE.nii.gz)")
        labels_expected = split == "Tr" or labels_dir.is_dir()
        for case in sorted(set(labels) - set(images)):
            self.report.problem(labels[case], f"label without image (expected {images_dir.name}/{case}{CHANNEL_SUFFIX}{self.ending})")
        for case in sorted(set(full) - set(images)):
            self.report.problem(full[case], f"full label without image (expected {images_dir.name}/{case}{CHANNEL_SUFFIX}{self.ending})")
        self.cases[split] = {"images": len(images), "labels": len(set(labels) & set(images))}
        self.voxels[split] = Counter()
        self.status[split] = Counter({s.value: 0 for s in SliceStatus})
        for case in sorted(images):
            label_path = labels.get(case)
            if label_path is None and labels_expected and labels_dir.is_dir():
                self.report.problem(images[case], f"no label file (expected {labels_dir.name}/{case}{self.ending})")
            self._check_case(split, images[case], label_path, full.get(case))
        return len(images)

    # --- one case ----------------------------------------------------------------------
    def _read(self, reader: Any, path: Path) -> Volume | None:
        try:
            volume = reader(path)
        except InputError as exc:
            self.report.problem(exc.path, exc.problem)
            return None
        extra = trailing_bytes(volume)
        if extra:
            self.report.problem(
                path, f"{extra:,} byte(s) follow the voxel data that the header declares (dim "
                f"{list(volume.header.get_data_shape())}, {volume.header.get_data_dtype()}): the header does not "
                "describe this file (a damaged dim, datatype or vox_offset), so its voxels would be misread; "
                "fix the header or export the image again"
            )
            return None
        for fix in header_fixes(path):
            self.report.warn(path, f"invalid header field, changed by nibabel on reading (other readers may differ): {fix}")
        return volume

    def _check_case(self, split: str, image_path: Path, label_path: Path | None, full_path: Path | None) -> None:
        image = self._read(read_image, image_path)  # refuses degenerate affines itself
        if image is not None:
            self.spacings.append(image.spacing)
            self.shapes.append(image.shape)
            if image.scaling is not None:
                slope, inter = image.scaling
                self.report.warn(
                    image_path, f"intensities are scaled on reading: value = {slope:g} x stored + {inter:g} "
                    "(scl_slope, scl_inter; applied as nibabel, ITK and nnU-Net apply it)"
                )
        label = self._read(read_label, label_path) if label_path is not None else None
        counts: dict[int, int] = {}
        if label is not None:
            counts = _value_counts(label.array)
            if not self._check_label(label, image, counts):
                label = None
        if full_path is not None:
            full = self._read(read_label, full_path)
            if full is not None:
                self._check_full_label(full, image, label)
        if label is not None:
            self._count(split, label, image, counts)

    def _check_label(self, label: Volume, image: Volume | None, counts: dict[int, int]) -> bool:
        """Geometry and values; ``True`` when the label is usable for the summary."""
        usable = True
        if image is not None:
            reason = same_geometry(image, label, atol=self.atol)
            if reason is not None:
                self.report.problem(label.path, f"label {reason} of image {image.path.name}")
                usable = False
        values = sorted(counts)
        if self.spec is not None:
            problem = undeclared_values(values, self.spec.labels)
            if problem:
                self.report.problem(label.path, f"{problem} of dataset.json")
                usable = False
        if self.ignore is not None and set(values) <= {self.ignore}:
            self.report.warn(label.path, "every voxel is 'ignore' (no annotation): the case only counts as unlabelled")
        return usable

    def _check_full_label(self, full: Volume, image: Volume | None, label: Volume | None) -> None:
        if image is not None:
            reason = same_geometry(image, full, atol=self.atol)
            if reason is not None:
                self.report.problem(full.path, f"full label {reason} of image {image.path.name}")
                return
        if self.spec is not None:
            problem = undeclared_values(_value_counts(full.array), self.spec.labels)
            if problem:
                self.report.problem(full.path, f"{problem} of dataset.json")
                return
        if label is not None and label.shape == full.shape:
            known = label.array != self.ignore if self.ignore is not None else np.ones(label.shape, bool)
            differ = int((label.array[known] != full.array[known]).sum())
            if differ:
                self.report.problem(full.path, f"{differ} annotated voxel(s) of {label.path.name} disagree with the full label")

    def _count(self, split: str, label: Volume, image: Volume | None, counts: dict[int, int]) -> None:
        self.voxels[split].update(counts)
        spacing = image.spacing if image is not None else label.spacing
        axis = through_plane_axis(spacing)
        self.axes[axis] += 1
        for status in stack_status(np.moveaxis(label.array, axis, 0), self.ignore):
            self.status[split][status.value] += 1

    # --- summary -----------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        spec = self.spec
        result: dict[str, Any] = {
            "name": spec.name if spec is not None else "",
            "modality": spec.modality if spec is not None else "",
            "labels": dict(spec.labels) if spec is not None else {},
            "cases": self.cases,
            "voxels_per_class": {
                split: {self._name(v): int(n) for v, n in sorted(counter.items())} for split, counter in self.voxels.items()
            },
            "slices_per_status": {split: dict(counter) for split, counter in self.status.items()},
            "through_plane_axes": {str(a): n for a, n in sorted(self.axes.items())},
        }
        if self.spacings:
            spacings = np.array(self.spacings)
            result["spacing_mm"] = {"min": _rounded(spacings.min(0)), "max": _rounded(spacings.max(0))}
        if self.shapes:
            shapes = np.array(self.shapes)
            result["shape"] = {"min": shapes.min(0).tolist(), "max": shapes.max(0).tolist()}
        return result

    def _name(self, value: int) -> str:
        return self.id_to_name.get(int(value), str(int(value)))


def _check_consecutive(path: Path, spec: DatasetSpec, report: ValidationReport) -> None:
    """nnU-Net v2 refuses class ids with gaps (``ignore`` aside); jointreg itself would not
    mind (its networks number the classes they train on), so only ``validate`` says it."""
    for expected, (name, value) in enumerate(spec.class_labels.items()):
        if value != expected:
            report.problem(
                path, f"label ids are not consecutive: {name!r} has id {value}, expected {expected} "
                "(nnU-Net requires ids 0, 1, 2, ... without gaps, 'ignore' aside; renumber the labels, "
                "e.g. with jointreg prepare --map)"
            )
            return


def _is_other_channel(name: str, ending: str) -> bool:
    stem = name[: -len(ending)] if name.endswith(ending) else ""
    return len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit() and stem[-4:] != CHANNEL_SUFFIX[1:]


def _value_counts(array: np.ndarray) -> dict[int, int]:
    """Label value -> voxel count (labels are non-negative integers, see ``read_label``)."""
    flat = array.ravel()
    if flat.size and int(flat.max()) < 1 << 16:
        counts = np.bincount(flat.astype(np.int64, copy=False))
        present = np.flatnonzero(counts)
        return dict(zip(present.tolist(), counts[present].tolist()))
    values, counts = np.unique(flat, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))


def _rounded(values: Iterable[float]) -> list[float]:
    return [round(float(v), 4) for v in values]


__all__ = ["GEOMETRY_ATOL_MM", "ValidationReport", "validate_dataset"]
