"""Masks of a DICOM series: one PNG per slice (CHAOS), or a NIfTI file on the series' grid."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from data_tools import _common
from data_tools.dicom.geometry import stack_to_volume
from data_tools.dicom.series import DicomSeries, one_line

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

logger = logging.getLogger(__name__)

# How PNG n finds its slice, see :func:`read_png_masks`.
PNG_ORDERS = ("name", "instance", "position")


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
        raise InputError(path, f"cannot read PNG ({one_line(exc)})") from None
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
    another axis order or direction (ITK writes rows top-down) is flipped/permuted into the
    series' orientation by :func:`jointreg.data.orientation.reorient` (exact, every voxel keeps
    its world position), and used when it then matches.

    Args:
        mask_path: the NIfTI mask.
        series: the series it belongs to.
        tolerance: largest affine difference (mm) that still counts as the same grid.

    Returns:
        ``(X, Y, Z)`` integer label values on the series' grid.

    Raises:
        InputError: any other shape or affine, naming the mask.
    """
    import numpy as np

    from jointreg.data.nifti import Volume, read_label, same_geometry
    from jointreg.data.orientation import reorient
    from jointreg.errors import InputError

    mask = read_label(mask_path)
    target = Volume(series.array, series.affine)
    problem = same_geometry(target, mask, atol=tolerance)
    if problem is None:
        return mask.array
    moved, _ = reorient(mask, series.affine)
    if same_geometry(target, moved, atol=tolerance) is None:
        logger.info("%s: reoriented to the DICOM series' axes", mask_path)
        return np.ascontiguousarray(moved.array)
    raise InputError(mask_path, f"does not fit the DICOM series in {series.folder}: {problem}")
