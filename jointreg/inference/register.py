"""Register a moving image onto a fixed image with a trained registration model.

:func:`register_files` is ``jointreg register``; :func:`register_volumes` does the work on
:class:`~jointreg.data.nifti.Volume` objects and returns arrays.
Helpers: reading and checking inputs (:mod:`jointreg.inference.register_inputs`), the maps
between source voxels and the model grid (:mod:`jointreg.inference.register_grid`), the result
and the displacement file (:mod:`jointreg.inference.register_output`).

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
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from jointreg.data.nifti import Volume
from jointreg.errors import ConfigError, InputError, JointregError
from jointreg.inference.register_grid import (
    plane_model_coordinates, plane_source_coordinates, resample, resample_labels, volume_model_coordinates,
    volume_on_grid, volume_source_coordinates,
)
from jointreg.inference.register_inputs import (
    as_volume3, check_labels, model_preprocessing, parse_slice_map, read_input_image, read_input_labels,
)
from jointreg.inference.register_output import FIELD_FORMATS, RegistrationResult, displacements, write_field
from jointreg.utils.device import module_device

if TYPE_CHECKING:
    import torch

    from jointreg.export.model_folder import LoadedModel

__all__ = [
    "FIELD_FORMATS", "LABEL_MODES", "RegistrationResult", "parse_slice_map", "read_input_image", "read_input_labels",
    "register_files", "register_volumes", "resample", "resample_labels", "write_field",
]

log = logging.getLogger(__name__)

LABEL_MODES = ("linear", "nearest")
WARPED_NAME = "warped.nii.gz"
LABELS_NAME = "warped_labels.nii.gz"
FIELD_NAME = "displacement.nii.gz"
SUMMARY_NAME = "register.json"


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
    check_labels(moving_labels, moving)
    dims = model.spatial_dims
    if dims not in (2, 3):
        raise InputError(model.path, f"spatial_dims {dims} is not supported (2 or 3)")
    m_in = as_volume3(moving, axis, dims, "moving")
    f_in = as_volume3(fixed, axis, dims, "fixed")
    labels3 = None
    if moving_labels is not None:
        labels3 = moving_labels.array if m_in.inserted_axis is None else np.expand_dims(moving_labels.array, m_in.inserted_axis)
    spec, size3 = model_preprocessing(model)
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


def _forward(net, moving: np.ndarray, fixed: np.ndarray, device) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """Run the network on ``(B, *M)`` model-grid arrays; return the flow (CPU) and metrics."""
    import torch

    from jointreg.metrics.registration import folding_percent, ncc, nmi, sdlogj

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
                nmi=nmi(out.warped, f).cpu().numpy(), identity_nmi=nmi(m, f).cpu().numpy(),
                ssim=_ssim(out.warped, f), identity_ssim=_ssim(m, f),
                folding_percent=folding_percent(flow).cpu().numpy(), sdlogj=sdlogj(flow).cpu().numpy(),
            )
    return flow.cpu(), metrics


def _ssim(a, b) -> np.ndarray:
    """SSIM per pair with the standard 11-pixel window, or the largest odd one the grid allows
    (NaN on grids under 3 pixels)."""
    from jointreg.metrics.registration import ssim

    window = min(11, *a.shape[2:])
    window -= 1 - window % 2
    if window < 3:
        return np.full(a.shape[0], np.nan)
    return ssim(a, b, window=window).cpu().numpy()


def _not_finite(model: LoadedModel, what: str, items: list[str]) -> JointregError:
    where = f"{model.path}: " if model.path is not None else ""
    more = f" (and {len(items) - 3} more)" if len(items) > 3 else ""
    return JointregError(
        f"{where}the network produced NaN or infinite displacements for {what} {', '.join(items[:3])}{more}; "
        "its weights are not usable (a diverged training run?) — nothing was written"
    )


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
    plane_f = sliced_f.geometry.source_shape
    q_fixed = plane_model_coordinates(sliced_f.geometry)  # (2, h_f, w_f), the same for every fixed slice
    source_m = np.moveaxis(moving.array, a, 0)
    labels_m = None if labels is None else np.moveaxis(labels, a, 0)
    warped = np.zeros((n_f, *plane_f), np.float32)
    warped_labels = None if labels is None else np.zeros((n_f, *plane_f), labels.dtype)
    coords = np.zeros((3, n_f, *plane_f), np.float32)  # moving voxel coords, slice axis first
    registered = np.zeros(n_f, bool)
    records = []
    device = module_device(model.model)
    for start in range(0, len(pairs), max(1, batch_size)):
        chunk = pairs[start:start + batch_size]
        moving_index = [m for m, _ in chunk]
        fixed_index = [f for _, f in chunk]
        flow, metrics = _forward(model.model, sliced_m.images[moving_index], sliced_f.images[fixed_index], device)
        if not metrics["finite"].all():
            raise _not_finite(model, "slice pair(s)", [f"{m}->{f}" for (m, f), ok in zip(chunk, metrics["finite"]) if not ok])
        q = np.repeat(q_fixed[None], len(chunk), axis=0)
        u = resample(flow.numpy(), q)
        at = plane_source_coordinates(sliced_m.geometry, q + u)  # (B, 2, h_f, w_f) moving pixels
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
    mm, voxels = displacements(moving, fixed, coords_xyz, mask)
    return RegistrationResult(
        warped=np.moveaxis(warped, 0, a),
        warped_labels=None if warped_labels is None else np.moveaxis(warped_labels, 0, a),
        displacement_mm=mm, displacement_voxels=voxels, registered=np.ascontiguousarray(mask),
        pairs=records, axis=a,
    )


def _register_3d(model, moving, fixed, labels, spec, size, label_mode) -> RegistrationResult:
    from jointreg.data.slices import normalize_intensities
    from jointreg.inference.volume_box import VolumeBox

    if isinstance(size, VolumeBox):
        return _register_box(model, moving, fixed, labels, spec, size, label_mode)
    method = spec.resolve_normalization(model.modality)
    grid_m = size or moving.shape
    grid_f = size or fixed.shape
    if tuple(grid_m) != tuple(grid_f):
        raise InputError(
            fixed.path, f"the model has no fixed working size and the volumes differ in shape ({moving.shape} vs {fixed.shape})"
        )
    m = volume_on_grid(normalize_intensities(moving.array, method, spec), tuple(grid_m))
    f = volume_on_grid(normalize_intensities(fixed.array, method, spec), tuple(grid_f))
    q = volume_model_coordinates(fixed.shape, grid_f)
    return _warp_volume(model, moving, fixed, labels, m, f, q,
                        lambda p: volume_source_coordinates(moving.shape, grid_m, p), label_mode)


def _register_box(model, moving, fixed, labels, spec, box, label_mode) -> RegistrationResult:
    """A 3D-mode model: both volumes sliced as in training, resampled into the model's box."""
    from jointreg.data.slices import slice_volume
    from jointreg.inference.volume_box import image_box

    sliced = [slice_volume(v, None, spec, modality=model.modality, ignore_label=None, case=role)
              for v, role in ((moving, "moving"), (fixed, "fixed"))]
    m, f = (image_box(box, v) for v in sliced)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in fixed.shape], indexing="ij"))
    q = box.source_map(sliced[1]).apply(grid)
    del grid
    return _warp_volume(model, moving, fixed, labels, m, f, q, box.source_map(sliced[0]).inverse().apply, label_mode)


def _warp_volume(model, moving, fixed, labels, m, f, q, to_moving, label_mode) -> RegistrationResult:
    """Register the model-grid volumes ``m`` onto ``f``; ``q``: where each fixed voxel lies on
    the model grid; ``to_moving``: model-grid positions -> moving voxel coordinates."""
    device = module_device(model.model)
    flow, metrics = _forward(model.model, m[None], f[None], device)
    if not metrics["finite"].all():
        raise _not_finite(model, "the volume pair", [])
    u = resample(flow.numpy(), q[None])[0]
    coords = to_moving(q + u)
    del q, u
    warped = resample(moving.array[None, None], coords[None])[0, 0]
    warped_labels = None if labels is None else resample_labels(labels[None], coords[None], mode=label_mode)[0]
    registered = np.ones(fixed.shape, bool)
    mm, voxels = displacements(moving, fixed, coords, registered)
    record = {"moving": 0, "fixed": 0, **{k: float(v[0]) for k, v in metrics.items() if k != "finite"}}
    return RegistrationResult(warped, warped_labels, mm, voxels, registered, [record], axis=None)


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
    backend: str = "torch",
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
    from jointreg.data.nifti import write_volume
    from jointreg.export.model_folder import load_model_folder
    from jointreg.inference.onnx_runtime import check_backend, registration_backend
    from jointreg.utils.atomic import atomic_dir, write_json
    from jointreg.utils.device import resolve_device
    from jointreg.version import __version__

    if field_format not in FIELD_FORMATS:
        raise ConfigError(f"unknown field format {field_format!r}; valid: {', '.join(FIELD_FORMATS)}")
    check_backend(backend, str(device))
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(out, "already exists (pass --overwrite to replace it)")
    loaded = load_model_folder(model, device=resolve_device(device), kind="registration")
    loaded.model = registration_backend(loaded.model, backend)
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
        "backend": backend,
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
