"""Segment 2D slice stacks and whole volumes with a 2D segmentor.

A 2D segmentor runs slice by slice along the axis it was trained on; predictions are mapped back
from the training grid to the source grid (probabilities resampled linearly, then argmax) and
written with the input's affine and header.

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
from jointreg.data.slices import SlicedVolume, SliceSpec
from jointreg.errors import ConfigError, InputError

log = logging.getLogger(__name__)

TRAINING_GEOMETRY = "training_geometry"
# Relative in-plane spacing difference above which the input is reported as unlike the training data.
SPACING_TOLERANCE = 0.5
PROBABILITIES_DIR = "probabilities"
MANIFEST_NAME = "segmentation.json"


@torch.no_grad()
def predict_stack(
    segmentor: torch.nn.Module, images: np.ndarray, *, batch_size: int = 16, device: torch.device | None = None
) -> np.ndarray:
    """Class probabilities for a stack of normalised slices.

    Args:
        segmentor: maps ``(B, 1, H, W)`` to logits ``(B, K, H, W)``.
        images: ``(S, H, W)`` float32 in the training grid.
        batch_size: slices per forward pass.
        device: where to run (default: the segmentor's device).

    Returns:
        ``(S, K, H, W)`` float32 softmax probabilities.
    """
    if device is None:
        device = next(segmentor.parameters()).device
    was_training = segmentor.training
    segmentor.eval()
    out = []
    for start in range(0, images.shape[0], batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size], np.float32))
        logits = segmentor(chunk.unsqueeze(1).to(device))
        out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    segmentor.train(was_training)
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def channel_argmax(probs: np.ndarray, axis: int = 0) -> np.ndarray:
    """``probs.argmax(axis)`` as int16 (ties: the lowest channel), fast for a few channels.

    numpy's and torch's argmax over a non-last axis of a large array are slow on CPUs; a running
    maximum over the channels is a few elementwise passes.
    """
    probs = np.moveaxis(np.asarray(probs), axis, 0)
    best = np.array(probs[0], dtype=np.float32, copy=True)
    index = np.zeros(best.shape, dtype=np.int16)
    for channel in range(1, probs.shape[0]):
        better = probs[channel] > best
        index[better] = channel
        np.maximum(best, probs[channel], out=best)
    return index


def segment_sliced_volume(
    segmentor: torch.nn.Module,
    volume: SlicedVolume,
    *,
    batch_size: int = 16,
    device: torch.device | None = None,
    return_probabilities: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Segment a sliced volume and return labels in the SOURCE volume's shape and axis order.

    Returns:
        ``labels`` (source shape, uint8/int16) and, when asked, ``probabilities``
        (``(K, *source shape)`` float32).
    """
    probs = predict_stack(segmentor, volume.images, batch_size=batch_size, device=device)
    source_probs = volume.to_volume(probs, "probabilities")  # (K, X, Y, Z)
    labels = channel_argmax(source_probs, 0)
    return labels, (source_probs.astype(np.float32) if return_probabilities else None)


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


def _reorient(image: Volume, codes: str) -> tuple[Volume, np.ndarray | None]:
    """``image`` flipped/permuted into orientation ``codes``, and the transform back (``None``: unchanged)."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

    source = io_orientation(image.affine)
    target = axcodes2ornt(tuple(codes))
    forward = ornt_transform(source, target)
    if np.array_equal(forward, [[0, 1], [1, 1], [2, 1]]):
        return image, None
    array = np.ascontiguousarray(apply_orientation(image.array, forward))
    affine = np.asarray(image.affine) @ inv_ornt_aff(forward, image.shape)
    return Volume(array, affine, image.header, image.path), ornt_transform(target, source)


def _orient_back(array: np.ndarray, back: np.ndarray | None, *, channels_first: bool = False) -> np.ndarray:
    from nibabel.orientations import apply_orientation

    if back is None:
        return array
    if channels_first:  # (K, X, Y, Z): apply_orientation works on the leading axes
        return np.ascontiguousarray(np.moveaxis(apply_orientation(np.moveaxis(array, 0, -1), back), -1, 0))
    return np.ascontiguousarray(apply_orientation(array, back))


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
    labels, probs = segment_sliced_volume(
        model.model, sliced, batch_size=batch_size, device=device, return_probabilities=probabilities
    )
    labels = _orient_back(labels, back)
    if probs is not None:
        probs = _orient_back(probs, back, channels_first=True)
    return Segmentation(labels, probs, warnings, wanted if back is not None else None)


# --------------------------------------------------------------------------------------------
# many inputs
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentInput:
    """One volume to segment.

    Attributes:
        case: output name (``{case}.nii.gz``).
        path: the image file.
        modality: the channel name of the dataset it comes from, or ``None`` (use the model's).
    """

    case: str
    path: Path
    modality: str | None = None


def _case_name(path: Path) -> str:
    from jointreg.data.dataset import CHANNEL_SUFFIX
    from jointreg.data.nifti import strip_nifti_suffix

    name = strip_nifti_suffix(path.name)
    # nnU-Net image names carry the channel: case_0000.nii.gz is case "case".
    return name[: -len(CHANNEL_SUFFIX)] if name.endswith(CHANNEL_SUFFIX) and len(name) > len(CHANNEL_SUFFIX) else name


def _nifti_files(folder: Path) -> list[Path]:
    from jointreg.data.nifti import is_nifti
    from jointreg.utils.atomic import TMP_PREFIX

    return sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p) and not p.name.startswith((".", TMP_PREFIX)))


def collect_inputs(inputs: Sequence[str | PathLike[str]]) -> list[SegmentInput]:
    """Expand files, folders of NIfTI files and dataset folders into volumes to segment.

    A dataset folder (with ``dataset.json``) contributes the cases of ``imagesTr`` and
    ``imagesTs`` with its channel name; a plain folder contributes its ``.nii``/``.nii.gz``
    files (not recursive); ``{case}_0000.nii.gz`` is named ``{case}``.

    Raises:
        InputError: a missing path, a file that is not NIfTI, an empty folder, or two inputs
            with the same case name.
    """
    from jointreg.data.dataset import Dataset
    from jointreg.data.nifti import is_nifti

    found: list[SegmentInput] = []
    if not inputs:
        raise ConfigError("no input given")
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise InputError(path, "not found")
        if path.is_file():
            if not is_nifti(path):
                raise InputError(path, "not a NIfTI file (.nii or .nii.gz)")
            found.append(SegmentInput(_case_name(path), path))
        elif (path / "dataset.json").is_file():
            dataset = Dataset.open(path)
            before = len(found)
            for split in ("Tr", "Ts"):
                for case in dataset.cases(split):
                    found.append(SegmentInput(case, dataset.image_path(case, split), dataset.spec.modality))
            if len(found) == before:
                raise InputError(path, "dataset has no images in imagesTr/ or imagesTs/")
        else:
            files = _nifti_files(path)
            if not files:
                raise InputError(path, "folder holds no .nii or .nii.gz file")
            found += [SegmentInput(_case_name(p), p) for p in files]
    seen: dict[str, Path] = {}
    for item in found:
        if item.case in seen:
            raise InputError(item.path, f"case name {item.case!r} is also given by {seen[item.case]}; outputs would collide")
        seen[item.case] = item.path
    return found


def resolve_model_folder(path: str | PathLike[str], kind: str) -> Path:
    """A model folder of ``kind``, given the folder itself or a run folder (``RUN/export/{kind}``).

    Raises:
        InputError: a run folder without that export, or a folder that is neither.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "model folder not found")
    if (path / "config.json").exists() or not (path / "recipe.yaml").exists():
        return path
    exported = path / "export" / kind
    if not exported.is_dir():
        raise InputError(
            path, f"run folder has no exported {kind} (export/{kind} is missing: the run did not finish, "
            "or it trained no such network); finish it with 'jointreg train --resume RUN'"
        )
    return exported


def _is_same_or_inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def check_output_folder(out: Path, inputs: Sequence[SegmentInput], input_roots: Sequence[Path] = ()) -> None:
    """Refuse an output folder that is an input folder (outputs would mix with, or replace, inputs).

    Raises:
        InputError: ``out`` is the folder of an input file, or an input folder / dataset folder.
    """
    folders = {p.parent.resolve() for p in (i.path for i in inputs)} | {Path(r).resolve() for r in input_roots if Path(r).is_dir()}
    for folder in sorted(folders):
        if out.resolve() == folder:
            raise InputError(out, "the output folder is an input folder; choose another --out")
    for root in input_roots:
        root = Path(root)
        if root.is_dir() and (root / "dataset.json").is_file() and _is_same_or_inside(out, root):
            raise InputError(out, f"the output folder lies inside the input dataset {root}; choose another --out")


def segment_inputs(
    model: str | PathLike[str],
    inputs: Sequence[str | PathLike[str]],
    out: str | PathLike[str],
    *,
    probabilities: bool = False,
    batch_size: int = 16,
    device: Any = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Segment NIfTI files, folders or datasets with a segmentor model folder.

    Writes ``OUT/{case}.nii.gz`` (labels, the input's affine and header), with ``probabilities``
    also ``OUT/probabilities/{case}.nii.gz`` (float32, 4D ``(X, Y, Z, K)``: class ``k`` in volume
    ``k`` of the 4th axis), and ``OUT/segmentation.json`` (model, labels, and this call's cases with their warnings).

    Args:
        model: a segmentor model folder, or a run folder (its ``export/segmentor``).
        inputs: NIfTI files, folders of them, or dataset folders.
        out: output folder (created).
        probabilities: also write class probabilities.
        batch_size: slices per forward pass.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        overwrite: replace existing outputs; without it an existing output is an error raised
            before anything is written.
        progress: show a progress bar.

    Returns:
        The manifest written to ``segmentation.json``.

    Raises:
        InputError: bad model folder or inputs, an output folder that is an input folder,
            existing outputs without ``overwrite``.
    """
    from tqdm.auto import tqdm

    from jointreg.data.nifti import read_image, write_volume
    from jointreg.export.model_folder import load_model_folder
    from jointreg.utils.atomic import remove_stale_temporaries, write_json
    from jointreg.utils.device import resolve_device

    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    folder = resolve_model_folder(model, "segmentor")
    out = Path(out)
    items = collect_inputs(inputs)
    check_output_folder(out, items, [Path(p) for p in inputs])
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    targets = [out / f"{item.case}.nii.gz" for item in items]
    if probabilities:
        targets += [out / PROBABILITIES_DIR / f"{item.case}.nii.gz" for item in items]
    existing = [t for t in targets if t.exists()]
    if existing and not overwrite:
        raise InputError(existing[0], f"already exists ({len(existing)} output file(s) would be replaced; pass --overwrite)")
    torch_device = resolve_device(device)
    loaded = load_model_folder(folder, device=torch_device, kind="segmentor")
    if loaded.spatial_dims != 2:
        raise InputError(folder, f"segment needs a 2D segmentor; this one has spatial_dims={loaded.spatial_dims}")
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    remove_stale_temporaries(out / PROBABILITIES_DIR)
    cases: dict[str, Any] = {}
    for item in tqdm(items, desc="segment", unit="case", disable=None if progress else True):
        image = read_image(item.path)
        result = segment_volume(
            loaded, image, modality=item.modality, batch_size=batch_size, device=torch_device,
            probabilities=probabilities, case=item.case,
        )
        write_volume(out / f"{item.case}.nii.gz", result.labels, reference=image, is_label=True)
        if result.probabilities is not None:
            write_volume(out / PROBABILITIES_DIR / f"{item.case}.nii.gz", np.moveaxis(result.probabilities, 0, -1), reference=image)
        cases[item.case] = {"input": str(item.path), "warnings": result.warnings}
        if result.reoriented:
            cases[item.case]["segmented_in"] = result.reoriented
    manifest = {
        "model": str(folder.resolve()),
        "labels": loaded.labels,
        "modality": loaded.modality,
        "preprocessing": loaded.preprocessing,
        "probabilities": "probabilities/{case}.nii.gz: float32 (X, Y, Z, K), class k in volume k" if probabilities else None,
        "cases": cases,
    }
    write_json(out / MANIFEST_NAME, manifest)
    return manifest

