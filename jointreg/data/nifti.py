"""NIfTI reading and writing that keeps data and geometry together.

Images are returned as float32 arrays, labels as integer arrays; both come with the 4×4 affine
(voxel index → RAS+ millimetres) and the voxel spacing in millimetres. Writers take the geometry
(and header) of a reference volume so that outputs overlay their inputs exactly, and write
atomically (see :mod:`jointreg.utils.atomic`).

Array axes are nibabel's: ``array[i, j, k]`` is voxel ``(i, j, k)`` of the affine.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np

from jointreg.errors import InputError
from jointreg.utils.atomic import atomic_path

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D (or 2D) array with its geometry.

    Attributes:
        array: voxel data, ``(X, Y, Z)``; float32 for images, an integer type for labels.
        affine: 4×4 voxel-to-world matrix in millimetres (float64).
        header: the NIfTI header it was read with (or ``None`` for a volume built in memory);
            writers copy it so that descriptions, units and codes survive.
        path: the file it came from, for error messages.
    """

    array: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header | None = None
    path: Path | None = field(default=None)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size along each array axis in millimetres (column norms of the affine)."""
        return spacing_from_affine(self.affine, self.array.ndim)

    def with_array(self, array: np.ndarray) -> Volume:
        """The same geometry around new data of the same spatial shape."""
        if tuple(array.shape[:3]) != tuple(self.array.shape[:3]):
            raise ValueError(f"shape {array.shape} does not match {self.array.shape}")
        return Volume(array, self.affine, self.header, self.path)


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


def _load(path: Path, ndim: int | None) -> tuple[nib.Nifti1Image, np.ndarray]:
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder, expected a NIfTI file")
    try:
        img = nib.load(str(path))
        # Reading the data forces decompression, which is where truncation shows.
        raw = np.asanyarray(img.dataobj)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise InputError(path, f"truncated or corrupt compressed NIfTI ({exc})") from None
    except nib.filebasedimages.ImageFileError as exc:
        raise InputError(path, f"not a readable NIfTI file ({exc})") from None
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read NIfTI data ({exc})") from None
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
    return img, raw


def read_image(path: str | PathLike[str], *, ndim: int | None = 3, check_finite: bool = True) -> Volume:
    """Read an image as float32 with its geometry.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        ndim: required number of dimensions (``None`` accepts any).
        check_finite: raise on NaN or infinite voxels.

    Raises:
        InputError: missing, unreadable or truncated file, wrong dimensionality, NaN voxels.
    """
    path = Path(path)
    img, raw = _load(path, ndim)
    # ``dataobj`` has already applied the header's scale slope/intercept.
    array = raw.astype(np.float32, copy=False)
    if check_finite and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise InputError(path, f"{bad} voxel(s) are NaN or infinite")
    return Volume(np.ascontiguousarray(array), np.asarray(img.affine, dtype=np.float64), img.header, path)


def read_label(path: str | PathLike[str], *, ndim: int | None = 3) -> Volume:
    """Read a label map as an integer array (int16, or int32 when values need it).

    Raises:
        InputError: as :func:`read_image`, and for non-integer or negative label values.
    """
    path = Path(path)
    img, raw = _load(path, ndim)
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


def same_geometry(a: Volume, b: Volume, *, atol: float = 1e-3) -> str | None:
    """``None`` when ``a`` and ``b`` share shape and affine (within ``atol`` mm), else why not."""
    if a.shape[:3] != b.shape[:3]:
        return f"shape {b.shape} differs from {a.shape}"
    diff = float(np.abs(np.asarray(a.affine) - np.asarray(b.affine)).max())
    if diff > atol:
        return f"affine differs by up to {diff:.4g} mm (tolerance {atol:g})"
    return None
