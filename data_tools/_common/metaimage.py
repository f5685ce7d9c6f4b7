"""MetaImage (``.mhd`` + ``.raw``, or ``.mha``) reading and writing, without ITK.

A MetaImage is a text header of ``Key = Value`` lines followed by (``.mha``, ``ElementDataFile
= LOCAL``) or pointing to (``.mhd``, ``ElementDataFile = name.raw``) the voxels, x fastest::

    ObjectType = Image
    NDims = 3
    DimSize = 549 778 18                  x (columns), y (rows), z (here: frames)
    ElementSpacing = 0.154 0.154 1
    ElementType = MET_UCHAR
    BinaryDataByteOrderMSB = False
    Offset = 0 0 0                        (also Origin, Position)
    TransformMatrix = 1 0 0 0 1 0 0 0 1   (also Rotation, Orientation)
    ElementDataFile = patient0001_2CH_half_sequence.raw

Read as ITK reads it: ``array[x, y, z]`` (the axis order of ``DimSize``; the same array that
nibabel gives for the NIfTI file SimpleITK would write), physical points in ITK's LPS
millimetres ``Offset + D @ (ElementSpacing * index)``, where the direction ``D`` has the
TransformMatrix values as its *columns* (MetaIO writes the matrix column after column).
:attr:`MetaImage.affine` turns that into the RAS+ voxel-to-world affine of NIfTI (x and y
negated), so that a converted volume overlays the NIfTI that ITK would have written.

Supported: element types MET_CHAR/UCHAR/SHORT/USHORT/INT/UINT/LONG/ULONG (32 bit, as in MetaIO)/
LONG_LONG/ULONG_LONG/FLOAT/DOUBLE, either byte order (``BinaryDataByteOrderMSB``, alias
``ElementByteOrderMSB``), zlib ``CompressedData``, ``HeaderSize`` (bytes to skip in the data
file, -1: the data are its last bytes). Refused with the file named: ASCII data, several channels
per voxel, data file lists or patterns, a data file missing or of the wrong length (a wrong
DimSize or ElementType), malformed values. ``AnatomicalOrientation`` is ignored, as ITK ignores
it on reading (the TransformMatrix is the geometry).

Only the standard library is imported at module level (see :mod:`data_tools._common`).
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jointreg.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

# MetaIO element type -> numpy type code (without byte order). MET_LONG is 32 bit in MetaIO.
ELEMENT_TYPES = {
    "MET_CHAR": "i1", "MET_UCHAR": "u1", "MET_SHORT": "i2", "MET_USHORT": "u2",
    "MET_INT": "i4", "MET_UINT": "u4", "MET_LONG": "i4", "MET_ULONG": "u4",
    "MET_LONG_LONG": "i8", "MET_ULONG_LONG": "u8", "MET_FLOAT": "f4", "MET_DOUBLE": "f8",
}
# numpy type code -> the name written (the first MetaIO name of each type).
_WRITE_TYPES = {
    "i1": "MET_CHAR", "u1": "MET_UCHAR", "i2": "MET_SHORT", "u2": "MET_USHORT", "i4": "MET_INT",
    "u4": "MET_UINT", "i8": "MET_LONG_LONG", "u8": "MET_ULONG_LONG", "f4": "MET_FLOAT", "f8": "MET_DOUBLE",
}
_ALIASES = {
    "Origin": "Offset", "Position": "Offset", "Rotation": "TransformMatrix", "Orientation": "TransformMatrix",
    "ElementByteOrderMSB": "BinaryDataByteOrderMSB",
}
# A header longer than this is not a MetaImage header (the data follow it in .mha files).
_MAX_HEADER_BYTES = 1 << 16


@dataclass(frozen=True, eq=False)
class MetaImage:
    """A MetaImage's voxels and geometry.

    Attributes:
        array: ``(X, Y[, Z, ...])`` in the axis order of ``DimSize``, native byte order, the
            element type's dtype.
        spacing: ``ElementSpacing`` per axis (mm for spatial axes).
        offset: ``Offset``, LPS millimetres of voxel 0.
        direction: ``(N, N)`` direction cosines, column ``k`` the LPS direction of axis ``k``.
        element_type: e.g. ``MET_UCHAR``.
        header: every header field as read (aliases resolved), values as text.
        path: the header file.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    offset: tuple[float, ...]
    direction: np.ndarray
    element_type: str
    header: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    @property
    def affine(self) -> np.ndarray:
        """4×4 voxel-to-RAS+ affine (mm) of the first three axes, as NIfTI stores it.

        A 2D image gets a third axis of unit spacing along the slice normal.
        """
        import numpy as np

        n = min(self.array.ndim, 3)
        lps = np.eye(4)
        lps[:n, :n] = self.direction[:n, :n] * np.asarray(self.spacing[:n], dtype=np.float64)
        lps[:n, 3] = self.offset[:n]
        # ITK's physical space is LPS; NIfTI's is RAS.
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, str], int]:
    """The header fields of a MetaImage (aliases resolved) and the byte where it ends.

    Raises:
        InputError: missing file, a line that is not ``Key = Value``, no ``ElementDataFile``
            (which must be the last field), a header that is not text.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found" if not path.exists() else "is not a file")
    fields: dict[str, str] = {}
    with path.open("rb") as handle:
        number = 0
        while "ElementDataFile" not in fields:
            raw = handle.readline(_MAX_HEADER_BYTES)
            number += 1
            if not raw:
                raise InputError(path, "MetaImage header has no 'ElementDataFile =' line (it must be the last field)")
            if handle.tell() > _MAX_HEADER_BYTES:
                raise InputError(path, f"no MetaImage header: no 'ElementDataFile =' line in the first {_MAX_HEADER_BYTES} bytes")
            try:
                line = raw.decode("ascii").strip()
            except UnicodeDecodeError:
                raise InputError(path, f"line {number} of the MetaImage header is not text") from None
            if not line:
                continue
            key, sep, value = line.partition("=")
            if not sep or not key.strip():
                raise InputError(path, f"line {number} of the MetaImage header is not 'Key = Value': {line[:60]!r}")
            key = key.strip()
            fields[_ALIASES.get(key, key)] = value.strip()
        end = handle.tell()
    return fields, end


def read_metaimage(path: str | os.PathLike[str]) -> MetaImage:
    """Read a ``.mhd``/``.raw`` pair or a ``.mha`` file (see the module docstring).

    Raises:
        InputError: naming the header (or data) file and the problem.
    """
    import numpy as np

    from jointreg.data.nifti import MAX_VOXELS

    path = Path(path)
    fields, header_end = read_header(path)
    if fields.get("ObjectType", "Image") != "Image":
        raise InputError(path, f"ObjectType is {fields['ObjectType']!r}, not an Image")
    ndims = _integers(path, fields, "NDims", count=1)[0]
    if not 1 <= ndims <= 16:
        raise InputError(path, f"NDims {ndims} is not a number of dimensions")
    dims = _integers(path, fields, "DimSize", count=ndims)
    if min(dims) < 1:
        raise InputError(path, f"DimSize {' '.join(map(str, dims))} must be positive")
    voxels = math.prod(dims)
    if voxels > MAX_VOXELS:
        raise InputError(path, f"DimSize declares {voxels:,} voxels, more than the {MAX_VOXELS:,} jointreg reads")
    spacing = _reals(path, fields, "ElementSpacing", ndims, default=1.0)
    if any(not s > 0 for s in spacing):
        raise InputError(path, f"ElementSpacing {fields['ElementSpacing']} must be positive")
    offset = _reals(path, fields, "Offset", ndims, default=0.0)
    matrix = _reals(path, fields, "TransformMatrix", ndims * ndims, default=None)
    direction = np.eye(ndims) if matrix is None else np.asarray(matrix, dtype=np.float64).reshape(ndims, ndims).T
    if abs(np.linalg.det(direction)) < 1e-6:
        raise InputError(path, f"TransformMatrix {fields['TransformMatrix']} is singular")
    element_type = fields.get("ElementType", "")
    if element_type not in ELEMENT_TYPES:
        raise InputError(path, f"ElementType {element_type!r} is not one of {', '.join(ELEMENT_TYPES)}")
    if _integers(path, fields, "ElementNumberOfChannels", count=1, default=1)[0] != 1:
        raise InputError(path, f"{fields['ElementNumberOfChannels']} channels per voxel; jointreg reads one intensity per voxel")
    if not _flag(path, fields, "BinaryData", default=True):
        raise InputError(path, "ASCII voxel data (BinaryData = False) is not supported")
    msb = _flag(path, fields, "BinaryDataByteOrderMSB", default=False)
    dtype = np.dtype((">" if msb else "<") + ELEMENT_TYPES[element_type])
    payload = _read_payload(path, fields, header_end, voxels * dtype.itemsize, dims, element_type)
    flat = np.frombuffer(payload, dtype=dtype, count=voxels)
    # The file holds x fastest: C order over the reversed DimSize, then the axes reversed.
    array = flat.reshape(dims[::-1]).transpose().astype(dtype.newbyteorder("="), order="C")
    return MetaImage(array, spacing, offset, direction, element_type, fields, path)


def _read_payload(path: Path, fields: dict[str, str], header_end: int, needed: int, dims: list[int], element_type: str) -> bytes:
    """The voxel bytes, decompressed, exactly ``needed`` of them."""
    name = fields["ElementDataFile"]
    if name == "LOCAL":
        source, start = path, header_end
    else:
        if name.upper().startswith("LIST") or "%" in name:
            raise InputError(path, f"ElementDataFile {name!r}: data split over several files is not supported")
        source = (path.parent / name) if not os.path.isabs(name) else Path(name)
        if not source.is_file():
            raise InputError(path, f"its data file {name} (ElementDataFile) is not found at {source}")
        start = 0
    skip = _integers(path, fields, "HeaderSize", count=1, default=0)[0] if name != "LOCAL" else 0
    size = source.stat().st_size
    shape = f"DimSize {' x '.join(map(str, dims))} of {element_type}"
    # Named from the header, whose DimSize or ElementType is the likely fault.
    holds = "it holds" if name == "LOCAL" else f"its data file {source.name} holds"
    with source.open("rb") as handle:
        if _flag(path, fields, "CompressedData", default=False):
            handle.seek(start + max(skip, 0))
            try:
                data = zlib.decompress(handle.read())
            except zlib.error as exc:
                raise InputError(source, f"compressed voxel data is corrupt ({exc})") from None
            if len(data) != needed:
                raise InputError(path, f"{holds} {len(data)} bytes once decompressed but {shape} needs {needed} (wrong DimSize or ElementType?)")
            return data
        if skip == -1:  # MetaIO: the voxels are the last bytes of the file
            skip = max(0, size - start - needed)
        elif skip < 0:
            raise InputError(path, f"HeaderSize {skip} must be -1 or at least 0")
        available = size - start - skip
        if available != needed:
            what = "truncated" if available < needed else "longer than the header says"
            raise InputError(
                path, f"{holds} {max(available, 0)} bytes of voxel data but {shape} needs {needed}: "
                f"{what} (wrong DimSize or ElementType?)"
            )
        handle.seek(start + skip)
        return handle.read(needed)


def _values(path: Path, fields: dict[str, str], key: str, count: int) -> list[str] | None:
    if key not in fields:
        return None
    values = fields[key].split()
    if len(values) != count:
        raise InputError(path, f"{key} = {fields[key]} should hold {count} value(s)")
    return values


def _integers(path: Path, fields: dict[str, str], key: str, *, count: int, default: int | None = None) -> list[int]:
    values = _values(path, fields, key, count)
    if values is None:
        if default is None:
            raise InputError(path, f"MetaImage header has no '{key} =' line")
        return [default] * count
    try:
        return [int(v) for v in values]
    except ValueError:
        raise InputError(path, f"{key} = {fields[key]} is not {'a whole number' if count == 1 else 'whole numbers'}") from None


def _reals(path: Path, fields: dict[str, str], key: str, count: int, *, default: float | None) -> tuple[float, ...] | None:
    values = _values(path, fields, key, count)
    if values is None:
        return None if default is None else (float(default),) * count
    try:
        numbers = tuple(float(v) for v in values)
    except ValueError:
        raise InputError(path, f"{key} = {fields[key]} is not numbers") from None
    if not all(math.isfinite(v) for v in numbers):
        raise InputError(path, f"{key} = {fields[key]} must be finite")
    return numbers


def _flag(path: Path, fields: dict[str, str], key: str, *, default: bool) -> bool:
    if key not in fields:
        return default
    value = fields[key].lower()
    if value not in ("true", "false", "1", "0"):
        raise InputError(path, f"{key} = {fields[key]} is not True or False")
    return value in ("true", "1")


def write_metaimage(
    path: str | os.PathLike[str],
    array: np.ndarray,
    *,
    spacing: tuple[float, ...] | None = None,
    offset: tuple[float, ...] | None = None,
    direction: np.ndarray | None = None,
    msb: bool = False,
    compressed: bool = False,
    data_file: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``array`` (``(X, Y[, Z])``) as a MetaImage, each file atomically, data first.

    Args:
        path: ``.mhd`` (data in ``data_file``, default the same stem with ``.raw``/``.zraw``) or
            ``.mha`` (data after the header).
        spacing, offset, direction: as :class:`MetaImage` (defaults 1, 0, identity).
        msb: big-endian data.
        compressed: zlib-compress the data.
        data_file: name of the data file next to an ``.mhd``.
        extra: more header fields, written before ``ElementDataFile``.

    Raises:
        ValueError: an array type MetaImage cannot hold.
    """
    import numpy as np

    from jointreg.utils.atomic import atomic_path

    path = Path(path)
    array = np.asarray(array)
    code = f"{array.dtype.kind}{array.dtype.itemsize}"
    if code not in _WRITE_TYPES:
        raise ValueError(f"MetaImage cannot store {array.dtype}")
    ndims = array.ndim
    matrix = np.eye(ndims) if direction is None else np.asarray(direction, dtype=np.float64)
    data = np.ascontiguousarray(array.transpose()).astype(array.dtype.newbyteorder(">" if msb else "<")).tobytes()
    if compressed:
        data = zlib.compress(data)
    local = path.suffix.lower() == ".mha"
    name = "LOCAL" if local else (data_file or path.with_suffix(".zraw" if compressed else ".raw").name)
    lines = {
        "ObjectType": "Image",
        "NDims": str(ndims),
        "BinaryData": "True",
        "BinaryDataByteOrderMSB": str(bool(msb)),
        "CompressedData": str(bool(compressed)),
        **({"CompressedDataSize": str(len(data))} if compressed else {}),
        "TransformMatrix": " ".join(f"{v:g}" for v in matrix.T.ravel()),
        "Offset": " ".join(f"{v:g}" for v in (offset or (0.0,) * ndims)),
        "ElementSpacing": " ".join(f"{v:g}" for v in (spacing or (1.0,) * ndims)),
        "DimSize": " ".join(str(n) for n in array.shape),
        "ElementType": _WRITE_TYPES[code],
        **{str(k): str(v) for k, v in (extra or {}).items()},
        "ElementDataFile": name,
    }
    header = "".join(f"{k} = {v}\n" for k, v in lines.items()).encode("ascii")
    if not local:
        with atomic_path(path.parent / name) as tmp:
            tmp.write_bytes(data)
    with atomic_path(path) as tmp:
        tmp.write_bytes(header + data if local else header)
    return path
