"""Segment whole volumes with a 2D segmentor.

A 2D segmentor runs slice by slice along the axis it was trained on; predictions are mapped back
from the training grid to the source grid (probabilities resampled linearly, then argmax) and
written with the input's affine and header. The slice-stack building blocks are
:mod:`jointreg.inference.predict`; the inputs are expanded by :mod:`jointreg.inference.case_inputs`.

Inputs whose geometry differs from the training data are still segmented, with a warning:

* **orientation** (nibabel axis codes such as ``RAS``/``LPS``): when every training volume had
  one orientation and the input has another, the input's array is flipped/permuted into the
  training orientation (exact, no interpolation), segmented, and the result is mapped back, so
  the segmentor sees the anatomy the way it was trained and the output overlays the input;
* **spacing**: the slicer resamples every slice onto the training grid anyway, but when the
  in-plane spacing, or the millimetres per training pixel, differ by more than 50 % from the
  training data's the anatomy looks different to the network: a warning says so.

The training geometry is read from ``config["extra"]["training_geometry"]`` of the model folder
(:func:`describe_training_geometry`, written at export time); models without it are not checked.

:func:`segment_inputs` segments many inputs into one output folder, resumably and in shards; the
bookkeeping of that folder (``segmentation.json``, the shards' records, resuming, completing it,
:func:`merge_segmentations`) is :mod:`jointreg.inference.segment_job`'s.

Example:
    >>> summary = segment_inputs("runs/demo/export/segmentor", ["scans/"], "predictions")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jointreg.data.nifti import Volume
from jointreg.data.orientation import Reorientation, reorient
from jointreg.data.slices import SlicedVolume, SliceSpec
from jointreg.errors import ConfigError, InputError
from jointreg.inference.case_inputs import check_output_folder, collect_inputs
from jointreg.inference.predict import segment_sliced_volume
from jointreg.inference.run_models import resolve_model_folder
from jointreg.inference.segment_job import (
    MANIFEST_NAME, PROBABILITIES_DIR, JobRecord, Plan, check_shared, discard, finish, job_settings,
    merge_segmentations, output_files, plan_resume, prepare_folder, refuse_existing, sha256_file,
)
from jointreg.inference.shards import Shard, refuse_overwrite

__all__ = [
    "MANIFEST_NAME", "PROBABILITIES_DIR", "SPACING_TOLERANCE", "TRAINING_GEOMETRY", "Segmentation",
    "describe_training_geometry", "geometry_warnings", "merge_segmentations", "orientation_codes",
    "segment_inputs", "segment_volume", "training_orientation",
]

log = logging.getLogger(__name__)

TRAINING_GEOMETRY = "training_geometry"
# Relative in-plane spacing difference above which the input is reported as unlike the training data.
SPACING_TOLERANCE = 0.5


# --------------------------------------------------------------------------------------------
# geometry of the training data, and checks of new inputs against it
# --------------------------------------------------------------------------------------------
def orientation_codes(affine: np.ndarray) -> str:
    """nibabel axis codes of an affine, e.g. ``"RAS"`` or ``"LPS"`` (closest axes for oblique ones)."""
    import nibabel as nib

    return "".join(str(c) for c in nib.aff2axcodes(np.asarray(affine)))


def describe_training_geometry(volumes: Sequence[SlicedVolume]) -> dict[str, Any]:
    """What new inputs are compared with; stored in ``config["extra"]["training_geometry"]``.

    Args:
        volumes: the sliced training volumes.

    Returns:
        ``orientations`` (axis codes → number of volumes), the median ``in_plane_spacing``
        ``[sh, sw]`` mm of the source slices, the median ``pixel_spacing`` (mm per training
        pixel), the slicing ``axes`` used, and the number of ``volumes``.
    """
    if not volumes:
        return {}
    codes = Counter(orientation_codes(v.reference.affine) for v in volumes)
    in_plane = np.median(np.array([v.geometry.source_spacing for v in volumes], dtype=np.float64), axis=0)
    pixel = np.median(np.array([v.geometry.spacing for v in volumes], dtype=np.float64), axis=0)
    return {
        "orientations": dict(sorted(codes.items())),
        "in_plane_spacing": [round(float(s), 4) for s in in_plane],
        "pixel_spacing": [round(float(s), 4) for s in pixel],
        "axes": sorted({int(v.axis) for v in volumes}),
        "volumes": len(volumes),
    }


def training_orientation(training: Mapping[str, Any] | None) -> str | None:
    """The training data's orientation when all its volumes shared one, else ``None``."""
    orientations = (training or {}).get("orientations") or {}
    return next(iter(orientations)) if len(orientations) == 1 else None


def geometry_warnings(
    image: Volume, spec: SliceSpec, training: Mapping[str, Any] | None, *, tolerance: float = SPACING_TOLERANCE
) -> list[str]:
    """Ways in which ``image`` differs from the training data (empty when it does not, or unknown).

    Args:
        image: the input volume (already in the training orientation).
        spec: the model's slicing settings.
        training: :func:`describe_training_geometry` of the model, or ``None``.
        tolerance: relative spacing difference that is reported.
    """
    from jointreg.data.slices import PlaneGeometry, through_plane_axis

    if not training or "in_plane_spacing" not in training:
        return []
    axis = spec.axis if spec.axis is not None else through_plane_axis(image.spacing)
    in_plane = [a for a in range(3) if a != axis]
    spacing = [float(image.spacing[a]) for a in in_plane]
    reference = [float(s) for s in training["in_plane_spacing"]]
    messages = []
    relative = max(abs(s - r) / r for s, r in zip(spacing, reference))
    if relative > tolerance:
        messages.append(
            f"in-plane spacing {spacing[0]:.3g} × {spacing[1]:.3g} mm differs by {relative:.0%} from the training "
            f"data's {reference[0]:.3g} × {reference[1]:.3g} mm; the slices are resampled to the training grid "
            "anyway, check the result"
        )
    if "pixel_spacing" in training:
        geometry = PlaneGeometry((image.shape[in_plane[0]], image.shape[in_plane[1]]), spacing, spec.size)
        seen = float(np.mean(geometry.spacing))
        trained = float(np.mean(training["pixel_spacing"]))
        ratio = seen / trained
        if max(ratio, 1.0 / ratio) > 1.0 + tolerance:
            messages.append(
                f"the field of view maps to {seen:.3g} mm per training pixel against {trained:.3g} mm in training: "
                f"the anatomy appears {1.0 / ratio:.2f}× its trained size to the segmentor"
            )
    return messages


def _reorient(image: Volume, codes: str) -> tuple[Volume, Reorientation | None]:
    """``image`` flipped/permuted into orientation ``codes``, and the way back (``None``: unchanged).

    The rule (exact flips/permutations, affine keeping world positions) is
    :func:`jointreg.data.orientation.reorient`'s.
    """
    working, change = reorient(image, codes)
    return (image, None) if change.is_identity else (working, change.inverse())


def _orient_back(array: np.ndarray, back: Reorientation | None, *, channels_first: bool = False) -> np.ndarray:
    """``array`` (``(X, Y, Z)``, or ``(K, X, Y, Z)`` with ``channels_first``) in the input's orientation."""
    return array if back is None else back.apply(array, channels_first=channels_first)


# --------------------------------------------------------------------------------------------
# one volume
# --------------------------------------------------------------------------------------------
@dataclass
class Segmentation:
    """The result of :func:`segment_volume`, in the input volume's geometry.

    Attributes:
        labels: ``(X, Y, Z)`` int16 class ids of the model's label map.
        probabilities: ``(K, X, Y, Z)`` float32 softmax probabilities, or ``None``.
        warnings: geometry warnings (also logged).
        reoriented: the orientation the input was segmented in, when it was reoriented.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None
    warnings: list[str]
    reoriented: str | None = None


def segment_volume(
    model: Any,
    image: Volume,
    *,
    modality: str | None = None,
    batch_size: int = 16,
    device: torch.device | None = None,
    probabilities: bool = False,
    case: str = "",
) -> Segmentation:
    """Segment one 3D volume with a loaded 2D segmentor (a :class:`~jointreg.export.model_folder.LoadedModel`).

    Args:
        model: the loaded segmentor model folder.
        image: the volume, any orientation and spacing.
        modality: channel name that selects the intensity normalisation (default: the model's).
        batch_size: slices per forward pass.
        device: where to run (default: the model's device).
        probabilities: also return the class probabilities.
        case: name used in messages.

    Returns:
        A :class:`Segmentation` in ``image``'s array shape and orientation.
    """
    from jointreg.data.slices import slice_volume

    spec = SliceSpec.from_dict(model.preprocessing)
    training = model.config.get("extra", {}).get(TRAINING_GEOMETRY)
    name = case or (image.path.name if image.path is not None else "volume")
    warnings: list[str] = []
    working, back = image, None
    wanted = training_orientation(training)
    if wanted is not None:
        have = orientation_codes(image.affine)
        working, back = _reorient(image, wanted)
        if back is not None:
            warnings.append(
                f"orientation {have} differs from the training data's {wanted}: segmented in {wanted} "
                "(exact flip/permutation) and written back in the input's geometry"
            )
    warnings += geometry_warnings(working, spec, training)
    for message in warnings:
        log.warning("%s: %s", name, message)
    sliced = slice_volume(
        working, None, spec, modality=modality if modality else model.modality, ignore_label=None, case=name
    )
    from jointreg.inference.postprocess import largest_component_classes

    labels, probs = segment_sliced_volume(
        model.model, sliced, batch_size=batch_size, device=device, return_probabilities=probabilities,
        largest_component=largest_component_classes(model.config),
    )
    labels = _orient_back(labels, back)
    if probs is not None:
        probs = _orient_back(probs, back, channels_first=True)
    return Segmentation(labels, probs, warnings, wanted if back is not None else None)


# --------------------------------------------------------------------------------------------
# many inputs: resumable, and nothing left that blocks the corrected command
# (the bookkeeping is jointreg.inference.segment_job's)
# --------------------------------------------------------------------------------------------
def segment_inputs(
    model: str | PathLike[str],
    inputs: Sequence[str | PathLike[str]],
    out: str | PathLike[str],
    *,
    probabilities: bool = False,
    batch_size: int = 16,
    device: Any = "auto",
    overwrite: bool = False,
    shard: Shard | None = None,
    progress: bool = True,
    backend: str = "torch",
) -> dict[str, Any]:
    """Segment NIfTI files, folders or datasets with a segmentor model folder.

    Writes ``OUT/{case}.nii.gz`` (labels, the input's affine and header), with ``probabilities``
    also ``OUT/probabilities/{case}.nii.gz`` (float32 ``(X, Y, Z, K)``, class ``k`` in volume
    ``k``), and ``OUT/segmentation.json`` (model and weights digest, labels, settings, this call's
    cases with their input's digest and warnings), rewritten after every case: it lists finished
    cases only, ``"complete": false`` until the last one. **Resumable**: the same call again keeps
    the cases done (same model, settings and input bytes) and segments the others, so the files
    equal one uninterrupted call's. A call that finishes no case leaves nothing behind.

    **Sharded** (``shard``, :mod:`jointreg.inference.shards`): the call segments only its share
    of the cases (sorted names, case ``k`` to shard ``k % N``) into an ``out`` shared with the
    other shards. The first shard creates ``segmentation.json`` (``"complete": false``, every
    case planned, none recorded); the others join only with the same settings and inputs. Each
    shard records its finished cases in its own ``segmentation.shard-I-of-N.json`` (one file per
    writer, so no update is lost), and the shard that finds every case of the job finished writes
    the complete ``segmentation.json`` and removes the records: the files then equal those of
    one unsharded call. A shard replaces and deletes nothing of another job (no ``overwrite``)
    and, when it fails, leaves the shared files to the others.

    Args:
        model: a segmentor model folder, or a run folder (its ``export/segmentor``).
        inputs: NIfTI files, folders of them, or dataset folders.
        out: output folder (created).
        probabilities: also write class probabilities.
        batch_size: slices per forward pass.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        overwrite: replace existing outputs; without it an existing output that is not a case
            already done (see above) is an error raised before anything is written.
        shard: segment only this shard's cases; ``None``: every case.
        progress: show a progress bar.
        backend: ``torch``, ``onnxruntime`` (:mod:`jointreg.inference.onnx_runtime`; CPU,
            the same labels to float rounding, so not one of the job's settings) or
            ``torch-bfloat16`` (:mod:`jointreg.inference.autocast`; labels that may differ, so
            the job's settings record it).

    Returns:
        The manifest written to ``segmentation.json``, plus ``already_done`` (cases kept from an
        earlier call; not written), ``shard`` (``"I/N"`` or ``None``), ``total`` (the job's
        cases, every shard's) and ``missing`` (those still unfinished: other shards'). For a
        shard, ``cases`` holds its own cases and ``complete`` says whether the whole job is.

    Raises:
        InputError: bad model folder or inputs, an output folder that is an input folder or
            cannot be written, existing outputs without ``overwrite``, for a shard a folder of
            another job (other settings or inputs).
        ConfigError: ``overwrite`` with ``shard``.
    """
    from tqdm.auto import tqdm

    from jointreg.utils.atomic import check_writable_output
    from jointreg.utils.device import resolve_device

    from jointreg.inference.onnx_runtime import check_backend, segmentor_backend

    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    check_backend(backend, str(device))
    refuse_overwrite(shard, overwrite)
    folder = resolve_model_folder(model, "segmentor")
    out = Path(out)
    check_writable_output(out)
    items = collect_inputs(inputs)
    check_output_folder(out, items, [Path(p) for p in inputs])
    targets = output_files(out, probabilities)
    torch_device = resolve_device(device)
    loaded = _load_segmentor(folder, torch_device)
    settings = job_settings(folder, loaded, probabilities, backend)
    loaded.model = segmentor_backend(loaded.model, backend)
    planned = [item.case for item in items]
    mine = _shard_items(items, shard)
    if shard is not None:
        check_shared(out, settings, planned)
    digests = {item.case: sha256_file(item.path) for item in mine}
    plan = Plan({}, set()) if overwrite else plan_resume(out, settings, mine, digests, targets)
    refuse_existing(mine, plan, targets, overwrite)
    my_cases = [item.case for item in mine]
    created, earlier = prepare_folder(out, shard, my_cases)
    record = JobRecord(out, settings, planned, my_cases, shard, dict(plan.done))
    todo = [item for item in mine if item.case not in plan.done]
    if plan.done:
        log.info("%d of %d case(s) already done in %s; segmenting the other %d", len(plan.done), len(mine), out, len(todo))
    try:
        record.start()
        for item in tqdm(todo, desc="segment", unit="case", disable=None if progress else True):
            entry = _segment_case(loaded, item, out, digests[item.case], batch_size=batch_size, device=torch_device,
                                  probabilities=probabilities)
            record.add(item.case, entry)
    except BaseException:
        # A shard never undoes: the folder and segmentation.json are the other shards' too.
        if not record.cases and shard is None:
            discard(out, created, earlier)
        raise
    return finish(record, items, digests, targets, plan.done)


def _load_segmentor(folder: Path, device: torch.device) -> Any:
    """The 2D segmentor of a model folder, loaded onto ``device``."""
    from jointreg.export.model_folder import load_model_folder

    loaded = load_model_folder(folder, device=device, kind="segmentor")
    if loaded.spatial_dims != 2:
        raise InputError(folder, f"segment needs a 2D segmentor; this one has spatial_dims={loaded.spatial_dims}")
    return loaded


def _shard_items(items: list[Any], shard: Shard | None) -> list[Any]:
    """The inputs this call segments: all of them, or its shard's (in input order)."""
    if shard is None:
        return items
    chosen = set(shard.select([item.case for item in items]))
    mine = [item for item in items if item.case in chosen]
    if not mine:
        log.warning("shard %s has no case: the job has %d", shard, len(items))
    return mine


def _segment_case(
    loaded: Any, item: Any, out: Path, digest: str, *, batch_size: int, device: torch.device, probabilities: bool
) -> dict[str, Any]:
    """Segment one input into ``out`` (labels, and probabilities when asked for); returns its manifest entry."""
    from jointreg.data.nifti import read_image, write_volume

    image = read_image(item.path)
    result = segment_volume(
        loaded, image, modality=item.modality, batch_size=batch_size, device=device,
        probabilities=probabilities, case=item.case,
    )
    write_volume(out / f"{item.case}.nii.gz", result.labels, reference=image, is_label=True)
    if result.probabilities is not None:
        write_volume(out / PROBABILITIES_DIR / f"{item.case}.nii.gz", np.moveaxis(result.probabilities, 0, -1), reference=image)
    entry = {"input": str(item.path), "input_sha256": digest, "modality": item.modality, "warnings": result.warnings}
    if result.reoriented:
        entry["segmented_in"] = result.reoriented
    return entry
