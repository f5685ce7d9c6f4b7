"""Register a moving image onto a fixed image with a trained registration model.

:func:`register_files` is ``jointreg register``; :func:`register_volumes` does the work on
:class:`~jointreg.data.nifti.Volume` objects and returns arrays.

**2D models on volumes.** A model trained on slices registers volumes slice by slice along its
slicing axis (``preprocessing.axis`` of the model folder; ``None`` = each volume's through-plane
axis, the one with the largest spacing; ``axis=`` overrides it). By default fixed slice ``k`` is
registered to moving slice ``k``, which needs the same number of slices in both; a slice map
``[(M, F), ...]`` registers moving slice ``M`` onto fixed slice ``F`` instead (each fixed slice
at most once; see :func:`parse_slice_map` for the ``3:5,3:6-9`` syntax). Fixed slices that the
map leaves out are not registered: their warped image, warped labels and displacement are 0,
and ``register.json`` lists them.

**3D models** take the whole volumes, each resampled to ``preprocessing.size`` (three integers;
without it the volume's own size), edges of the field of view aligned along every axis.

**From the model grid back to the fixed image.** Each slice (volume) is normalised and resampled
onto the model's grid exactly as in training (:class:`~jointreg.data.slices.PlaneGeometry`;
normalisation from the model's modality and settings). The network predicts a displacement
``u`` there, in model-grid pixels. For every voxel ``p`` of the FIXED image the moving position
is then found by following the grids: ``q = to_model_f(p)`` (the fixed voxel on the model grid),
``q + u(q)`` (``u`` interpolated bilinearly; the moving point on the model grid), and
``P = to_source_m(q + u(q))`` (the moving image's own voxel; for 2D models the moving slice's
index along the slicing axis). The moving image is sampled at ``P`` at its full resolution and
in its own intensities (bilinear; edge values repeated outside), labels one-hot + linear +
argmax (:func:`jointreg.spatial.warp_labels`; ``label_mode="nearest"`` as an option). So the
warped image, the warped labels and the written displacement field describe one and the same
mapping: resampling the moving image with the field (ITK, ANTs, or :func:`jointreg.spatial.warp`
with the ``voxel`` form) reproduces the warped image.

**The displacement field** (pull convention, as ITK's and ANTs' resampling transforms): the
fixed voxel at world position ``x`` corresponds to the moving point ``y = x + d(x)``, i.e.
``warped(x) = moving(x + d(x))``. Formats (``field_format``):

=========  =====================================  ==============================================
format     array, NIfTI intent                    vector components
=========  =====================================  ==============================================
``ants``   ``(X, Y, Z, 1, 3)`` float32,            millimetres in ITK's LPS physical frame:
           ``NIFTI_INTENT_VECTOR`` (1007)         ``(-d_R, -d_A, d_S)``; what ANTs
                                                  (``antsApplyTransforms``) and ITK of every
                                                  version read as a displacement field
``nifti``  ``(X, Y, Z, 1, 3)`` float32,            millimetres in the NIfTI world frame (RAS+):
           ``NIFTI_INTENT_DISPVECT`` (1006)       ``(d_R, d_A, d_S)``; ITK >= 5.3 converts
                                                  these to LPS when reading (Slicer, FreeSurfer)
``voxel``  ``(X, Y, Z, 3)`` float32                voxels of the FIXED grid along its array axes
                                                  (jointreg's flow convention, channels last):
                                                  the moving point ``y`` sits at fixed-grid voxel
                                                  coordinate ``p + v(p)``
=========  =====================================  ==============================================

A 2D fixed image (a 2D NIfTI, only with ``axis``) gets ``(X, Y, 1, 1, 2)`` for ``ants`` and
``nifti`` (the in-plane world components, as ITK reads a 2D image) and ``(X, Y, 2)`` for
``voxel``.

Example:
    >>> from jointreg import load_model                                  # doctest: +SKIP
    >>> from jointreg.data.nifti import read_image
    >>> model = load_model("runs/reg/export/registration", kind="registration")
    >>> volume = read_image("case_0000.nii.gz")                          # (X, Y, Z), Z slices
    >>> result = register_volumes(model, volume, volume, slice_map=parse_slice_map("17:11-23"))
    >>> result.warped.shape == volume.shape, result.displacement_mm.shape == (*volume.shape, 3)
    (True, True)
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from jointreg.data.nifti import Volume
from jointreg.errors import ConfigError, InputError, JointregError

if TYPE_CHECKING:
    import torch

    from jointreg.export.model_folder import LoadedModel

log = logging.getLogger(__name__)

FIELD_FORMATS = ("ants", "nifti", "voxel")
LABEL_MODES = ("linear", "nearest")
WARPED_NAME = "warped.nii.gz"
LABELS_NAME = "warped_labels.nii.gz"
FIELD_NAME = "displacement.nii.gz"
SUMMARY_NAME = "register.json"

_INTENT = {"ants": 1007, "nifti": 1006}  # NIFTI_INTENT_VECTOR, NIFTI_INTENT_DISPVECT
_LPS = np.array([-1.0, -1.0, 1.0])


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
# grids: source voxels <-> model grid
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AxisMap:
    """One axis between a source grid and the model grid (pixel areas aligned, as in training).

    The ``source`` voxels span ``resized`` model pixels that start ``offset`` pixels into the
    model grid (the rest is padding). Voxel centres: source voxel ``s`` sits at model coordinate
    ``(s + 0.5) * resized / source - 0.5 + offset`` (``F.interpolate(align_corners=False)``).
    """

    source: int
    resized: int
    offset: int = 0

    def to_model(self, s: np.ndarray) -> np.ndarray:
        return (s + 0.5) * (self.resized / self.source) - 0.5 + self.offset

    def to_source(self, q: np.ndarray) -> np.ndarray:
        return (q - self.offset + 0.5) * (self.source / self.resized) - 0.5


def plane_axis_maps(geometry) -> tuple[AxisMap, AxisMap]:
    """The two in-plane :class:`AxisMap` of a :class:`~jointreg.data.slices.PlaneGeometry`."""
    (h, w), (rh, rw) = geometry.source_shape, geometry.resized_shape
    top, _, left, _ = geometry.padding
    return AxisMap(h, rh, top), AxisMap(w, rw, left)


def _model_coordinates(maps: Sequence[AxisMap], shape: Sequence[int]) -> np.ndarray:
    """``(D, *shape)`` float32: every source voxel's position on the model grid."""
    axes = [m.to_model(np.arange(n, dtype=np.float64)) for m, n in zip(maps, shape)]
    return np.stack(np.meshgrid(*axes, indexing="ij")).astype(np.float32)


# --------------------------------------------------------------------------------------------
# sampling a grid of any shape at coordinates on a grid of another shape
# --------------------------------------------------------------------------------------------
def _canvas(shape_in: Sequence[int], shape_out: Sequence[int]) -> tuple[int, ...]:
    return tuple(max(int(a), int(b)) for a, b in zip(shape_in, shape_out))


def _pad_end(array: np.ndarray, canvas: Sequence[int], mode: str) -> np.ndarray:
    lead = array.ndim - len(canvas)
    widths = [(0, 0)] * lead + [(0, c - n) for n, c in zip(array.shape[lead:], canvas)]
    if all(w == (0, 0) for w in widths):
        return array
    return np.pad(array, widths, mode=mode)


def resample(images: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Sample images (linear, edge values repeated outside) at voxel coordinates.

    Args:
        images: ``(B or 1, C, *S_in)`` float.
        coords: ``(B, D, *S_out)`` positions in the images' voxels, channel ``d`` along axis ``d``.

    Returns:
        ``(B, C, *S_out)`` float32.

    :func:`jointreg.spatial.sample` needs both grids to have one shape, so both are placed on a
    canvas large enough for either: the images are padded at the end with their edge values
    (which is what "border" sampling reads there anyway) and the result is cropped.
    """
    import torch

    from jointreg.spatial.warp import sample

    shape_out = coords.shape[2:]
    canvas = _canvas(images.shape[2:], shape_out)
    padded = _pad_end(np.asarray(images, np.float32), canvas, "edge")
    where = _pad_end(np.asarray(coords, np.float32), canvas, "constant")
    out = sample(torch.from_numpy(np.ascontiguousarray(padded)), torch.from_numpy(np.ascontiguousarray(where)))
    return out[(slice(None), slice(None), *(slice(0, n) for n in shape_out))].numpy()


def resample_labels(labels: np.ndarray, coords: np.ndarray, *, mode: str = "linear") -> np.ndarray:
    """Warp integer label maps to voxel coordinates: one-hot + linear + argmax, or nearest.

    Args:
        labels: ``(B or 1, *S_in)`` non-negative integer ids.
        coords: ``(B, D, *S_out)`` positions in the label maps' voxels.
        mode: ``"linear"`` (:func:`jointreg.spatial.warp_labels`: thin structures survive,
            ties go to the higher id) or ``"nearest"``.

    Returns:
        ``(B, *S_out)`` labels, same dtype as ``labels``.
    """
    import torch

    from jointreg.spatial.warp import identity_grid, warp_labels

    shape_out = coords.shape[2:]
    canvas = _canvas(labels.shape[1:], shape_out)
    padded = _pad_end(np.asarray(labels), canvas, "edge").astype(np.int64)
    flow = _pad_end((coords - identity_grid(shape_out).numpy()).astype(np.float32), canvas, "constant")
    num_classes = int(padded.max()) + 1 if padded.size else 1
    out = warp_labels(
        torch.from_numpy(np.ascontiguousarray(padded))[:, None],
        torch.from_numpy(np.ascontiguousarray(flow)),
        num_classes,
        mode=mode,
    )
    return out[(slice(None), 0, *(slice(0, n) for n in shape_out))].numpy().astype(labels.dtype)


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Input:
    """An input as a 3D volume, remembering where a 2D file got its slice axis inserted."""

    volume: Volume
    inserted_axis: int | None = None


def _as_volume3(volume: Volume, axis: int | None, model_dims: int, role: str) -> _Input:
    if volume.array.ndim == 3:
        return _Input(volume)
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
    return _Input(Volume(array, affine, None, volume.path), inserted_axis=axis)


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


# --------------------------------------------------------------------------------------------
# the result
# --------------------------------------------------------------------------------------------
@dataclass
class RegistrationResult:
    """What :func:`register_volumes` computes, on the fixed image's grid.

    Attributes:
        warped: the moving image warped onto the fixed grid, float32, in the moving image's
            intensities; the fixed image's shape (2D for a 2D fixed file).
        warped_labels: the moving labels warped likewise, or ``None``.
        displacement_mm: ``(*S3, 3)`` float32 world displacement ``d = y - x`` in millimetres,
            RAS+ (NIfTI world frame), on the fixed grid as a 3D volume ``S3``.
        displacement_voxels: ``(*S3, 3)`` float32 displacement in fixed-grid voxels.
        registered: ``S3`` bool: the fixed voxels that were registered (all but the slices a
            slice map leaves out).
        pairs: one dict per registered pair with ``moving``, ``fixed`` (slice indices; both 0
            for 3D models) and model-grid metrics ``ncc``, ``identity_ncc``,
            ``folding_percent``, ``sdlogj``.
        axis: the slicing axis (2D models) or ``None`` (3D models).
        inserted_axis: the axis added to a 2D fixed image, or ``None``.
    """

    warped: np.ndarray
    warped_labels: np.ndarray | None
    displacement_mm: np.ndarray
    displacement_voxels: np.ndarray
    registered: np.ndarray
    pairs: list[dict[str, Any]] = field(default_factory=list)
    axis: int | None = None
    inserted_axis: int | None = None

    def field_array(self, field_format: str = "ants") -> np.ndarray:
        """The displacement in one of :data:`FIELD_FORMATS`, shaped as it is written (float32).

        ``ants``/``nifti``: ``(X, Y, Z, 1, 3)`` millimetres (LPS / RAS), ``(X, Y, 1, 1, 2)`` for a
        2D fixed image; ``voxel``: ``(*S, D)`` with ``S``, ``D`` the fixed image's own shape and
        number of dimensions.
        """
        if field_format not in FIELD_FORMATS:
            raise ConfigError(f"unknown field format {field_format!r}; valid: {', '.join(FIELD_FORMATS)}")
        if field_format == "voxel":
            vectors = self.displacement_voxels
            if self.inserted_axis is not None:
                vectors = np.delete(np.take(vectors, 0, axis=self.inserted_axis), self.inserted_axis, axis=-1)
            return vectors.astype(np.float32)
        vectors = self.displacement_mm * (_LPS if field_format == "ants" else 1.0)
        if self.inserted_axis is not None:
            # ITK reads a 2D NIfTI in the world x-y plane: keep those two components; NIfTI
            # keeps vector components in dimension 5, after z and t: (X, Y, 1, 1, 2).
            vectors = np.take(vectors, 0, axis=self.inserted_axis)[..., None, :2]
        return vectors[..., None, :].astype(np.float32)

    def summary(self) -> dict[str, Any]:
        """Means of the per-pair metrics and the pair list (JSON-ready)."""
        keys = ("ncc", "identity_ncc", "folding_percent", "sdlogj")
        means = {k: float(np.mean([p[k] for p in self.pairs])) for k in keys} if self.pairs else {}
        return {"pairs": len(self.pairs), **means}


# --------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------
def _preprocessing(model: LoadedModel):
    from jointreg.data.slices import SliceSpec

    settings = dict(model.preprocessing)
    size = settings.pop("size", None)
    where = model.path / "config.json" if model.path is not None else None
    try:
        spec = SliceSpec.from_dict(settings)
    except ConfigError as exc:
        raise InputError(where, f"preprocessing: {exc}") from None
    if model.spatial_dims == 2:
        if size is None or len(size) != 2:
            raise InputError(where, f"preprocessing.size must be two integers for a 2D model, found {size!r}")
        return dataclasses.replace(spec, size=tuple(int(v) for v in size)), None
    if size is not None and (len(size) != 3 or min(int(v) for v in size) < 4):
        raise InputError(where, f"preprocessing.size must be three integers >= 4 for a 3D model, found {size!r}")
    return spec, (tuple(int(v) for v in size) if size is not None else None)


def _check_labels(labels: Volume | None, moving: Volume) -> None:
    from jointreg.data.nifti import same_geometry

    if labels is None:
        return
    problem = same_geometry(moving, labels, atol=1e-2)
    if problem:
        raise InputError(labels.path, f"the moving labels do not lie on the moving image's grid: {problem}")


def _forward(net, moving: np.ndarray, fixed: np.ndarray, device) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """Run the network on ``(B, *M)`` model-grid arrays; return the flow (CPU) and metrics."""
    import torch

    from jointreg.metrics.registration import folding_percent, ncc, sdlogj

    m = torch.from_numpy(np.ascontiguousarray(moving, np.float32))[:, None].to(device)
    f = torch.from_numpy(np.ascontiguousarray(fixed, np.float32))[:, None].to(device)
    with torch.no_grad():
        out = net(m, f)
        flow = out.flow.float()
        finite = torch.isfinite(flow).flatten(1).all(1)
        metrics = {"finite": finite.cpu().numpy()}
        if bool(finite.all()):
            metrics.update(
                ncc=ncc(out.warped, f).cpu().numpy(), identity_ncc=ncc(m, f).cpu().numpy(),
                folding_percent=folding_percent(flow).cpu().numpy(), sdlogj=sdlogj(flow).cpu().numpy(),
            )
    return flow.cpu(), metrics


def _not_finite(model: LoadedModel, what: str, items: list[str]) -> JointregError:
    where = f"{model.path}: " if model.path is not None else ""
    more = f" (and {len(items) - 3} more)" if len(items) > 3 else ""
    return JointregError(
        f"{where}the network produced NaN or infinite displacements for {what} {', '.join(items[:3])}{more}; "
        "its weights are not usable (a diverged training run?) — nothing was written"
    )


def _world(affine: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """``(*S, 3)`` world positions of ``(3, *S)`` voxel coordinates."""
    a = np.asarray(affine, np.float64)
    return np.einsum("ij,j...->...i", a[:3, :3], coords.astype(np.float64)) + a[:3, 3]


def register_volumes(
    model: LoadedModel,
    moving: Volume,
    fixed: Volume,
    *,
    moving_labels: Volume | None = None,
    slice_map: Sequence[tuple[int, int]] | None = None,
    axis: int | None = None,
    label_mode: str = "linear",
    batch_size: int = 16,
) -> RegistrationResult:
    """Register ``moving`` onto ``fixed`` with a loaded registration model (see the module doc).

    Args:
        model: a registration model folder loaded with :func:`jointreg.load_model`.
        moving, fixed: 3D volumes, or 2D images when ``axis`` is given (2D models only).
        moving_labels: a label map on the moving image's grid, warped along.
        slice_map: ``[(moving slice, fixed slice), ...]`` for 2D models; default: slice by
            slice index.
        axis: the slicing axis, overriding the model's; for a 2D image, the axis at which it
            becomes a one-slice volume (2 = ``(X, Y, 1)``).
        label_mode: ``"linear"`` (one-hot + linear + argmax) or ``"nearest"``.
        batch_size: slice pairs per forward pass.

    Returns:
        A :class:`RegistrationResult` on the fixed grid.

    Raises:
        InputError: inputs with different numbers of dimensions, a 2D image without ``axis``,
            labels off the moving grid, slice counts that differ without a slice map, slice
            indices out of range, a model without usable preprocessing.
        ConfigError: an invalid ``axis``, ``label_mode`` or ``slice_map`` for this model.
        JointregError: the network produced NaN or infinite displacements.
    """
    if model.kind != "registration":
        raise InputError(model.path, f"is a {model.kind} model, expected a registration model")
    if label_mode not in LABEL_MODES:
        raise ConfigError(f"unknown label mode {label_mode!r}; valid: {', '.join(LABEL_MODES)}")
    if axis is not None and axis not in (0, 1, 2):
        raise ConfigError(f"axis must be 0, 1 or 2, got {axis!r}")
    if moving.array.ndim != fixed.array.ndim:
        raise InputError(
            moving.path,
            f"the moving image is {moving.array.ndim}D {moving.shape} but the fixed image is "
            f"{fixed.array.ndim}D {fixed.shape}: both must have the same number of dimensions",
        )
    if moving_labels is not None and moving_labels.shape != moving.shape:
        raise InputError(moving_labels.path, f"label shape {moving_labels.shape} differs from the moving image's {moving.shape}")
    _check_labels(moving_labels, moving)
    dims = model.spatial_dims
    if dims not in (2, 3):
        raise InputError(model.path, f"spatial_dims {dims} is not supported (2 or 3)")
    m_in = _as_volume3(moving, axis, dims, "moving")
    f_in = _as_volume3(fixed, axis, dims, "fixed")
    labels3 = None
    if moving_labels is not None:
        labels3 = moving_labels.array if m_in.inserted_axis is None else np.expand_dims(moving_labels.array, m_in.inserted_axis)
    spec, size3 = _preprocessing(model)
    if dims == 3:
        if slice_map:
            raise ConfigError("a slice map applies to 2D models only; this model registers whole volumes")
        result = _register_3d(model, m_in.volume, f_in.volume, labels3, spec, size3, label_mode)
    else:
        if axis is not None and spec.axis is not None and axis != spec.axis:
            log.warning("registering along axis %d; the model was trained on slices along axis %d", axis, spec.axis)
        if axis is not None:
            spec = dataclasses.replace(spec, axis=axis)
        result = _register_2d(model, m_in.volume, f_in.volume, labels3, spec, slice_map, label_mode, batch_size)
    result.inserted_axis = f_in.inserted_axis
    if f_in.inserted_axis is not None:
        result.warped = np.take(result.warped, 0, axis=f_in.inserted_axis)
        if result.warped_labels is not None:
            result.warped_labels = np.take(result.warped_labels, 0, axis=f_in.inserted_axis)
    return result


def _finish(
    moving: Volume, fixed: Volume, coords: np.ndarray, registered: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """World (mm, RAS) and fixed-voxel displacements from moving voxel coordinates ``(3, *S)``."""
    shape = fixed.shape
    mm = np.zeros((*shape, 3), np.float32)
    voxels = np.zeros((*shape, 3), np.float32)
    moving_to_fixed = np.linalg.inv(np.asarray(fixed.affine, np.float64)) @ np.asarray(moving.affine, np.float64)
    rest = np.stack(np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")).astype(np.float64)
    # One plane of the first axis at a time: float64 arithmetic without volume-sized temporaries.
    for i in range(shape[0]):
        p = np.concatenate([np.full((1, *shape[1:]), float(i)), rest])
        c = coords[:, i].astype(np.float64)
        keep = registered[i][..., None]
        mm[i] = np.where(keep, _world(moving.affine, c) - _world(fixed.affine, p), 0.0)
        voxels[i] = np.where(keep, _world(moving_to_fixed, c) - np.moveaxis(p, 0, -1), 0.0)
    return mm, voxels


def _register_2d(model, moving, fixed, labels, spec, slice_map, label_mode, batch_size) -> RegistrationResult:
    from jointreg.data.slices import slice_volume

    sliced_m = slice_volume(moving, None, spec, modality=model.modality, ignore_label=None, case="moving")
    sliced_f = slice_volume(fixed, None, spec, modality=model.modality, ignore_label=None, case="fixed")
    if sliced_m.axis != sliced_f.axis:
        raise InputError(
            moving.path,
            f"the moving image would be sliced along axis {sliced_m.axis} but the fixed image along axis "
            f"{sliced_f.axis} (their through-plane axes differ); give --axis",
        )
    a = sliced_f.axis
    n_m, n_f = sliced_m.num_slices, sliced_f.num_slices
    if slice_map:
        pairs = [(int(m), int(f)) for m, f in slice_map]
        bad = [(m, f) for m, f in pairs if not (0 <= m < n_m and 0 <= f < n_f)]
        if bad:
            raise ConfigError(
                f"slice map pair(s) {bad[:3]} out of range: the moving image has {n_m} slices and the "
                f"fixed image {n_f} along axis {a} (indices from 0)"
            )
        if len({f for _, f in pairs}) != len(pairs):
            raise ConfigError("slice map: a fixed slice is given more than one moving slice")
    else:
        if n_m != n_f:
            raise InputError(
                fixed.path,
                f"the moving image has {n_m} slices and the fixed image {n_f} along axis {a}; pairs by "
                "slice index need equal counts: give a slice map (--slice-map M:F,...)",
            )
        pairs = [(k, k) for k in range(n_f)]
    maps_m, maps_f = plane_axis_maps(sliced_m.geometry), plane_axis_maps(sliced_f.geometry)
    plane_f = sliced_f.geometry.source_shape
    q_fixed = _model_coordinates(maps_f, plane_f)  # (2, h_f, w_f), the same for every fixed slice
    source_m = np.moveaxis(moving.array, a, 0)
    labels_m = None if labels is None else np.moveaxis(labels, a, 0)
    warped = np.zeros((n_f, *plane_f), np.float32)
    warped_labels = None if labels is None else np.zeros((n_f, *plane_f), labels.dtype)
    coords = np.zeros((3, n_f, *plane_f), np.float32)  # moving voxel coords, slice axis first
    registered = np.zeros(n_f, bool)
    records = []
    device = next(model.model.parameters()).device
    for start in range(0, len(pairs), max(1, batch_size)):
        chunk = pairs[start:start + batch_size]
        moving_index = [m for m, _ in chunk]
        fixed_index = [f for _, f in chunk]
        flow, metrics = _forward(model.model, sliced_m.images[moving_index], sliced_f.images[fixed_index], device)
        if not metrics["finite"].all():
            raise _not_finite(model, "slice pair(s)", [f"{m}->{f}" for (m, f), ok in zip(chunk, metrics["finite"]) if not ok])
        q = np.repeat(q_fixed[None], len(chunk), axis=0)
        u = resample(flow.numpy(), q)
        at = np.stack([maps_m[d].to_source(q[:, d] + u[:, d]) for d in range(2)], axis=1).astype(np.float32)
        warped[fixed_index] = resample(source_m[moving_index][:, None], at)[:, 0]
        if labels_m is not None:
            warped_labels[fixed_index] = resample_labels(labels_m[moving_index], at, mode=label_mode)
        coords[0, fixed_index] = np.asarray(moving_index, np.float32)[:, None, None]
        coords[1:, fixed_index] = np.moveaxis(at, 1, 0)
        registered[fixed_index] = True
        for i, (m, f) in enumerate(chunk):
            records.append({"moving": m, "fixed": f, **{k: float(v[i]) for k, v in metrics.items() if k != "finite"}})
    # Back from (slice, in-plane...) to the fixed volume's array order.
    in_plane = [d for d in range(3) if d != a]
    order = [a, *in_plane]
    coords_xyz = np.zeros_like(coords)
    for k, d in enumerate(order):
        coords_xyz[d] = coords[k]
    coords_xyz = np.moveaxis(coords_xyz, 1, a + 1)
    mask = np.moveaxis(np.broadcast_to(registered[:, None, None], (n_f, *plane_f)), 0, a)
    mm, voxels = _finish(moving, fixed, coords_xyz, mask)
    return RegistrationResult(
        warped=np.moveaxis(warped, 0, a),
        warped_labels=None if warped_labels is None else np.moveaxis(warped_labels, 0, a),
        displacement_mm=mm, displacement_voxels=voxels, registered=np.ascontiguousarray(mask),
        pairs=records, axis=a,
    )


def _volume_on_grid(array: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    if tuple(array.shape) == tuple(size):
        return np.asarray(array, np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(array, np.float32))[None, None]
    return F.interpolate(tensor, size=size, mode="trilinear", align_corners=False)[0, 0].numpy()


def _register_3d(model, moving, fixed, labels, spec, size, label_mode) -> RegistrationResult:
    from jointreg.data.slices import normalize_intensities

    method = spec.resolve_normalization(model.modality)
    grid_m = size or moving.shape
    grid_f = size or fixed.shape
    if tuple(grid_m) != tuple(grid_f):
        raise InputError(
            fixed.path, f"the model has no fixed working size and the volumes differ in shape ({moving.shape} vs {fixed.shape})"
        )
    m = _volume_on_grid(normalize_intensities(moving.array, method, spec), tuple(grid_m))
    f = _volume_on_grid(normalize_intensities(fixed.array, method, spec), tuple(grid_f))
    device = next(model.model.parameters()).device
    flow, metrics = _forward(model.model, m[None], f[None], device)
    if not metrics["finite"].all():
        raise _not_finite(model, "the volume pair", [])
    maps_m = [AxisMap(n, r) for n, r in zip(moving.shape, grid_m)]
    maps_f = [AxisMap(n, r) for n, r in zip(fixed.shape, grid_f)]
    q = _model_coordinates(maps_f, fixed.shape)
    u = resample(flow.numpy(), q[None])[0]
    coords = np.stack([maps_m[d].to_source(q[d] + u[d]) for d in range(3)]).astype(np.float32)
    del q, u
    warped = resample(moving.array[None, None], coords[None])[0, 0]
    warped_labels = None if labels is None else resample_labels(labels[None], coords[None], mode=label_mode)[0]
    registered = np.ones(fixed.shape, bool)
    mm, voxels = _finish(moving, fixed, coords, registered)
    record = {"moving": 0, "fixed": 0, **{k: float(v[0]) for k, v in metrics.items() if k != "finite"}}
    return RegistrationResult(warped, warped_labels, mm, voxels, registered, [record], axis=None)


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------
def write_field(path: str | PathLike[str], result: RegistrationResult, fixed: Volume, field_format: str = "ants") -> Path:
    """Write the displacement field as NIfTI with the fixed image's affine (atomically).

    See the module docstring for the three formats.
    """
    import nibabel as nib

    from jointreg.utils.atomic import atomic_path

    data = result.field_array(field_format)
    affine = np.asarray(fixed.affine, np.float64)
    header = fixed.header.copy() if fixed.header is not None else nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    if hasattr(header, "set_slope_inter"):
        header.set_slope_inter(1.0, 0.0)
    image = nib.Nifti1Image(data, affine, header=header)
    if field_format in _INTENT:
        image.header.set_intent(_INTENT[field_format], (), name="displacement mm " + ("LPS" if field_format == "ants" else "RAS"))
    else:
        image.header.set_intent(0, (), name="displacement voxels")
    qcode = int(header["qform_code"]) if int(header["qform_code"]) > 0 else 1
    scode = int(header["sform_code"]) if int(header["sform_code"]) > 0 else 1
    image.set_qform(affine, code=qcode)
    image.set_sform(affine, code=scode)
    path = Path(path)
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))
    return path


def register_files(
    model: str | PathLike[str],
    moving: str | PathLike[str],
    fixed: str | PathLike[str],
    out: str | PathLike[str],
    *,
    labels: str | PathLike[str] | None = None,
    slice_map: Sequence[tuple[int, int]] | None = None,
    axis: int | None = None,
    label_mode: str = "linear",
    field_format: str = "ants",
    device: Any = "auto",
    batch_size: int = 16,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Register two NIfTI files with a model folder and write the results into ``out``.

    ``out`` receives ``warped.nii.gz``, ``warped_labels.nii.gz`` (with ``labels``),
    ``displacement.nii.gz`` and ``register.json`` (inputs, pairs, per-pair model-grid NCC /
    folding % / SDlogJ, unregistered fixed slices, the field's format and units). The folder
    appears complete or not at all.

    Returns:
        The content of ``register.json``.

    Raises:
        InputError: ``out`` exists (without ``overwrite``), unreadable inputs, and everything
            :func:`register_volumes` raises.
    """
    from jointreg import __version__
    from jointreg.data.nifti import write_volume
    from jointreg.export.model_folder import load_model_folder
    from jointreg.utils.atomic import atomic_dir, write_json
    from jointreg.utils.device import resolve_device

    if field_format not in FIELD_FORMATS:
        raise ConfigError(f"unknown field format {field_format!r}; valid: {', '.join(FIELD_FORMATS)}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(out, "already exists (pass --overwrite to replace it)")
    loaded = load_model_folder(model, device=resolve_device(device), kind="registration")
    moving_volume = read_input_image(moving)
    fixed_volume = read_input_image(fixed)
    label_volume = read_input_labels(labels) if labels is not None else None
    result = register_volumes(
        loaded, moving_volume, fixed_volume, moving_labels=label_volume, slice_map=slice_map, axis=axis,
        label_mode=label_mode, batch_size=batch_size,
    )
    registered_slices = {p["fixed"] for p in result.pairs}
    unregistered = []
    if result.axis is not None and not result.registered.all():
        n = fixed_volume.shape[result.axis] if result.inserted_axis is None else 1
        unregistered = [k for k in range(n) if k not in registered_slices]
    summary = {
        "jointreg_version": __version__,
        "model": str(Path(model)),
        "architecture": loaded.architecture,
        "moving": str(Path(moving)),
        "fixed": str(Path(fixed)),
        "moving_labels": None if labels is None else str(Path(labels)),
        "slice_axis": result.axis,
        "label_mode": label_mode if labels is not None else None,
        "field": {
            "file": FIELD_NAME,
            "format": field_format,
            "shape": list(result.field_array(field_format).shape),
            "units": "voxels of the fixed grid" if field_format == "voxel" else "mm",
            "frame": {"ants": "ITK LPS physical", "nifti": "NIfTI RAS+ world", "voxel": "fixed array axes"}[field_format],
            "convention": "pull: warped(x) = moving(x + d(x)) for x on the fixed grid",
        },
        "metrics_on_model_grid": result.summary(),
        "unregistered_fixed_slices": unregistered,
        "pairs": result.pairs,
        "files": [WARPED_NAME, *([LABELS_NAME] if labels is not None else []), FIELD_NAME, SUMMARY_NAME],
    }
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_volume(tmp / WARPED_NAME, result.warped, reference=fixed_volume)
        if result.warped_labels is not None:
            write_volume(tmp / LABELS_NAME, result.warped_labels, reference=fixed_volume, is_label=True)
        write_field(tmp / FIELD_NAME, result, fixed_volume, field_format)
        write_json(tmp / SUMMARY_NAME, summary)
    return summary
