"""NIfTI reading and writing that keeps data and geometry together.

Images are returned as float32 arrays, labels as integer arrays; both come with the 4×4 affine
(voxel index → RAS+ millimetres) and the voxel spacing in millimetres. Writers take the geometry
(and header) of a reference volume so that outputs overlay their inputs exactly, and write
atomically (see :mod:`jointreg.utils.atomic`).

Array axes are nibabel's: ``array[i, j, k]`` is voxel ``(i, j, k)`` of the affine.

What reading does with unusual content (each case is either refused with an :class:`InputError`
naming the file, or a stated conversion):

* RGB/RGBA, complex, unknown or unreadable datatype codes: refused (there is no one real
  intensity per voxel to read, or nothing says how the bytes are meant);
* a zero, NaN or infinite voxel spacing (``pixdim``, or an sform column): refused (nibabel
  silently reads a zero ``pixdim`` as 1 mm, which would put every distance in mm off);
* more than :data:`MAX_VOXELS` voxels in the header, or a ``vox_offset`` that is not a byte
  position: refused before anything is allocated;
* header fields nibabel repairs on loading (a negative ``pixdim``, an unknown ``sform_code``,
  ...): read as nibabel repairs them, without its log lines that name no file;
  :func:`header_fixes` lists them (``jointreg validate`` warns);
* a file longer than its header declares (a damaged ``dim``, ``datatype`` or ``vox_offset``,
  which every reader silently misreads): :func:`trailing_bytes` (``jointreg validate`` refuses);
* an intensity scaling (``scl_slope``/``scl_inter``): applied to images as nibabel, ITK and
  nnU-Net apply it, and recorded in :attr:`Volume.scaling` (``jointreg validate`` reports it);
  refused for label maps, whose values are ids, not measurements; infinite values are refused;
* NaN or infinite voxel values: refused in images (unless ``check_finite=False``) and labels.
"""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np

from jointreg.errors import InputError
from jointreg.utils.atomic import atomic_path

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# 2^30 voxels: a 1024^3 volume, twice a 512 x 512 x 2000 whole-body CT (4 GB as float32).
MAX_VOXELS = 1 << 30
_NIFTI2_HEADER_BYTES = 540


TIME_SERIES_MARK = "jointreg 2D+t"
"""How the header's ``descrip`` of a 2D+t volume starts (frames along axis 2; see
:attr:`Volume.frame_axis`)."""


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D (or 2D) array with its geometry.

    Attributes:
        array: voxel data, ``(X, Y, Z)``; float32 for images, an integer type for labels.
        affine: 4×4 voxel-to-world matrix in millimetres (float64).
        header: the NIfTI header it was read with (or ``None`` for a volume built in memory);
            writers copy it so that descriptions, units and codes survive.
        path: the file it came from, for error messages.
        scaling: ``(scl_slope, scl_inter)`` applied on reading (``value = slope * stored +
            inter``), or ``None`` when the file stores its values unscaled.
    """

    array: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header | None = None
    path: Path | None = field(default=None)
    scaling: tuple[float, float] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size along each array axis in millimetres (column norms of the affine)."""
        return spacing_from_affine(self.affine, self.array.ndim)

    @property
    def frame_axis(self) -> int | None:
        """The time axis of a 2D+t volume (an echo loop as the converters write it: frames along
        axis 2, marked in the header's ``descrip``), else ``None``. Its "spacing" is a frame
        interval, not a length: distances are measured within each frame."""
        if self.header is None or self.array.ndim != 3:
            return None
        descrip = bytes(np.asarray(self.header["descrip"]).tobytes()).rstrip(b"\x00")
        return 2 if descrip.startswith(TIME_SERIES_MARK.encode("ascii")) else None

    def with_array(self, array: np.ndarray) -> Volume:
        """The same geometry around new data of the same spatial shape."""
        if tuple(array.shape[:3]) != tuple(self.array.shape[:3]):
            raise ValueError(f"shape {array.shape} does not match {self.array.shape}")
        return Volume(array, self.affine, self.header, self.path, self.scaling)


def spacing_from_affine(affine: np.ndarray, ndim: int = 3) -> tuple[float, ...]:
    """Voxel spacing (mm) of the first ``ndim`` array axes from a 4×4 affine."""
    norms = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    return tuple(float(v) for v in norms[: min(ndim, 3)])


def is_nifti(path: str | PathLike[str]) -> bool:
    return str(path).endswith(NIFTI_SUFFIXES)


def strip_nifti_suffix(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _stored_header(path: Path) -> nib.Nifti1Header | None:
    """The header exactly as stored, before nibabel's fixes (it reads a zero ``pixdim`` as 1),
    or ``None`` when the file is too short or not NIfTI (``nib.load`` then says why).

    Raises:
        InputError: a ``.gz`` file that is not gzip, or a gzip stream that ends inside the header.
    """
    try:
        with nib.openers.ImageOpener(str(path)) as handle:
            block = handle.read(_NIFTI2_HEADER_BYTES)
    except gzip.BadGzipFile:  # before OSError, its base class
        raise InputError(path, "not a readable NIfTI file: named .gz but not gzip-compressed") from None
    except (EOFError, zlib.error) as exc:  # a short file cut inside its header
        raise InputError(path, f"truncated or corrupt compressed NIfTI ({exc})") from None
    except OSError:
        return None
    sizes = {int.from_bytes(block[:4], order) for order in ("little", "big")}
    klass = nib.Nifti2Header if _NIFTI2_HEADER_BYTES in sizes else nib.Nifti1Header
    size = klass.template_dtype.itemsize
    if len(block) < size or not sizes & {348, _NIFTI2_HEADER_BYTES}:
        return None
    try:
        return klass(block[:size], check=False)
    except (ValueError, nib.spatialimages.HeaderDataError):
        return None


def _check_stored_header(path: Path, header: nib.Nifti1Header) -> None:
    """Refuse what nibabel would crash on or change without a word (see the module docstring)."""
    codes = nib.nifti1.data_type_codes
    code = int(header["datatype"])
    if code not in codes.value_set("code"):
        raise InputError(path, f"unknown NIfTI datatype code {code} (the header is damaged or not standard NIfTI)")
    dtype, label = np.dtype(codes.dtype[code]), codes.label[code]
    if dtype.fields is not None:
        raise InputError(
            path, f"colour data ({label}, datatype {code}) is not supported: jointreg reads one intensity "
            "per voxel; convert the image to greyscale"
        )
    if dtype.kind == "c" or label.startswith("complex"):
        raise InputError(
            path, f"complex-valued data ({label}, datatype {code}) is not supported: jointreg reads real "
            "intensities and would drop the imaginary part; store the magnitude as float32"
        )
    if dtype.itemsize == 0:
        raise InputError(path, f"NIfTI datatype {code} ({label}) cannot be read as voxel values")
    dims = [int(d) for d in header["dim"]]
    if not 1 <= dims[0] <= 7 or min(dims[1 : dims[0] + 1]) < 1:
        raise InputError(path, f"invalid NIfTI dimensions (dim = {dims})")
    voxels = math.prod(dims[1 : dims[0] + 1])
    if voxels > MAX_VOXELS:
        raise InputError(
            path, f"the header declares {voxels:,} voxels (dim = {dims[1 : dims[0] + 1]}), more than the "
            f"{MAX_VOXELS:,} jointreg reads"
        )
    if int(header["sform_code"]) <= 0:  # the affine comes from pixdim (qform, or the fallback)
        pixdim = [float(v) for v in header["pixdim"][1 : min(dims[0], 3) + 1]]
        for axis, value in enumerate(pixdim):
            if value == 0 or not math.isfinite(value):
                raise InputError(
                    path, f"voxel spacing along axis {axis} is {value:g} (pixdim[{axis + 1}]): a spacing must be "
                    "finite and non-zero (nibabel would read 0 as 1 mm without a word); fix the header"
                )
    # NIfTI: a slope of 0 or NaN means "unscaled"; an infinite one has no meaning (nibabel
    # ignores it, other readers would not).
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    if math.isinf(slope) or (slope != 0 and math.isfinite(slope) and math.isinf(inter)):
        raise InputError(path, f"invalid intensity scaling (scl_slope {slope:g}, scl_inter {inter:g})")
    # Where the voxels start; nibabel turns it into a C integer (and overflows on inf or 1e38).
    offset = float(header["vox_offset"])
    if not (math.isfinite(offset) and 0 <= offset < 2**62):
        raise InputError(path, f"invalid vox_offset {offset:g} (the byte where the voxel data starts)")


@contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """Silence what nibabel prints while loading a damaged header, lines on stderr that name no
    file: its log of the header fixes it makes (twice: its own handler and the root logger's;
    :func:`header_fixes` says them instead, with the file, for ``jointreg validate``) and numpy's
    warnings on NaN quaternions or zero spacings (the affine checks after loading refuse those)."""
    logger = nib.imageglobals.logger
    disabled, logger.disabled = logger.disabled, True
    try:
        with np.errstate(all="ignore"):
            yield
    finally:
        logger.disabled = disabled


def header_fixes(path: str | PathLike[str]) -> list[str]:
    """What nibabel changes in the header of ``path`` on loading, in its words (e.g.
    ``"pixdim[1,2,3] should be positive; setting to abs of pixdim values"``); empty for a valid
    header. Other readers may not make the same changes, so the geometry they see may differ."""
    stored = _stored_header(Path(path))
    if stored is None:
        return []
    return [line for line in type(stored).diagnose_binaryblock(stored.binaryblock).splitlines() if line.strip()]


def _check_affine(path: Path, affine: np.ndarray, ndim: int) -> None:
    axes = max(1, min(ndim, 3))
    spacing = np.linalg.norm(affine[:3, :axes], axis=0)
    if not np.isfinite(affine).all() or (spacing <= 0).any():
        shown = ", ".join(f"{v:g}" for v in spacing)
        raise InputError(path, f"degenerate affine: voxel spacing ({shown}) mm must be finite and positive")
    if axes == 3 and abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(path, "degenerate affine: its axes are not independent (determinant 0)")


def _load(path: Path, ndim: int | None) -> tuple[nib.Nifti1Image, np.ndarray, tuple[float, float] | None]:
    """The image, its data as stored (scaled when the header says so) and the scaling applied."""
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder, expected a NIfTI file")
    stored = _stored_header(path)
    if stored is not None:
        _check_stored_header(path, stored)
    try:
        with _quiet_nibabel():
            img = nib.load(str(path))
            # Reading the data forces decompression, which is where truncation shows.
            raw = np.asanyarray(img.dataobj)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise InputError(path, f"truncated or corrupt compressed NIfTI ({exc})") from None
    except nib.filebasedimages.ImageFileError as exc:
        raise InputError(path, f"not a readable NIfTI file ({exc})") from None
    except nib.spatialimages.HeaderDataError as exc:
        raise InputError(path, f"invalid NIfTI header ({exc})") from None
    except MemoryError:
        raise InputError(path, "not enough memory to read the voxel data") from None
    except (OSError, ValueError, OverflowError) as exc:  # OverflowError: a header value beyond C's integers
        raise InputError(path, f"cannot read NIfTI data ({exc})") from None
    if raw.dtype.fields is not None or raw.dtype.kind not in "biuf":
        raise InputError(path, f"voxel data of type {raw.dtype} cannot be read as intensities")
    slope, inter = (float(getattr(img.dataobj, name, default)) for name, default in (("slope", 1.0), ("inter", 0.0)))
    scaling = None if (slope, inter) == (1.0, 0.0) else (slope, inter)
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        img = nib.Nifti1Image(raw, img.affine)
    if ndim is not None:
        # Trailing singleton axes (X, Y, Z, 1) are common and harmless; a real 4th axis is not.
        while raw.ndim > ndim and raw.shape[-1] == 1:
            raw = raw[..., 0]
        if raw.ndim != ndim:
            raise InputError(
                path, f"expected a {ndim}D volume, found {raw.ndim}D data of shape {raw.shape}"
            )
    _check_affine(path, np.asarray(img.affine, dtype=np.float64), raw.ndim)
    return img, raw, scaling


def read_image(path: str | PathLike[str], *, ndim: int | None = 3, check_finite: bool = True) -> Volume:
    """Read an image as float32 with its geometry (scaled by ``scl_slope``/``scl_inter``).

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        ndim: required number of dimensions (``None`` accepts any).
        check_finite: raise on NaN or infinite voxels.

    Raises:
        InputError: missing, unreadable or truncated file, unsupported content (see the module
            docstring), wrong dimensionality, NaN voxels.
    """
    path = Path(path)
    img, raw, scaling = _load(path, ndim)
    # ``dataobj`` has already applied the header's scale slope/intercept. Values beyond float32
    # become infinite, which the check below reports.
    with np.errstate(over="ignore", invalid="ignore"):
        array = raw.astype(np.float32, copy=False)
    if check_finite and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        cause = f" after scaling by scl_slope {scaling[0]:g}, scl_inter {scaling[1]:g}" if scaling else ""
        raise InputError(
            path, f"{bad} voxel(s) are NaN or infinite{cause}; jointreg does not guess intensities: "
            "replace them (e.g. by the background value)"
        )
    return Volume(np.ascontiguousarray(array), np.asarray(img.affine, dtype=np.float64), img.header, path, scaling)


def read_label(path: str | PathLike[str], *, ndim: int | None = 3) -> Volume:
    """Read a label map as an integer array (int16, or int32 when values need it).

    Raises:
        InputError: as :func:`read_image`, for an intensity scaling (label values are ids: a
            scaling would change them), and for non-integer, negative or too large values.
    """
    path = Path(path)
    img, raw, scaling = _load(path, ndim)
    if scaling is not None:
        raise InputError(
            path, f"label map has an intensity scaling (scl_slope {scaling[0]:g}, scl_inter {scaling[1]:g}) "
            "that would change its label values on reading; store labels unscaled (scl_slope 1, scl_inter 0)"
        )
    if np.issubdtype(raw.dtype, np.floating):
        if not np.isfinite(raw).all():
            raise InputError(path, "label map holds NaN or infinite values")
        rounded = np.rint(raw)
        if not np.array_equal(rounded, raw):
            bad = np.unique(raw[rounded != raw])[:5]
            raise InputError(path, f"label map holds non-integer values, e.g. {bad.tolist()}")
        raw = rounded
    if raw.size and raw.min() < 0:
        raise InputError(path, f"label map holds negative values (min {raw.min()})")
    top = int(raw.max()) if raw.size else 0
    if top >= 2**31:
        raise InputError(path, f"label map holds a value too large for a label id ({top})")
    dtype = np.int16 if top < 2**15 else np.int32
    return Volume(np.ascontiguousarray(raw.astype(dtype)), np.asarray(img.affine, dtype=np.float64), img.header, path)


def _header_like(reference: Volume | None, dtype: np.dtype) -> nib.Nifti1Header | None:
    if reference is None or reference.header is None:
        return None
    header = reference.header.copy()
    header.set_data_dtype(dtype)
    # Our arrays hold final values: drop any scaling the source applied on read.
    if hasattr(header, "set_slope_inter"):
        header.set_slope_inter(1.0, 0.0)
    return header


def write_volume(
    path: str | PathLike[str],
    array: np.ndarray,
    *,
    reference: Volume | None = None,
    affine: np.ndarray | None = None,
    is_label: bool = False,
) -> Path:
    """Write ``array`` as NIfTI with the geometry of ``reference`` (or an explicit ``affine``).

    The file appears only when complete. Labels are stored as uint8 (or int16 above 255),
    images as float32.

    Args:
        path: destination ``.nii.gz`` / ``.nii``.
        array: data with the reference's spatial shape.
        reference: volume whose affine and header to copy.
        affine: explicit 4×4 affine when there is no reference.
        is_label: store as an integer label map.
    """
    path = Path(path)
    if not is_nifti(path):
        raise ValueError(f"{path}: output must end with .nii.gz or .nii")
    if reference is None and affine is None:
        raise ValueError("write_volume needs a reference volume or an affine")
    if reference is not None and tuple(array.shape[:3]) != tuple(reference.shape[:3]):
        raise ValueError(f"{path}: array shape {array.shape} does not match reference {reference.shape}")
    geometry = np.asarray(affine if affine is not None else reference.affine, dtype=np.float64)
    if is_label:
        top = int(array.max()) if array.size else 0
        dtype = np.dtype(np.uint8) if top < 256 and (array.size == 0 or array.min() >= 0) else np.dtype(np.int16)
        data = np.asarray(array).astype(dtype)
    else:
        dtype = np.dtype(np.float32)
        data = np.asarray(array, dtype=np.float32)
    header = _header_like(reference, dtype) if affine is None else None
    img = nib.Nifti1Image(data, geometry, header=header)
    img.set_data_dtype(dtype)
    # Keep both qform and sform consistent with the affine, as nnU-Net and ITK expect.
    img.set_qform(geometry, code=int(header["qform_code"]) if header is not None and int(header["qform_code"]) > 0 else 1)
    img.set_sform(geometry, code=int(header["sform_code"]) if header is not None and int(header["sform_code"]) > 0 else 1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def trailing_bytes(volume: Volume) -> int:
    """Bytes of the file ``volume`` was read from after the voxel data its header declares (0
    when the file ends where its data ends, as every writer makes it).

    More means that the header does not describe the file: a damaged ``dim``, ``datatype`` or
    ``vox_offset`` makes nibabel (and any reader) take a part of the data for all of it, without
    an error. ``jointreg validate`` reports it. A ``.gz`` file is checked by its gzip trailer
    (the uncompressed size, modulo 2^32), and decompressed only when that differs (several gzip
    members, as bgzip writes).
    """
    path = Path(volume.path)
    with _quiet_nibabel():
        proxy = nib.load(str(path)).dataobj  # where nibabel reads the voxels (header only, no data)
    end = int(proxy.offset) + math.prod(proxy.shape) * proxy.dtype.itemsize
    if not path.name.endswith(".gz"):
        return max(0, path.stat().st_size - end)
    with path.open("rb") as handle:
        handle.seek(-4, 2)
        if int.from_bytes(handle.read(4), "little") == end % 2**32:
            return 0
    extra = 0
    with nib.openers.ImageOpener(str(path)) as handle:
        handle.seek(end)
        while chunk := handle.read(1 << 20):
            extra += len(chunk)
    return extra


def same_geometry(a: Volume, b: Volume, *, atol: float = 1e-3) -> str | None:
    """``None`` when ``a`` and ``b`` share shape and affine (within ``atol`` mm), else why not."""
    if a.shape[:3] != b.shape[:3]:
        return f"shape {b.shape} differs from {a.shape}"
    diff = float(np.abs(np.asarray(a.affine) - np.asarray(b.affine)).max())
    if diff > atol:
        return f"affine differs by up to {diff:.4g} mm (tolerance {atol:g})"
    return None
