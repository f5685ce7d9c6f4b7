"""The 2D view of a dataset that every trainer uses: normalised slices on a fixed training grid.

A volume ``(X, Y, Z)`` is cut along one axis (by default the through-plane axis, the one with
the largest spacing). Each slice keeps the other two axes in their original order, so for
``axis=2`` slice ``k`` is ``volume[:, :, k]`` with shape ``(X, Y)``.

Slices are resampled onto a training grid of fixed size ``(H, W)`` by :class:`PlaneGeometry`:

* the scale is the same along both in-plane axes **in millimetres**, so training pixels are
  (almost exactly) square in mm whatever the source spacing, and it is chosen so that the whole
  source field of view fits;
* the resized slice is centred and padded. Images are padded with 0 (the bottom of the
  normalised intensity range), labels with background (0): the padding lies outside the field
  of view, where there is no anatomy. A slice with no annotation at all keeps ``ignore``
  everywhere, padding included (see :func:`slice_volume`), so that it stays unannotated.

Label maps are resampled as one-hot maps with bilinear interpolation followed by an argmax, so
that thin structures are not dropped the way nearest-neighbour resampling drops them. Shrinking
goes through exact halvings (enlarge to ``2**k`` times the target first), where ties are broken
in favour of the locally thinner structure, else in a checkerboard: a 1-pixel line survives any
shrink factor, and large regions keep their area (no class grows at another's expense).
``ignore`` is resampled as a class of its own.

Example:
    >>> spec = SliceSpec(size=(128, 128))                               # doctest: +SKIP
    >>> sliced = load_sliced_dataset(Dataset.open("data/liver"), spec)   # doctest: +SKIP
    >>> sliced[0].images.shape, sliced[0].annotated_indices              # doctest: +SKIP
    ((38, 128, 128), [17])
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import TYPE_CHECKING, Any

import numpy as np

from jointreg.data.nifti import Volume
from jointreg.errors import ConfigError, InputError

if TYPE_CHECKING:
    from jointreg.data.dataset import Dataset

logger = logging.getLogger(__name__)

NORMALIZATIONS = ("auto", "ct", "mr", "none")
KINDS = ("image", "label", "probabilities")
MIN_SIZE = 8

# Relative tolerance when comparing spacings: affine column norms of an "isotropic" volume
# differ in the last bits, and such noise must not pick the axis.
_SPACING_RTOL = 1e-3
# Slices resampled per interpolate call: bounds the one-hot memory of label maps.
_CHUNK = 16


# --------------------------------------------------------------------------------------------
# axis and status
# --------------------------------------------------------------------------------------------
def through_plane_axis(spacing: Sequence[float]) -> int:
    """The axis with the largest spacing (ties, within 0.1 %, go to the last such axis).

    Args:
        spacing: voxel size per array axis in millimetres, e.g. ``(1.25, 1.25, 7.7)``.

    Returns:
        The axis index; an isotropic volume gives the last axis (2 for 3D).
    """
    values = [float(s) for s in spacing]
    if not values:
        raise ValueError("spacing is empty")
    top = max(values)
    return max(i for i, s in enumerate(values) if s >= top * (1.0 - _SPACING_RTOL))


class SliceStatus(str, Enum):
    """What is known about a slice's labels."""

    ANNOTATED = "annotated"  # some known voxel is foreground (partly annotated counts)
    EMPTY = "empty-annotated"  # annotated, and everything annotated is background
    UNANNOTATED = "unannotated"  # no label, or every voxel is ``ignore``


def slice_status(label2d: np.ndarray | None, ignore_label: int | None) -> SliceStatus:
    """Classify one label slice.

    Args:
        label2d: integer label slice ``(h, w)``, or ``None`` when the case has no label.
        ignore_label: the ``ignore`` id, or ``None`` when the dataset has none.
    """
    if label2d is None or label2d.size == 0:
        return SliceStatus.UNANNOTATED
    known = label2d != ignore_label if ignore_label is not None else np.ones(label2d.shape, bool)
    if not known.any():
        return SliceStatus.UNANNOTATED
    return SliceStatus.ANNOTATED if (label2d[known] > 0).any() else SliceStatus.EMPTY


def stack_status(stack: np.ndarray | None, ignore_label: int | None, num_slices: int | None = None) -> tuple[SliceStatus, ...]:
    """:func:`slice_status` of every slice of a stack ``(S, h, w)`` (vectorised).

    Args:
        stack: label slices ``(S, h, w)``; ``None`` gives ``num_slices`` unannotated slices.
        ignore_label: the ``ignore`` id or ``None``.
        num_slices: the number of slices when ``stack`` is ``None``.
    """
    if stack is None:
        return (SliceStatus.UNANNOTATED,) * int(num_slices or 0)
    flat = stack.reshape(stack.shape[0], -1)
    known = flat != ignore_label if ignore_label is not None else np.ones(flat.shape, bool)
    any_known = known.any(axis=1)
    any_fg = (known & (flat > 0)).any(axis=1)
    return tuple(
        SliceStatus.UNANNOTATED if not k else SliceStatus.ANNOTATED if f else SliceStatus.EMPTY
        for k, f in zip(any_known, any_fg)
    )


# --------------------------------------------------------------------------------------------
# preprocessing spec and intensity normalisation
# --------------------------------------------------------------------------------------------
_CT_NAMES = {"ct", "cta", "cect", "ncct", "hu"}
_MR_NAMES = {
    "mr", "mri", "t1", "t2", "t1w", "t2w", "t1c", "t1ce", "t1gd", "flair", "pd", "pdw", "dwi",
    "adc", "cine", "bssfp", "ssfp", "spir", "lge", "de", "dixon", "inphase", "outphase", "swi",
    "mra", "t2spir", "t1dual", "zscore", "rescale", "rescaleto01",
}
_US_NAMES = {"us", "echo", "ultrasound", "echocardiography", "tte", "tee"}
_NONE_NAMES = {"nonorm", "none"}


def _modality_tokens(modality: str) -> set[str]:
    lowered = modality.strip().lower()
    tokens = {t for t in re.split(r"[^a-z0-9]+", lowered) if t}
    tokens.add(re.sub(r"[^a-z0-9]+", "", lowered))
    return tokens


@dataclass(frozen=True)
class SliceSpec:
    """How volumes become training slices; saved (``to_dict``) in every model folder.

    Attributes:
        axis: the slicing axis, or ``None`` for each volume's through-plane axis.
        size: training grid ``(H, W)`` in pixels; any integers >= 8.
        normalization: ``"auto"`` (from the dataset's channel name), ``"ct"``, ``"mr"`` or
            ``"none"``.
        ct_window: ``(low, high)`` Hounsfield units mapped to ``[0, 1]`` for CT.
        mr_percentiles: ``(low, high)`` percentiles of each volume mapped to ``[0, 1]`` for MR
            and other modalities without calibrated units.
    """

    axis: int | None = None
    size: tuple[int, int] = (128, 128)
    normalization: str = "auto"
    ct_window: tuple[float, float] = (-160.0, 240.0)
    mr_percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        if self.axis is not None and (isinstance(self.axis, bool) or not isinstance(self.axis, int) or not 0 <= self.axis <= 2):
            raise ConfigError(f"slice axis must be 0, 1, 2 or null, got {self.axis!r}")
        size = tuple(self.size)
        if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= MIN_SIZE for v in size):
            raise ConfigError(f"slice size must be two integers >= {MIN_SIZE}, got {self.size!r}")
        object.__setattr__(self, "size", size)
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(f"unknown normalization {self.normalization!r}; valid: {', '.join(NORMALIZATIONS)}")
        window = tuple(float(v) for v in self.ct_window)
        if len(window) != 2 or not window[0] < window[1]:
            raise ConfigError(f"ct_window must be (low, high) with low < high, got {self.ct_window!r}")
        object.__setattr__(self, "ct_window", window)
        pct = tuple(float(v) for v in self.mr_percentiles)
        if len(pct) != 2 or not 0.0 <= pct[0] < pct[1] <= 100.0:
            raise ConfigError(f"mr_percentiles must be (low, high) with 0 <= low < high <= 100, got {self.mr_percentiles!r}")
        object.__setattr__(self, "mr_percentiles", pct)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("size", "ct_window", "mr_percentiles"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SliceSpec:
        """Inverse of :meth:`to_dict` (JSON lists become tuples).

        Raises:
            ConfigError: unknown keys or invalid values.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown slice setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    def resolve_normalization(self, modality: str) -> str:
        """The normalisation to apply: ``"ct"``, ``"mr"`` or ``"none"``.

        With ``"auto"``, CT channel names give ``"ct"``; MR names (MR, MRI, T1, T2, cine, bSSFP,
        ...), ultrasound names (echo, US) and unknown names give ``"mr"`` (per-volume
        percentiles, which suit any uncalibrated intensity; unknown names log a warning);
        nnU-Net's ``noNorm`` gives ``"none"``.
        """
        if self.normalization != "auto":
            return self.normalization
        tokens = _modality_tokens(modality)
        if tokens & _NONE_NAMES:
            return "none"
        if tokens & _CT_NAMES:
            return "ct"
        if tokens & (_MR_NAMES | _US_NAMES):
            return "mr"
        logger.warning(
            "unknown modality %r: normalising intensities by per-volume percentiles %s "
            "(set normalization to 'ct', 'mr' or 'none' to choose)", modality, self.mr_percentiles,
        )
        return "mr"


def normalize_intensities(array: np.ndarray, method: str, spec: SliceSpec) -> np.ndarray:
    """Map raw intensities to float32 ``[0, 1]``.

    Args:
        array: a whole volume (any shape); for ``"mr"`` the percentiles are taken over all of
            it, so every slice of a volume shares one mapping.
        method: ``"ct"`` (clip to ``spec.ct_window`` in HU, then scale), ``"mr"`` (clip to the
            volume's ``spec.mr_percentiles``, then scale) or ``"none"`` (unchanged).
        spec: supplies the window and percentiles.

    Returns:
        float32 array of the same shape; a constant volume maps to zeros.
    """
    data = np.asarray(array, dtype=np.float32)
    if method == "none":
        return data.copy()
    if method == "ct":
        low, high = spec.ct_window
    elif method == "mr":
        if data.size == 0:
            return data.copy()
        low, high = (float(v) for v in np.percentile(data, spec.mr_percentiles))
    else:
        raise ConfigError(f"unknown normalization {method!r}; valid: ct, mr, none")
    if not high > low:
        return np.zeros_like(data)
    out = (np.clip(data, low, high) - np.float32(low)) / np.float32(high - low)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------
# in-plane resampling
# --------------------------------------------------------------------------------------------
def _resize(batch: np.ndarray, size: tuple[int, int], *, antialias: bool) -> np.ndarray:
    """Bilinear resize of ``(N, C, h, w)`` float32 to ``(N, C, *size)``, pixel areas aligned.

    ``align_corners=False`` maps the outer pixel edges onto each other, which is what keeping
    the field of view means. ``antialias`` only acts along axes that shrink.
    """
    if tuple(batch.shape[-2:]) == tuple(size):
        return np.array(batch, dtype=np.float32, copy=True)
    import torch
    import torch.nn.functional as F

    shrinks = batch.shape[-2] > size[0] or batch.shape[-1] > size[1]
    tensor = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
    out = F.interpolate(tensor, size=tuple(size), mode="bilinear", align_corners=False, antialias=antialias and shrinks)
    return out.numpy()


def _label_steps(shape: tuple[int, int], size: tuple[int, int]) -> list[tuple[int, int]]:
    """Intermediate grids for resampling labels from ``shape`` to ``size``.

    Enlarging keeps every 1-pixel structure (some sample lies within half a pixel of it, so its
    one-hot weight is >= 0.5), and so does exact halving (each sample averages a 2 × 2 block,
    and a 1- or 2-pixel line covering half of it wins the tie, see :func:`_thinness`). Any shrink
    is therefore done as "enlarge to 2**k times the target, then halve k times".
    """
    if all(n <= t for n, t in zip(shape, size)):
        return [tuple(size)]
    doubled = tuple(2 * t if n > t else t for n, t in zip(shape, size))
    if doubled == tuple(shape):
        return [tuple(size)]
    return [*_label_steps(shape, doubled), tuple(size)]  # type: ignore[list-item]


_RUN_CAP = 4


def _thinness(index: np.ndarray) -> np.ndarray:
    """``(N, h, w)`` float32 in ``[1/4, 1]``: 1 / the pixel's class run length (capped at 4).

    The run length is the number of consecutive pixels of the same class through the pixel,
    along whichever axis is shorter: 1 for a 1-pixel line, 2 for a 2-pixel one, >= 4 for the
    inside and the straight boundaries of large regions. Grid borders continue the run.
    """
    pad = _RUN_CAP - 1
    padded = np.pad(index, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    h, w = index.shape[1:]
    shortest = np.full(index.shape, _RUN_CAP, dtype=np.int16)
    for axis in (1, 2):
        run = np.ones(index.shape, dtype=np.int16)
        for direction in (-1, 1):
            same = np.ones(index.shape, dtype=bool)
            for k in range(1, _RUN_CAP):
                dy, dx = (direction * k, 0) if axis == 1 else (0, direction * k)
                same &= index == padded[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w]
                run += same
        np.minimum(shortest, run, out=shortest)
    return 1.0 / np.minimum(shortest, _RUN_CAP).astype(np.float32)


# Tie-breakers, far below any real difference of interpolation weights (multiples of 1/4 in
# the halving steps where ties happen): the locally thinner structure wins a tie (a 1- or
# 2-pixel line against the region around it), and a tie between two wide regions (a straight
# boundary halfway between two training pixels) alternates in a checkerboard, so that no class
# grows at the expense of another on average.
_THIN_BONUS = 1e-2
_CHECKER_BONUS = 1e-5


def _one_label_step(index: np.ndarray, num_classes: int, size: tuple[int, int]) -> np.ndarray:
    channels = np.arange(num_classes)[None, :, None, None]
    weight = 1.0 + np.float32(_THIN_BONUS) * _thinness(index)
    onehot = (index[:, None] == channels) * weight[:, None]
    scores = _resize(onehot.astype(np.float32), size, antialias=False)
    rows, cols = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="ij")
    even = ((rows + cols) % 2 == 0)[None, None]
    rank = np.where(even, channels, num_classes - 1 - channels).astype(np.float32)
    scores += np.float32(_CHECKER_BONUS / max(num_classes - 1, 1)) * rank
    return scores.argmax(axis=1)


def _resize_labels(stack: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize integer label slices ``(S, h, w)`` by one-hot bilinear interpolation + argmax.

    Shrinking goes through :func:`_label_steps`, so 1-pixel-wide structures survive; an
    integer id keeps its value (``ignore`` is a class like the others).
    """
    classes = np.unique(stack)
    out = np.empty((stack.shape[0], *size), dtype=np.int16 if classes.size == 0 or classes.max() < 2**15 else np.int32)
    if classes.size <= 1:
        out[...] = classes[0] if classes.size else 0
        return out
    steps = _label_steps(tuple(stack.shape[-2:]), tuple(size))  # type: ignore[arg-type]
    for start in range(0, stack.shape[0], _CHUNK):
        index = np.searchsorted(classes, stack[start : start + _CHUNK])
        for step in steps:
            index = _one_label_step(index, classes.size, step)
        out[start : start + _CHUNK] = classes[index]
    return out


def _as_pair(values: Sequence[Any], cast: type) -> tuple[Any, Any]:
    pair = tuple(cast(v) for v in values)
    if len(pair) != 2:
        raise ValueError(f"expected two values, got {values!r}")
    return pair  # type: ignore[return-value]


@dataclass(frozen=True)
class PlaneGeometry:
    """Invertible in-plane map between a source slice grid and the training grid.

    The source field of view ``(h * sh, w * sw)`` mm is scaled by one factor (mm per training
    pixel) chosen so that it fits in ``(H, W)``: ``scale = max(h*sh/H, w*sw/W)``. The resized
    slice ``resized_shape`` is centred in the training grid with ``padding`` pixels around it
    (the extra pixel of an odd padding goes after).

    Attributes:
        source_shape: ``(h, w)`` in-plane shape of the source slices (source axis order).
        source_spacing: ``(sh, sw)`` in-plane spacing of the source, millimetres.
        size: ``(H, W)`` training grid.

    Example:
        A 200 × 100 slice at 1 × 2 mm spans 200 × 200 mm: on a 128 × 128 grid it fills the
        grid at 1.5625 mm per pixel, with no padding.
    """

    source_shape: tuple[int, int]
    source_spacing: tuple[float, float]
    size: tuple[int, int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "source_shape", _as_pair(self.source_shape, int))
        object.__setattr__(self, "source_spacing", _as_pair(self.source_spacing, float))
        object.__setattr__(self, "size", _as_pair(self.size, int))
        if min(self.source_shape) < 1 or min(self.size) < 1:
            raise ValueError(f"empty grid: source {self.source_shape}, size {self.size}")
        if not min(self.source_spacing) > 0:
            raise ValueError(f"spacing must be positive, got {self.source_spacing}")

    # --- derived geometry --------------------------------------------------------------
    @property
    def field_of_view(self) -> tuple[float, float]:
        """Source extent ``(h * sh, w * sw)`` in millimetres."""
        return (self.source_shape[0] * self.source_spacing[0], self.source_shape[1] * self.source_spacing[1])

    @property
    def scale(self) -> float:
        """Millimetres per training pixel before rounding the resized shape."""
        fov = self.field_of_view
        return max(fov[0] / self.size[0], fov[1] / self.size[1])

    @property
    def resized_shape(self) -> tuple[int, int]:
        """``(rh, rw)``: the source field of view on the training grid, before padding."""
        fov, scale = self.field_of_view, self.scale
        return tuple(  # type: ignore[return-value]
            max(1, min(limit, int(math.floor(extent / scale + 0.5)))) for extent, limit in zip(fov, self.size)
        )

    @property
    def padding(self) -> tuple[int, int, int, int]:
        """``(top, bottom, left, right)`` padding in training pixels."""
        rh, rw = self.resized_shape
        top, left = (self.size[0] - rh) // 2, (self.size[1] - rw) // 2
        return (top, self.size[0] - rh - top, left, self.size[1] - rw - left)

    @property
    def spacing(self) -> tuple[float, float]:
        """Millimetres per training pixel ``(H, W)``: square up to the rounding of ``resized_shape``."""
        fov, resized = self.field_of_view, self.resized_shape
        return (fov[0] / resized[0], fov[1] / resized[1])

    # --- mapping -----------------------------------------------------------------------
    def to_training(self, stack: np.ndarray, kind: str, *, pad_value: float = 0.0) -> np.ndarray:
        """Resample source slices onto the training grid.

        Args:
            stack: ``(S, h, w)`` for ``"image"`` and ``"label"``; ``(S, C, h, w)`` for
                ``"probabilities"``.
            kind: ``"image"`` (bilinear, antialiased when shrinking), ``"label"`` (one-hot
                bilinear + argmax; integer ids kept, ``ignore`` is a class like any other) or
                ``"probabilities"`` (bilinear per channel).
            pad_value: fill for images and labels outside the field of view; probabilities
                are padded with channel 0 (background) = 1 and the others 0.

        Returns:
            ``(S, H, W)`` (float32 images, integer labels) or ``(S, C, H, W)`` float32.
        """
        self._check(stack, kind, self.source_shape, "source")
        rh, rw = self.resized_shape
        top, bottom, left, right = self.padding
        if kind == "label":
            resized = _resize_labels(np.asarray(stack), (rh, rw))
            out = np.full((stack.shape[0], *self.size), pad_value, dtype=resized.dtype)
            out[:, top : top + rh, left : left + rw] = resized
            return out
        if kind == "image":
            resized = _resize(np.asarray(stack)[:, None], (rh, rw), antialias=True)[:, 0]
            out = np.full((stack.shape[0], *self.size), pad_value, dtype=np.float32)
            out[:, top : top + rh, left : left + rw] = resized
            return out
        resized = _resize(np.asarray(stack), (rh, rw), antialias=False)
        out = np.zeros((stack.shape[0], stack.shape[1], *self.size), dtype=np.float32)
        out[:, 0] = 1.0
        out[:, :, top : top + rh, left : left + rw] = resized
        return out

    def to_source(self, stack: np.ndarray, kind: str) -> np.ndarray:
        """Inverse of :meth:`to_training`: crop the padding, resample back to ``(h, w)``.

        Args:
            stack: ``(S, H, W)`` (``"image"``, ``"label"``) or ``(S, C, H, W)``
                (``"probabilities"``) on the training grid.
            kind: as in :meth:`to_training`.

        Returns:
            ``(S, h, w)`` or ``(S, C, h, w)`` on the source grid.
        """
        self._check(stack, kind, self.size, "training")
        rh, rw = self.resized_shape
        top, _, left, _ = self.padding
        crop = np.asarray(stack)[..., top : top + rh, left : left + rw]
        if kind == "label":
            return _resize_labels(crop, self.source_shape)
        if kind == "image":
            return _resize(crop[:, None], self.source_shape, antialias=True)[:, 0]
        return _resize(crop, self.source_shape, antialias=False)

    @staticmethod
    def _check(stack: np.ndarray, kind: str, shape: tuple[int, int], grid: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; valid: {', '.join(KINDS)}")
        ndim = 4 if kind == "probabilities" else 3
        if stack.ndim != ndim or tuple(stack.shape[-2:]) != tuple(shape):
            expected = "(S, C, " if ndim == 4 else "(S, "
            raise ValueError(f"{kind} stack of shape {stack.shape} does not match the {grid} grid {expected}{shape[0]}, {shape[1]})")

    # --- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"source_shape": list(self.source_shape), "source_spacing": list(self.source_spacing), "size": list(self.size)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlaneGeometry:
        return cls(tuple(data["source_shape"]), tuple(data["source_spacing"]), tuple(data["size"]))


# --------------------------------------------------------------------------------------------
# sliced volumes
# --------------------------------------------------------------------------------------------
@dataclass
class SlicedVolume:
    """One volume as a stack of training slices, with everything needed to map results back.

    Attributes:
        case: case id.
        axis: the slicing axis of the source volume.
        images: ``(S, H, W)`` float32 normalised slices (``S`` = source size along ``axis``).
        labels: ``(S, H, W)`` integer labels with the ``ignore`` id kept, or ``None``.
        status: per-slice :class:`SliceStatus`, computed on the source label slices.
        geometry: the in-plane map between source slices and the training grid.
        reference: the source image's geometry (affine, header, path); its array is a
            zero-memory placeholder of the right shape, usable as ``write_volume(reference=)``.
        source_shape: the source volume's shape ``(X, Y, Z)``.
        full_labels: ``(S, H, W)`` complete labels from ``labelsTr_full`` when requested.
    """

    case: str
    axis: int
    images: np.ndarray
    labels: np.ndarray | None
    status: tuple[SliceStatus, ...]
    geometry: PlaneGeometry
    reference: Volume
    source_shape: tuple[int, int, int]
    full_labels: np.ndarray | None = None

    @property
    def num_slices(self) -> int:
        return int(self.images.shape[0])

    @property
    def annotated_indices(self) -> list[int]:
        """Slices with any annotation: ``ANNOTATED`` or ``EMPTY`` (known background only)."""
        return [i for i, s in enumerate(self.status) if s is not SliceStatus.UNANNOTATED]

    @property
    def foreground_indices(self) -> list[int]:
        """Slices whose annotation holds foreground (``ANNOTATED``)."""
        return [i for i, s in enumerate(self.status) if s is SliceStatus.ANNOTATED]

    @property
    def unannotated_indices(self) -> list[int]:
        return [i for i, s in enumerate(self.status) if s is SliceStatus.UNANNOTATED]

    def to_volume(self, stack: np.ndarray, kind: str) -> np.ndarray:
        """Map training-grid slices back to an array in the source volume's shape and axes.

        Args:
            stack: ``(S, H, W)`` images or labels, or ``(S, C, H, W)`` probabilities.
            kind: ``"image"``, ``"label"`` or ``"probabilities"``.

        Returns:
            ``(X, Y, Z)`` (float32 images, integer labels), or ``(C, X, Y, Z)`` probabilities;
            ready for ``write_volume(path, array, reference=self.reference)``.
        """
        if stack.shape[0] != self.num_slices:
            raise ValueError(f"{self.case}: expected {self.num_slices} slices, got {stack.shape[0]}")
        source = self.geometry.to_source(stack, kind)
        if kind == "probabilities":
            return np.moveaxis(source, 0, self.axis + 1)
        return np.moveaxis(source, 0, self.axis)


def _source_stack(array: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(array, axis, 0)


def _shape_only(volume: Volume) -> Volume:
    # A broadcast view has the shape but no memory; write_volume only checks the shape.
    placeholder = np.broadcast_to(np.zeros((), dtype=np.float32), volume.shape)
    return Volume(placeholder, volume.affine, volume.header, volume.path)


def slice_volume(
    image: Volume,
    label: Volume | None,
    spec: SliceSpec,
    *,
    modality: str,
    ignore_label: int | None,
    case: str,
    full_label: Volume | None = None,
) -> SlicedVolume:
    """Cut a volume into normalised training slices.

    Args:
        image: the 3D image.
        label: its label map (same shape), or ``None``.
        spec: slicing and normalisation settings.
        modality: channel name of the dataset (selects ``"auto"`` normalisation).
        ignore_label: the ``ignore`` id, or ``None``.
        case: case id, kept for messages and outputs.
        full_label: complete labels (``labelsTr_full``), same shape, or ``None``.

    Raises:
        InputError: the image is not 3D, or a label's shape differs from the image's.

    Slices without any annotation are ``ignore`` everywhere on the training grid (padding
    included); other label slices are padded with background.
    """
    if image.array.ndim != 3:
        raise InputError(image.path, f"expected a 3D volume, found shape {image.shape}")
    for other, what in ((label, "label"), (full_label, "full label")):
        if other is not None and other.shape != image.shape:
            raise InputError(other.path, f"{what} shape {other.shape} differs from image shape {image.shape}")
    axis = spec.axis if spec.axis is not None else through_plane_axis(image.spacing)
    in_plane = [a for a in range(3) if a != axis]
    spacing = image.spacing
    geometry = PlaneGeometry(
        source_shape=(image.shape[in_plane[0]], image.shape[in_plane[1]]),
        source_spacing=(spacing[in_plane[0]], spacing[in_plane[1]]),
        size=spec.size,
    )
    normalised = normalize_intensities(image.array, spec.resolve_normalization(modality), spec)
    images = geometry.to_training(_source_stack(normalised, axis), "image")
    del normalised

    labels = None
    status = stack_status(None, ignore_label, image.shape[axis])
    if label is not None:
        source_labels = _source_stack(label.array, axis)
        status = stack_status(source_labels, ignore_label)
        labels = geometry.to_training(source_labels, "label")
        if ignore_label is not None:
            for i, s in enumerate(status):
                if s is SliceStatus.UNANNOTATED:
                    labels[i] = ignore_label
    full = None
    if full_label is not None:
        full = geometry.to_training(_source_stack(full_label.array, axis), "label")
    return SlicedVolume(
        case=case,
        axis=axis,
        images=images,
        labels=labels,
        status=status,
        geometry=geometry,
        reference=_shape_only(image),
        source_shape=tuple(int(v) for v in image.shape),  # type: ignore[arg-type]
        full_labels=full,
    )


def load_sliced_dataset(
    dataset: Dataset,
    spec: SliceSpec,
    *,
    split: str = "Tr",
    cases: Sequence[str] | None = None,
    full_labels: bool = False,
    progress: bool = True,
) -> list[SlicedVolume]:
    """Read and slice the cases of a dataset.

    Args:
        dataset: an opened :class:`~jointreg.data.dataset.Dataset`.
        spec: slicing and normalisation settings.
        split: ``"Tr"`` or ``"Ts"``.
        cases: case ids to load (default: every case of the split, sorted).
        full_labels: also load ``labels{split}_full`` (written by ``jointreg sparsify``).
        progress: show a progress bar (tqdm; silent when not a terminal).

    Returns:
        One :class:`SlicedVolume` per case, in the order of ``cases``. Cases without a label
        file get ``labels=None`` and every slice ``UNANNOTATED``; cases without a full label
        file (unlabelled in the source) get ``full_labels=None``.

    Raises:
        InputError: an unknown case, an unreadable file, or no ``labels{split}_full`` folder
            when ``full_labels`` is requested.
    """
    from tqdm.auto import tqdm

    available = dataset.cases(split)
    selected = list(available if cases is None else cases)
    missing = sorted(set(selected) - set(available))
    if missing:
        raise InputError(dataset.images_dir(split), f"no image for case(s) {', '.join(missing[:5])}")
    if full_labels and not dataset.has_full_labels(split):
        raise InputError(dataset.labels_dir(split, full=True), "folder not found: full labels are written by 'jointreg sparsify'")
    spec_ds = dataset.spec
    result = []
    for case in tqdm(selected, desc=f"slicing {split}", unit="case", disable=None if progress else True, leave=False):
        image = dataset.read_image(case, split)
        label_path = dataset.label_path(case, split)
        label = dataset.read_label(case, split) if label_path.exists() else None
        full_path = dataset.label_path(case, split, full=True)
        full = dataset.read_label(case, split, full=True) if full_labels and full_path.exists() else None
        result.append(
            slice_volume(
                image, label, spec, modality=spec_ds.modality, ignore_label=spec_ds.ignore_label,
                case=case, full_label=full,
            )
        )
    return result
