"""Reading one DICOM series: headers, slice order and regularity checks, rescaled pixels."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_tools import _common
from data_tools.dicom.geometry import dicom_affine, slice_normal, stack_to_volume

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

logger = logging.getLogger(__name__)

# Files that are certainly not DICOM images (masks, notes, NIfTI next to the series).
_SKIP_SUFFIXES = {".png", ".jpg", ".jpeg", ".txt", ".json", ".csv", ".gz", ".nii", ".xml", ".md", ".zip"}
# Slice steps may differ by this much (mm + fraction of the step) before we call it a gap:
# positions are decimal strings rounded by the scanner.
_STEP_ATOL_MM = 0.01
_STEP_RTOL = 0.02


@dataclass(frozen=True)
class DicomSlice:
    """Header facts of one DICOM image file."""

    path: Path
    series_uid: str
    orientation: tuple[float, ...]
    position: tuple[float, ...]
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    instance: int | None
    modality: str
    description: str
    thickness: float | None = None


@dataclass(frozen=True)
class DicomSeries:
    """One series as a volume.

    Attributes:
        array: ``(X, Y, Z)`` float32 intensities after RescaleSlope/Intercept (HU for CT);
            axes as described in the module docstring.
        affine: 4×4 voxel-to-RAS affine in mm.
        slices: the slice headers in ``k`` order (lowest position first).
        folder: the folder the series was read from.
        modality: the DICOM Modality tag (``CT``, ``MR``, ...).
    """

    array: np.ndarray
    affine: np.ndarray
    slices: tuple[DicomSlice, ...]
    folder: Path
    modality: str

    @property
    def rows(self) -> int:
        return self.slices[0].rows

    @property
    def columns(self) -> int:
        return self.slices[0].columns


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count else None


def scan_folder(folder: Path, *, exclude: Sequence[Path] = ()) -> list[DicomSlice]:
    """Headers of every DICOM image under ``folder`` (recursively), skipping other files.

    Raises:
        InputError: no DICOM image, or an image without the geometry tags a volume needs,
            or a multi-frame file.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    from jointreg.errors import InputError

    excluded = [Path(e).resolve() for e in exclude]
    found: list[DicomSlice] = []
    skipped = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (here / d).resolve() not in excluded)
        for filename in sorted(filenames, key=_common.natural_key):
            path = here / filename
            if filename.startswith(".") or path.suffix.lower() in _SKIP_SUFFIXES or filename.upper() == "DICOMDIR":
                skipped += 1
                continue
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, AttributeError):
                skipped += 1
                continue
            if "Rows" not in ds or "Columns" not in ds:
                skipped += 1  # not an image (structured report, presentation state, ...)
                continue
            if int(ds.get("NumberOfFrames", 1) or 1) > 1:
                raise InputError(path, "multi-frame (enhanced) DICOM is not supported; convert it with dcm2niix first")
            orientation = _floats(ds.get("ImageOrientationPatient"), 6)
            position = _floats(ds.get("ImagePositionPatient"), 3)
            spacing = _floats(ds.get("PixelSpacing"), 2)
            missing = [n for n, v in (("ImageOrientationPatient", orientation), ("ImagePositionPatient", position), ("PixelSpacing", spacing)) if v is None]
            if missing:
                raise InputError(path, f"DICOM image without a usable {', '.join(missing)}; cannot place it in space")
            instance = ds.get("InstanceNumber")
            thickness = _floats([ds.get("SpacingBetweenSlices") or ds.get("SliceThickness")], 1)
            found.append(
                DicomSlice(
                    path=path,
                    series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
                    orientation=orientation,
                    position=position,
                    pixel_spacing=spacing,  # type: ignore[arg-type]
                    rows=int(ds.Rows),
                    columns=int(ds.Columns),
                    instance=int(instance) if instance not in (None, "") else None,
                    modality=str(ds.get("Modality", "") or ""),
                    description=str(ds.get("SeriesDescription", "") or ""),
                    thickness=thickness[0] if thickness else None,
                )
            )
    if not found:
        raise InputError(folder, f"no DICOM image found ({skipped} other file(s) skipped)")
    logger.debug("%s: %d DICOM image(s), %d other file(s) skipped", folder, len(found), skipped)
    return found


def check_single_series(folder: Path, slices: Sequence[DicomSlice]) -> None:
    """Refuse a folder that mixes series.

    Several SeriesInstanceUIDs are an error as soon as one of them holds two or more files.
    When every file has its own UID (some anonymisers rewrite UIDs per file, as in CHAOS) the
    UIDs carry no information and the geometry checks of :func:`order_slices` decide.

    Raises:
        InputError: naming the folder and the series found in it.
    """
    from collections import Counter

    from jointreg.errors import InputError

    counts = Counter(s.series_uid for s in slices)
    if len(counts) > 1 and max(counts.values()) > 1:
        descriptions = {s.series_uid: s.description for s in slices}
        listing = "; ".join(
            f"{uid or '(no UID)'}{' ' + repr(descriptions[uid]) if descriptions[uid] else ''}: {n} file(s)"
            for uid, n in counts.most_common()
        )
        raise InputError(folder, f"holds {len(counts)} DICOM series ({listing}); put each series in its own folder")
    if len(counts) > 1:
        logger.warning("%s: every file has its own SeriesInstanceUID; treating them as one series", folder)


def order_slices(folder: Path, slices: Sequence[DicomSlice]) -> tuple[list[DicomSlice], np.ndarray]:
    """Sort slices along the normal and check that they form one regular volume.

    Returns:
        The slices in ``k`` order and the LPS slice step vector (mm).

    Raises:
        InputError: differing orientation, pixel spacing or size; two slices at one position;
            unequal steps (a gap).
    """
    import numpy as np

    from jointreg.errors import InputError

    first = slices[0]
    for s in slices[1:]:
        if not np.allclose(s.orientation, first.orientation, atol=1e-4):
            raise InputError(folder, f"inconsistent ImageOrientationPatient: {first.path.name} {list(first.orientation)} vs {s.path.name} {list(s.orientation)} (mixed series?)")
        if (s.rows, s.columns) != (first.rows, first.columns):
            raise InputError(folder, f"images of different sizes: {first.path.name} {first.rows}x{first.columns} vs {s.path.name} {s.rows}x{s.columns} (mixed series?)")
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, atol=1e-4):
            raise InputError(folder, f"inconsistent PixelSpacing: {first.path.name} {list(first.pixel_spacing)} vs {s.path.name} {list(s.pixel_spacing)}")
    normal = slice_normal(first.orientation)
    distance = np.array([np.dot(s.position, normal) for s in slices])
    order = np.argsort(distance, kind="stable")
    ordered = [slices[i] for i in order]
    distance = distance[order]
    if len(ordered) == 1:
        thickness = abs(ordered[0].thickness or 1.0)
        logger.warning("%s: a single slice; using a slice step of %g mm", folder, thickness)
        return ordered, normal * thickness
    gaps = np.diff(distance)
    if gaps.min() < 1e-3:
        i = int(np.argmin(gaps))
        raise InputError(
            folder,
            f"{ordered[i].path.name} and {ordered[i + 1].path.name} lie at the same position "
            f"({distance[i]:.3f} mm along the normal): several series or time points in one folder?",
        )
    positions = np.array([s.position for s in ordered])
    step = (positions[-1] - positions[0]) / (len(ordered) - 1)
    tolerance = _STEP_ATOL_MM + _STEP_RTOL * float(np.linalg.norm(step))
    deviation = np.linalg.norm(np.diff(positions, axis=0) - step, axis=1)
    if deviation.max() > tolerance:
        i = int(np.argmax(deviation))
        raise InputError(
            folder,
            f"slices are not equally spaced: {float(np.median(gaps)):.3f} mm apart mostly, but "
            f"{gaps[i]:.3f} mm between {ordered[i].path.name} and {ordered[i + 1].path.name} "
            "(missing slice or mixed series?)",
        )
    return ordered, step


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (library messages may hold newlines)."""
    return " ".join(str(exc).split())


def _read_pixels(path: Path) -> np.ndarray:
    import numpy as np
    import pydicom

    from jointreg.errors import InputError

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise InputError(path, f"cannot read DICOM file ({one_line(exc)})") from None
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for undecodable pixel data
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown") if hasattr(ds, "file_meta") else "unknown"
        raise InputError(path, f"cannot decode pixel data (transfer syntax {syntax}): {one_line(exc)}") from None
    if pixels.ndim != 2:
        raise InputError(path, f"expected a single-frame greyscale image, pixel array has shape {pixels.shape}")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return (pixels.astype(np.float64) * slope + intercept).astype(np.float32)


def read_dicom_series(folder: str | Path, *, exclude: Sequence[Path] = ()) -> DicomSeries:
    """Read the one DICOM series under ``folder`` as a volume with its RAS affine.

    Args:
        folder: folder holding the series' files (searched recursively).
        exclude: subfolders to leave out (e.g. the PNG mask folder).

    Raises:
        InputError: no images, mixed series, irregular geometry, undecodable pixels.
    """
    import numpy as np

    folder = Path(folder)
    from jointreg.errors import InputError

    if not folder.is_dir():
        raise InputError(folder, "folder not found")
    slices = scan_folder(folder, exclude=exclude)
    check_single_series(folder, slices)
    ordered, step = order_slices(folder, slices)
    stack = np.stack([_read_pixels(s.path) for s in ordered])
    first = ordered[0]
    affine = dicom_affine(first.orientation, first.position, first.pixel_spacing, step, first.rows)
    return DicomSeries(stack_to_volume(stack), affine, tuple(ordered), folder, first.modality)
