"""Convert DICOM series (one folder per case, or a single series) into a dataset.

Input: --input DIR with one folder per case (the DICOM files may sit in a subfolder such as
DICOM_anon/; every file in the case folder is tried), --input 'DIR/*/SUB' for the folder SUB of
every case (the '*' is the case id; CHAOS MR: 'MR/*/T2SPIR'), or --series DIR for one series.
Files that are not DICOM images are skipped. A folder holding several series (several
SeriesInstanceUIDs) is an error: put each series in its own folder.

Geometry: slices are sorted by their position along the slice normal (ImagePositionPatient
projected on the cross product of the ImageOrientationPatient vectors), never by file name or
InstanceNumber. Intensities are rescaled with RescaleSlope/RescaleIntercept (Hounsfield units for
CT). The affine comes from ImageOrientationPatient, ImagePositionPatient and PixelSpacing, and
the slice step from the positions themselves (gantry tilt is kept as a sheared affine); DICOM's
LPS coordinates are turned into NIfTI's RAS. Unequal slice steps (a missing slice), two slices at
one position or differing orientations are errors.

Array axes, as dcm2niix writes them: i = DICOM column (left to right as displayed), j = DICOM
row counted from the bottom of the displayed image, k = slice, from the lowest position along the
normal upward. A DICOM pixel array is (rows, columns) = (y, x), so volume[i, j, k] =
pixels_k[rows - 1 - j, i]. Masks drawn on a dcm2niix conversion therefore overlay exactly.

Masks (optional):
  --masks-nifti GLOB   one NIfTI per case, '*' standing for the case folder name (a plain path
                       with --series). A mask on the same voxel grid in another axis order (e.g.
                       written by ITK) is reoriented; any other geometry is an error.
  --png-masks SUBDIR   CHAOS CT layout: one PNG per slice in CASE/SUBDIR (e.g. Ground), PNG
                       pixel (row, col) = DICOM pixel (row, col). PNG n (in natural name order)
                       belongs to DICOM file n in natural name order (--png-order name, the CHAOS
                       convention i0000,0000b.dcm <-> liver_GT_000.png), to the n-th file by
                       InstanceNumber (instance), or to the n-th slice by position (position).
  --png-label liver:1  every non-zero pixel is liver (id 1); or value maps such as
                       --png-label 63=liver:1 126=kidney_right:2 189=kidney_left:3 252=spleen:4
NIfTI masks take --map/--unmapped as paired-nifti does. Without masks the cases are unlabelled:
each training case gets a label that is "ignore" everywhere.

Examples:
  jointreg prepare dicom --input CHAOS/Train_Sets/CT --png-masks Ground --png-label liver:1 \\
      --case-prefix chaosct_ --out data/chaos_ct
  jointreg prepare dicom --input 'CHAOS/Train_Sets/MR/*/T2SPIR' --png-masks Ground \\
      --png-label 63=liver:1 126=kidney_right:2 189=kidney_left:3 252=spleen:4 --out data/chaos_mr
  jointreg prepare dicom --series ../shared/data/totalseg_ct/example_ct_dicom \\
      --masks-nifti ../shared/data/totalseg_ct/example_seg_dicom.nii.gz --map 5=liver:1 \\
      --unmapped background --out data/totalseg_liver
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_tools import _common

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

logger = logging.getLogger(__name__)

SOURCE = "dicom"
HELP = "DICOM series, one folder per case, with optional NIfTI or PNG masks (CHAOS CT layout)"

PNG_ORDERS = ("name", "instance", "position")
_SKIP_SUFFIXES = {".png", ".jpg", ".jpeg", ".txt", ".json", ".csv", ".gz", ".nii", ".xml", ".md", ".zip"}
# Slice steps may differ by this much (mm + fraction of the step) before we call it a gap:
# positions are decimal strings rounded by the scanner.
_STEP_ATOL_MM = 0.01
_STEP_RTOL = 0.02


# --------------------------------------------------------------------------------------------
# geometry (pure functions)
# --------------------------------------------------------------------------------------------
def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal of a slice from ImageOrientationPatient (row cosine × column cosine), LPS."""
    import numpy as np

    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    normal = np.cross(row, col)
    return normal / np.linalg.norm(normal)


def dicom_affine(
    orientation: Sequence[float],
    first_position: Sequence[float],
    pixel_spacing: Sequence[float],
    slice_step: Sequence[float],
    rows: int,
) -> np.ndarray:
    """Voxel-to-RAS affine (mm) of the array built by :func:`stack_to_volume`.

    Args:
        orientation: ImageOrientationPatient: direction (LPS) of increasing column index,
            then of increasing row index.
        first_position: ImagePositionPatient (LPS, mm) of the first slice's first pixel
            (top-left as displayed).
        pixel_spacing: PixelSpacing: (distance between rows, distance between columns) in mm.
        slice_step: LPS vector (mm) from one slice's position to the next one's.
        rows: number of pixel rows (the j axis is counted from the last row).

    Returns:
        4×4 float64 affine; column 0 walks along a DICOM row, column 1 up the columns
        (bottom to top as displayed), column 2 through the slices.
    """
    import numpy as np

    row_dir, col_dir = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    row_spacing, col_spacing = float(pixel_spacing[0]), float(pixel_spacing[1])
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing
    # j runs from the last DICOM row upward (dcm2niix's convention), hence the minus sign and
    # an origin at the bottom-left pixel.
    lps[:3, 1] = -col_dir * row_spacing
    lps[:3, 2] = np.asarray(slice_step, float)
    lps[:3, 3] = np.asarray(first_position, float) + (rows - 1) * col_dir * row_spacing
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def stack_to_volume(stack: np.ndarray) -> np.ndarray:
    """``(K, rows, cols)`` DICOM/PNG pixel arrays → ``(cols, rows, K)`` volume, rows reversed.

    ``volume[i, j, k] == stack[k, rows - 1 - j, i]``; pairs with :func:`dicom_affine`.
    """
    import numpy as np

    return np.ascontiguousarray(np.transpose(stack, (2, 1, 0))[:, ::-1, :])


# --------------------------------------------------------------------------------------------
# reading a series
# --------------------------------------------------------------------------------------------
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


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _read_pixels(path: Path) -> np.ndarray:
    import numpy as np
    import pydicom

    from jointreg.errors import InputError

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise InputError(path, f"cannot read DICOM file ({_one_line(exc)})") from None
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for undecodable pixel data
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown") if hasattr(ds, "file_meta") else "unknown"
        raise InputError(path, f"cannot decode pixel data (transfer syntax {syntax}): {_one_line(exc)}") from None
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


# --------------------------------------------------------------------------------------------
# masks
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PngLabels:
    """How PNG mask pixel values become class ids.

    Attributes:
        nonzero: ``(name, id)`` given to every non-zero pixel, or ``None``.
        label_map: value -> class otherwise.
    """

    nonzero: tuple[str, int] | None = None
    label_map: _common.LabelMap | None = None

    @classmethod
    def parse(cls, items: Sequence[str]) -> PngLabels:
        """``["liver:1"]`` (non-zero → liver) or ``["63=liver:1", "126=kidney_right:2", ...]``.

        Raises:
            ConfigError: empty, mixed forms, or malformed items.
        """
        from jointreg.errors import ConfigError

        items = list(items)
        if not items:
            raise ConfigError("--png-label is needed with --png-masks (e.g. --png-label liver:1)")
        if all("=" not in item for item in items):
            if len(items) != 1:
                raise ConfigError("--png-label NAME:ID takes one class (every non-zero pixel); use VALUE=NAME:ID items for several")
            return cls(nonzero=_common.parse_class(items[0]))
        if any("=" not in item for item in items):
            raise ConfigError("--png-label: use either one NAME:ID or only VALUE=NAME:ID items")
        return cls(label_map=_common.LabelMap.parse(items))

    @property
    def labels(self) -> dict[str, int]:
        if self.nonzero is not None:
            return dict(sorted({_common.BACKGROUND: 0, self.nonzero[0]: self.nonzero[1]}.items(), key=lambda kv: kv[1]))
        return self.label_map.labels  # type: ignore[union-attr]

    def apply(self, values: np.ndarray, *, unmapped: str, source: Path) -> np.ndarray:
        import numpy as np

        if self.nonzero is not None:
            return np.where(values != 0, self.nonzero[1], 0).astype(np.int16)
        return self.label_map.apply(values, unmapped=unmapped, source=source)  # type: ignore[union-attr]


def _read_png(path: Path) -> np.ndarray:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from jointreg.errors import InputError

    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            array = np.asarray(img)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(path, f"cannot read PNG ({_one_line(exc)})") from None
    if mode in ("RGB", "RGBA"):
        channels = array[..., :3]
        if not (np.array_equal(channels[..., 0], channels[..., 1]) and np.array_equal(channels[..., 0], channels[..., 2])):
            raise InputError(path, "colour PNG masks are not supported; expected greyscale values")
        array = channels[..., 0]
    elif mode not in ("L", "I", "I;16", "I;16B", "1", "P"):
        raise InputError(path, f"unsupported PNG mode {mode}")
    return np.asarray(array).astype(np.int32)


def read_png_masks(folder: str | Path, series: DicomSeries, *, order: str = "name") -> np.ndarray:
    """Stack one PNG per slice into a ``(X, Y, Z)`` array on the series' grid (raw pixel values).

    Args:
        folder: the PNG folder (e.g. ``Patient/Ground``).
        series: the series the masks belong to.
        order: how PNG n (natural name order) finds its slice: ``"name"`` → the DICOM file n in
            natural name order; ``"instance"`` → the file n by InstanceNumber; ``"position"`` →
            slice n by position (the series' k order).

    Raises:
        InputError: missing folder, a PNG count that differs from the slice count, a PNG whose
            size differs from the DICOM rows × columns.
    """
    import numpy as np

    from jointreg.errors import ConfigError, InputError

    folder = Path(folder)
    if order not in PNG_ORDERS:
        raise ConfigError(f"--png-order must be one of {PNG_ORDERS}, got {order!r}")
    if not folder.is_dir():
        raise InputError(folder, "PNG mask folder not found")
    pngs = sorted((p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".")), key=lambda p: _common.natural_key(p.name))
    slices = list(series.slices)
    if len(pngs) != len(slices):
        raise InputError(folder, f"holds {len(pngs)} PNG mask(s) but the series has {len(slices)} slice(s)")
    k_of = {s.path: k for k, s in enumerate(slices)}
    if order == "name":
        by_file = sorted(slices, key=lambda s: _common.natural_key(s.path.name))
    elif order == "instance":
        if any(s.instance is None for s in slices):
            raise InputError(series.folder, "--png-order instance needs an InstanceNumber in every file")
        by_file = sorted(slices, key=lambda s: s.instance)  # type: ignore[arg-type, return-value]
    else:
        by_file = slices
    stack = np.zeros((len(slices), series.rows, series.columns), dtype=np.int32)
    for png, dicom_slice in zip(pngs, by_file):
        pixels = _read_png(png)
        if pixels.shape != (series.rows, series.columns):
            raise InputError(png, f"PNG is {pixels.shape[0]}x{pixels.shape[1]} but the DICOM images are {series.rows}x{series.columns} (rows x columns)")
        stack[k_of[dicom_slice.path]] = pixels
    return stack_to_volume(stack)


def align_mask(mask_path: Path, series: DicomSeries, *, tolerance: float = 1e-3) -> np.ndarray:
    """Read a NIfTI mask and put it on the series' voxel grid.

    A mask with the series' shape and affine is used as is. A mask of the same grid stored in
    another axis order or direction (ITK writes rows top-down) is permuted/flipped to match.

    Raises:
        InputError: any other shape or affine, naming the mask.
    """
    import nibabel as nib
    import numpy as np

    from jointreg.data.nifti import Volume, read_label, same_geometry
    from jointreg.errors import InputError

    mask = read_label(mask_path)
    target = Volume(series.array, series.affine)
    problem = same_geometry(target, mask, atol=tolerance)
    if problem is None:
        return mask.array
    orientations = nib.orientations
    transform = orientations.ornt_transform(orientations.io_orientation(mask.affine), orientations.io_orientation(series.affine))
    array = orientations.apply_orientation(mask.array, transform)
    affine = mask.affine @ orientations.inv_ornt_aff(transform, mask.array.shape)
    if same_geometry(target, Volume(array, affine), atol=tolerance) is None:
        logger.info("%s: reoriented to the DICOM series' axes", mask_path)
        return np.ascontiguousarray(array)
    raise InputError(mask_path, f"does not fit the DICOM series in {series.folder}: {problem}")


# --------------------------------------------------------------------------------------------
# conversion
# --------------------------------------------------------------------------------------------
def find_cases(input_dir: str | Path | None, series_dir: str | Path | None, case_id: str | None = None) -> dict[str, Path]:
    """Raw case id -> series folder, from ``--input`` (one folder per case) or ``--series``.

    ``--input`` may be a glob whose ``*`` is the case id, to reach one series inside each case
    (CHAOS MR: ``MR/*/T2SPIR``).

    Raises:
        ConfigError: both or neither given.
        InputError: missing folder, or an input folder without case folders.
    """
    from jointreg.errors import ConfigError, InputError

    if (input_dir is None) == (series_dir is None):
        raise ConfigError("give --input (one folder per case) or --series (one series), not both")
    if series_dir is not None:
        series_dir = Path(series_dir)
        if not series_dir.is_dir():
            raise InputError(series_dir, "folder not found")
        return {case_id or series_dir.resolve().name: series_dir}
    if "*" in str(input_dir):
        return _common.match_glob(str(input_dir), what="input", folders=True)
    root = Path(input_dir)  # type: ignore[arg-type]
    if not root.is_dir():
        raise InputError(root, "folder not found")
    cases = {p.name: p for p in sorted(root.iterdir(), key=lambda p: _common.natural_key(p.name)) if p.is_dir() and not p.name.startswith(".")}
    if not cases:
        raise InputError(root, "holds no case folders (expected one folder per case; use --series for a single series)")
    return cases


def _mask_for(pattern: str, raw: str, single: bool) -> Path:
    from jointreg.errors import ConfigError

    if "*" in pattern:
        if pattern.count("*") != 1:
            raise ConfigError(f"--masks-nifti '{pattern}' may hold one '*' (the case folder name)")
        return Path(os.path.expanduser(pattern.replace("*", raw)))
    if not single:
        raise ConfigError("--masks-nifti needs a '*' standing for the case folder name when converting several cases")
    return Path(os.path.expanduser(pattern))


def convert_dicom(
    out: str | Path,
    *,
    input_dir: str | Path | None = None,
    series_dir: str | Path | None = None,
    case_id: str | None = None,
    modality: str | None = None,
    masks_nifti: str | None = None,
    png_masks: str | None = None,
    png_labels: PngLabels | None = None,
    png_order: str = "name",
    label_map: _common.LabelMap | None = None,
    unmapped: str = "error",
    case_prefix: str = "",
    test_cases: Sequence[str] = (),
    test_fraction: float = 0.0,
    seed: int = 0,
    name: str = "",
    tolerance: float = 1e-3,
    overwrite: bool = False,
) -> Path:
    """Convert DICOM series (with optional masks) into a canonical dataset.

    Args:
        out: dataset folder to create.
        input_dir: folder with one subfolder per case (give this or ``series_dir``).
        series_dir: a single series' folder.
        case_id: case id for ``series_dir`` (default: the folder name).
        modality: channel name; default the DICOM Modality tag (must agree across cases).
        masks_nifti: NIfTI mask path pattern, ``*`` = case folder name (plain path with
            ``series_dir``).
        png_masks: name of the PNG folder inside each case folder (CHAOS: ``Ground``).
        png_labels: how PNG values become classes (required with ``png_masks``).
        png_order: PNG ↔ slice pairing, see :func:`read_png_masks`.
        label_map: source value -> class for NIfTI masks; ``None`` keeps the values.
        unmapped: ``"error"`` or ``"background"`` for values missing from a map.
        case_prefix, test_cases, test_fraction, seed, name, overwrite: as for paired-nifti.
        tolerance: largest mask/series affine difference in mm.

    Returns:
        The dataset folder.

    Raises:
        InputError: see :func:`read_dicom_series`, :func:`read_png_masks`, :func:`align_mask`.
        ConfigError: inconsistent options.
    """
    from tqdm import tqdm

    from jointreg.errors import ConfigError, InputError

    out = Path(out)
    if masks_nifti and png_masks:
        raise ConfigError("give --masks-nifti or --png-masks, not both")
    if png_masks and png_labels is None:
        raise ConfigError("--png-masks needs --png-label (e.g. --png-label liver:1)")
    if png_labels is not None and not png_masks:
        raise ConfigError("--png-label is only used with --png-masks")
    if label_map is not None and not masks_nifti:
        raise ConfigError("--map applies to --masks-nifti; PNG masks use --png-label")
    folders = find_cases(input_dir, series_dir, case_id)
    _common.check_new_output(out, overwrite=overwrite, inputs=list(folders.values()))
    case_ids = _common.make_case_ids(folders, case_prefix)
    masks: dict[str, Path] = {}
    if masks_nifti:
        masks = {raw: _mask_for(masks_nifti, raw, series_dir is not None) for raw in folders}
        for raw, path in masks.items():
            if not path.is_file():
                raise InputError(path, f"mask of case '{raw}' not found (--masks-nifti)")
    split = _common.split_cases(list(case_ids.values()), test_cases=test_cases, test_fraction=test_fraction, seed=seed, aliases=case_ids)

    if png_labels is not None:
        declared: dict[str, int] | None = png_labels.labels
    elif label_map is not None:
        declared = label_map.labels
    elif not masks_nifti:
        declared = {_common.BACKGROUND: 0}
    else:
        declared = None
    extra = {
        "conversion": {
            "source": SOURCE,
            "label_map": label_map.to_json() if label_map else None,
            "cases": {case_ids[r]: str(p) for r, p in folders.items()},
        }
    }
    with _common.dataset_output(out, modality=modality, name=name, labels=declared, extra=extra, overwrite=overwrite) as ds:
        for raw, folder in tqdm(list(folders.items()), desc="dicom", unit="case", disable=None):
            exclude = [folder / png_masks] if png_masks else []
            series = read_dicom_series(folder, exclude=exclude)
            if modality is None:
                if ds.modality not in (None, series.modality):
                    raise ConfigError(f"cases have different DICOM modalities ({ds.modality}, {series.modality} in {folder}); pass --modality")
                if not series.modality:
                    raise InputError(folder, "the DICOM files carry no Modality tag; pass --modality")
                ds.modality = series.modality
            label = None
            label_source: Path | None = None
            if masks_nifti:
                label_source = masks[raw]
                label = align_mask(label_source, series, tolerance=tolerance)
                if label_map is not None:
                    label = label_map.apply(label, unmapped=unmapped, source=label_source)
            elif png_masks:
                label_source = folder / png_masks
                values = read_png_masks(label_source, series, order=png_order)
                label = png_labels.apply(values, unmapped=unmapped, source=label_source)  # type: ignore[union-attr]
            ds.add(case_ids[raw], series.array, affine=series.affine, label=label, split=split[case_ids[raw]], label_source=label_source)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", metavar="DIR", help="folder with one folder per case, or a glob like 'MR/*/T2SPIR' ('*' = case id)")
    source.add_argument("--series", type=Path, metavar="DIR", help="one series' folder (a single case)")
    parser.add_argument("--case-id", metavar="ID", help="case id for --series (default: the folder name)")
    masks = parser.add_mutually_exclusive_group()
    masks.add_argument("--masks-nifti", metavar="GLOB", help="NIfTI mask per case, '*' = case folder name")
    masks.add_argument("--png-masks", metavar="SUBDIR", help="folder of one PNG per slice inside each case folder (CHAOS CT: Ground)")
    parser.add_argument("--png-label", nargs="+", action="extend", default=[], metavar="[VALUE=]NAME:ID", help="PNG classes: liver:1 (non-zero = liver) or 63=liver:1 126=kidney_right:2 ...")
    parser.add_argument("--png-order", choices=PNG_ORDERS, default="name", help="PNG n <-> DICOM file n by name (default), InstanceNumber, or slice n by position")
    _common.add_label_map_arguments(parser)
    parser.add_argument("--tolerance", type=float, default=1e-3, metavar="MM", help="largest mask/series affine difference (default 0.001 mm)")
    _common.add_output_arguments(parser, modality_required=False)


def run(args: argparse.Namespace) -> int:
    out = convert_dicom(
        args.out,
        input_dir=args.input,
        series_dir=args.series,
        case_id=args.case_id,
        modality=args.modality,
        masks_nifti=args.masks_nifti,
        png_masks=args.png_masks,
        png_labels=PngLabels.parse(args.png_label) if args.png_label else None,
        png_order=args.png_order,
        label_map=_common.label_map_from_args(args),
        unmapped=args.unmapped,
        case_prefix=args.case_prefix,
        test_cases=args.test_cases,
        test_fraction=args.test_fraction,
        seed=args.seed,
        name=args.name,
        tolerance=args.tolerance,
        overwrite=args.overwrite,
    )
    print(_common.describe(out))
    return 0
