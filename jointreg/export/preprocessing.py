"""The resolved input pipeline of an exported model: what ``jointreg segment`` does, as data.

``config.json``'s ``preprocessing`` holds the settings (:class:`~jointreg.data.slices.SliceSpec`:
``"normalization": "auto"``, a size, a window). A deployment without jointreg also needs what
they resolve to for the model's modality, and the rules applied around them: how the volume is
read, oriented and sliced, the normalisation formula, how a slice is resized and padded onto the
training grid, and how the logits become labels in the input's geometry. :func:`describe_pipeline`
writes all of it out, step by step, in the order it is applied.

It is stored twice: in the exported model folders (``config["extra"]["pipeline"]``, written at
the end of training) and, recomputed from the model folder, in the ``{kind}.json`` next to every
TorchScript / ONNX export. ``examples/deploy_onnx.py`` implements it with numpy, onnxruntime
and nibabel only, and is tested to reproduce ``jointreg segment``'s labels voxel for voxel.
"""

from __future__ import annotations

from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

from jointreg.data.slices import SliceSpec
from jointreg.data.slices.status import _SPACING_RTOL
from jointreg.errors import ConfigError, InputError

PIPELINE = "pipeline"  # key of config["extra"] and of the standalone exports' metadata
PIPELINE_VERSION = 1
REFERENCE_SCRIPT = "examples/deploy_onnx.py"

# The steps' rules, in words a deployment can implement; the values come from the model.
_READ = (
    "NIfTI voxel data with the header's scl_slope / scl_inter applied (nibabel's dataobj), cast to "
    "float32; trailing axes of length 1 are dropped and the rest must be 3D. Spacing (mm) of array "
    "axis a = the norm of column a of the affine's 3x3 part"
)
_ORIENTATION = (
    "when target is set (every training volume had that orientation), the array axes are flipped and "
    "permuted (no interpolation) into it: nibabel.orientations.ornt_transform(io_orientation(affine), "
    "axcodes2ornt(target)) applied with apply_orientation, the affine becoming affine @ "
    "inv_ornt_aff(transform, shape); the labels are moved back with the inverse transform. "
    "null: the volume is used as it is"
)
_AXIS_AUTO = (
    "null: the array axis with the largest spacing; spacings within a relative {rtol:g} of the largest "
    "tie, and the last tied axis wins (an isotropic volume is sliced along axis 2)"
)
_SLICES = (
    "slice k = the volume's k-th plane along the slice axis, its two remaining array axes in their "
    "order as (h, w); every slice of the volume is segmented"
)
_FORMULAS = {
    "ct": "(clip(x, low, high) - float32(low)) / float32(high - low) with (low, high) = window (HU), "
          "then clipped to [0, 1], float32",
    "mr": "(low, high) = numpy.percentile(volume, percentiles) over every voxel of the volume (linear "
          "interpolation, computed on the float32 array); then (clip(x, low, high) - float32(low)) / "
          "float32(high - low), clipped to [0, 1], float32; a volume with high <= low gives zeros",
    "none": "x unchanged (float32)",
}
_GRID = {
    "scale": "mm per training pixel = max(h * sh / H, w * sw / W) for a source slice of h x w pixels at "
             "sh x sw mm: one factor for both axes, and the whole field of view fits",
    "resized_shape": "(rh, rw) = (max(1, min(H, floor(h * sh / scale + 0.5))), max(1, min(W, floor(w * sw / "
                     "scale + 0.5))))",
    "padding": "the resized slice is centred: top = (H - rh) // 2, left = (W - rw) // 2, the extra pixel of "
               "an odd padding goes after (bottom / right); padded pixels are 0.0",
    "interpolation": "bilinear with align_corners=False (pixel edges aligned, source coordinate "
                     "(i + 0.5) * in / out - 0.5) as torch.nn.functional.interpolate; when either axis "
                     "shrinks, antialiased (antialias=True: a triangle filter widened by the shrink "
                     "factor, weights normalised per output pixel), along the last axis first; a slice "
                     "already of shape (rh, rw) is not resampled",
}
_OUTPUT = {
    "probabilities": "softmax of the logits over the class axis, float32",
    "resize_back": "the padding is cropped and each class's probabilities are resized bilinearly "
                   "(align_corners=False, never antialiased) from (rh, rw) back to (h, w); the slices are "
                   "stacked back along the slice axis",
    "labels": "argmax over the classes (ties go to the lowest id); ids are those of 'labels'",
    "largest_component": "for each class listed, only its largest 3D face-connected (6-neighbour) component "
                         "is kept, the rest set to 0 (equal sizes: the component met first in C order); "
                         "applied on the oriented grid, before the labels are moved back",
    "written": "labels as uint8 (int16 above 255) with the input's affine and header",
}


def describe_pipeline(
    kind: str, preprocessing: Mapping[str, Any], modality: str, extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The input (and, for a segmentor, output) pipeline of a model, resolved for its modality.

    Args:
        kind: ``segmentor`` or ``registration``.
        preprocessing: the model's ``config["preprocessing"]`` (a :class:`SliceSpec` as a dict).
        modality: the model's channel name; it resolves ``"auto"`` normalisation.
        extra: the model's ``config["extra"]``: ``training_geometry`` (the orientation inputs
            are moved into) and ``postprocessing`` (the largest-component classes).

    Returns:
        A JSON-ready dict: ``read``, ``orientation``, ``slice_axis``, ``normalization``,
        ``grid`` (training size, scale, resize and padding rules), ``network`` and, for a
        segmentor, ``output``. Each step holds its resolved values and the rule in words.

    Raises:
        ConfigError: ``preprocessing`` is not a valid :class:`SliceSpec`.
    """
    spec = SliceSpec.from_dict(preprocessing)
    extra = dict(extra or {})
    method = spec.resolve_normalization(modality)
    normalization: dict[str, Any] = {"method": method, "setting": spec.normalization, "modality": modality}
    if method == "ct":
        normalization["window"] = list(spec.ct_window)
    elif method == "mr":
        normalization["percentiles"] = list(spec.mr_percentiles)
    normalization["formula"] = _FORMULAS[method]
    if spec.normalization == "auto":
        normalization["note"] = (
            "chosen from the model's modality; jointreg segment given a dataset folder chooses again from "
            "that dataset's channel name"
        )
    orientations = (extra.get("training_geometry") or {}).get("orientations") or {}
    target = next(iter(orientations)) if len(orientations) == 1 else None
    height, width = spec.size
    pipeline: dict[str, Any] = {
        "version": PIPELINE_VERSION,
        "reference_implementation": f"{REFERENCE_SCRIPT} (numpy + onnxruntime + nibabel)",
        "read": {"dtype": "float32", "rule": _READ},
        "orientation": {"target": target, "rule": _ORIENTATION},
        "slice_axis": {"axis": spec.axis, "rule": _AXIS_AUTO.format(rtol=_SPACING_RTOL) if spec.axis is None
                       else f"always array axis {spec.axis}", "slices": _SLICES},
        "normalization": normalization,
        "grid": {"size": [height, width], **_GRID},
    }
    if kind == "segmentor":
        pipeline["network"] = {
            "input": f"image (S, 1, {height}, {width}) float32: the S normalised slices on the grid",
            "output": f"logits (S, K, {height}, {width}), K = number of labels",
        }
        classes = [int(c) for c in (extra.get("postprocessing") or {}).get("largest_component", [])]
        pipeline["output"] = {**_OUTPUT, "largest_component_classes": classes}
    else:
        pipeline["network"] = {
            "input": f"moving, fixed (B, 1, {height}, {width}) float32: slices on the grid, normalised alike",
            "output": "warped (B, 1, H, W) and flow (B, 2, H, W) on the grid; flow in grid pixels, "
                      "warped(p) = moving(p + flow(p))",
        }
    return pipeline


def with_pipeline(
    kind: str, preprocessing: Mapping[str, Any], modality: str, extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``extra`` with its ``pipeline`` entry (:func:`describe_pipeline`), for ``save_model_folder``."""
    extra = dict(extra or {})
    extra[PIPELINE] = describe_pipeline(kind, preprocessing, modality, extra)
    return extra


def pipeline_of(config: Mapping[str, Any], folder: str | PathLike[str] | None = None) -> dict[str, Any]:
    """The pipeline of a model folder's ``config.json``, recomputed from its settings.

    Recomputed rather than read from ``extra`` so that models exported before it existed, or
    whose ``extra`` was edited since, are described by what ``jointreg segment`` does with them.

    Raises:
        InputError: invalid ``preprocessing`` settings (naming ``folder``'s ``config.json``).
    """
    try:
        return describe_pipeline(
            str(config.get("kind", "segmentor")), config.get("preprocessing") or {}, str(config.get("modality", "")),
            config.get("extra") or {},
        )
    except ConfigError as exc:
        raise InputError(Path(folder) / "config.json" if folder is not None else None, f"preprocessing: {exc}") from None
