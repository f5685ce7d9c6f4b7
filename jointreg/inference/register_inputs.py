"""What ``jointreg register`` reads: slice maps, 2D or 3D images and labels, the model's slicing.

Every check that can fail on a user's input lives here and raises a one-line
:class:`~jointreg.errors.InputError` or :class:`~jointreg.errors.ConfigError`, before a network
runs.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from typing import TYPE_CHECKING

import numpy as np

from jointreg.data.nifti import Volume
from jointreg.errors import ConfigError, InputError

if TYPE_CHECKING:
    from jointreg.data.slices import SliceSpec
    from jointreg.inference.volume_box import VolumeBox
    from jointreg.export.model_folder import LoadedModel


# --------------------------------------------------------------------------------------------
# slice maps
# --------------------------------------------------------------------------------------------
def parse_slice_map(items: str | Sequence[str]) -> list[tuple[int, int]]:
    """Parse ``M:F`` pairs (moving slice ``M`` onto fixed slice ``F``), comma-separated.

    ``M:F1-F2`` registers ``M`` onto every fixed slice from ``F1`` to ``F2`` (inclusive), e.g.
    ``"17:11-23"`` propagates slice 17 onto the six slices on either side of it.

    Args:
        items: one string or several (e.g. a repeated command-line option).

    Returns:
        ``[(moving, fixed), ...]`` sorted by fixed slice.

    Raises:
        ConfigError: malformed text, negative indices, or a fixed slice named twice.
    """
    texts = [items] if isinstance(items, str) else list(items)
    pairs: list[tuple[int, int]] = []
    for text in texts:
        for token in filter(None, (t.strip() for t in text.split(","))):
            match = re.fullmatch(r"(\d+):(\d+)(?:-(\d+))?", token)
            if match is None:
                raise ConfigError(f"slice map entry {token!r} is not M:F or M:F1-F2 (slice indices from 0)")
            moving, first = int(match.group(1)), int(match.group(2))
            last = int(match.group(3)) if match.group(3) is not None else first
            if last < first:
                raise ConfigError(f"slice map entry {token!r}: the range {first}-{last} is empty")
            pairs.extend((moving, f) for f in range(first, last + 1))
    if not pairs:
        raise ConfigError("the slice map is empty")
    fixed = [f for _, f in pairs]
    twice = sorted({f for f in fixed if fixed.count(f) > 1})
    if twice:
        raise ConfigError(f"slice map: fixed slice(s) {twice} are given more than one moving slice")
    return sorted(pairs, key=lambda p: p[1])


# --------------------------------------------------------------------------------------------
# images and labels
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputVolume:
    """An input as a 3D volume, remembering where a 2D file got its slice axis inserted.

    Attributes:
        volume: the 3D volume.
        inserted_axis: the axis added to a 2D image (a one-slice volume), or ``None``.
    """

    volume: Volume
    inserted_axis: int | None = None


def as_volume3(volume: Volume, axis: int | None, model_dims: int, role: str) -> InputVolume:
    """``volume`` as a 3D volume: 3D as it is, a 2D image as one slice along ``axis``.

    Args:
        volume: a 2D or 3D image.
        axis: where a 2D image gets its slice axis (2 = ``(X, Y, 1)``); ``None`` refuses 2D.
        model_dims: the model's spatial dimensions (a 3D model refuses 2D images).
        role: ``"moving"`` or ``"fixed"``, for messages.

    Raises:
        InputError: a 2D image without ``axis`` or for a 3D model, or neither 2D nor 3D.
    """
    if volume.array.ndim == 3:
        return InputVolume(volume)
    if volume.array.ndim != 2:
        raise InputError(volume.path, f"{role}: expected a 2D or 3D image, found shape {volume.shape}")
    if model_dims == 3:
        raise InputError(volume.path, f"{role}: a 3D model needs 3D volumes; this image is 2D {volume.shape}")
    if axis is None:
        raise InputError(
            volume.path,
            f"{role}: a 2D image {volume.shape} has no slice axis for this 2D model; give --axis 2 "
            "(axis=2) to register it as a single slice",
        )
    # The 2D image becomes a one-slice volume; the affine's columns follow the array axes.
    order = [0, 1]
    order.insert(axis, 2)
    affine = np.array(volume.affine, dtype=np.float64)
    affine[:, :3] = affine[:, order]
    array = np.expand_dims(volume.array, axis)
    return InputVolume(Volume(array, affine, None, volume.path), inserted_axis=axis)


def _squeeze_trailing(volume: Volume) -> Volume:
    array = volume.array
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return volume if array is volume.array else Volume(array, volume.affine, volume.header, volume.path)


def read_input_image(path: str | PathLike[str]) -> Volume:
    """Read a 2D or 3D image (trailing singleton axes dropped) as float32 with its geometry."""
    from jointreg.data.nifti import read_image

    volume = _squeeze_trailing(read_image(path, ndim=None))
    if volume.array.ndim not in (2, 3):
        raise InputError(path, f"expected a 2D or 3D image, found {volume.array.ndim}D data of shape {volume.shape}")
    return volume


def read_input_labels(path: str | PathLike[str]) -> Volume:
    """Read a 2D or 3D label map (trailing singleton axes dropped)."""
    from jointreg.data.nifti import read_label

    volume = _squeeze_trailing(read_label(path, ndim=None))
    if volume.array.ndim not in (2, 3):
        raise InputError(path, f"expected a 2D or 3D label map, found shape {volume.shape}")
    return volume


def check_labels(labels: Volume | None, moving: Volume) -> None:
    """Refuse moving labels that do not lie on the moving image's grid (1e-2 tolerance)."""
    from jointreg.data.nifti import same_geometry

    if labels is None:
        return
    problem = same_geometry(moving, labels, atol=1e-2)
    if problem:
        raise InputError(labels.path, f"the moving labels do not lie on the moving image's grid: {problem}")


# --------------------------------------------------------------------------------------------
# the model's slicing
# --------------------------------------------------------------------------------------------
def model_preprocessing(model: LoadedModel) -> tuple[SliceSpec, tuple[int, ...] | VolumeBox | None]:
    """The model's slicing settings, and the 3D working size.

    Returns:
        ``(spec, size3)``: for a 2D model the spec carries the in-plane ``size`` and ``size3`` is
        ``None``; for a 3D model ``size3`` is ``preprocessing.size`` (three integers) or ``None``
        (each volume's own size); for a model of 3D mode (``preprocessing.box``) the spec carries
        the in-plane size of its slices and ``size3`` is the :class:`~jointreg.inference.volume_box.VolumeBox`.

    Raises:
        InputError: unusable ``preprocessing`` in the model's ``config.json``.
    """
    from jointreg.data.slices import SliceSpec

    settings = dict(model.preprocessing)
    box = settings.pop("box", None)
    size = settings.pop("size", None)
    where = model.path / "config.json" if model.path is not None else None
    try:
        spec = SliceSpec.from_dict(settings)
    except ConfigError as exc:
        raise InputError(where, f"preprocessing: {exc}") from None
    if box is not None:
        # A 3D-mode model: volumes are sliced as for training (size: the in-plane grid), then
        # resampled into the box (jointreg/inference/volume_box.py).
        from jointreg.inference.volume_box import VolumeBox

        if model.spatial_dims != 3 or size is None or len(size) != 2:
            raise InputError(where, "preprocessing.box needs a 3D model and a two-integer preprocessing.size")
        try:
            volume_box = VolumeBox(**box)
        except (TypeError, ValueError) as exc:
            raise InputError(where, f"preprocessing.box: {exc}") from None
        return dataclasses.replace(spec, size=tuple(int(v) for v in size)), volume_box
    if model.spatial_dims == 2:
        if size is None or len(size) != 2:
            raise InputError(where, f"preprocessing.size must be two integers for a 2D model, found {size!r}")
        return dataclasses.replace(spec, size=tuple(int(v) for v in size)), None
    if size is not None and (len(size) != 3 or min(int(v) for v in size) < 4):
        raise InputError(where, f"preprocessing.size must be three integers >= 4 for a 3D model, found {size!r}")
    return spec, (tuple(int(v) for v in size) if size is not None else None)
