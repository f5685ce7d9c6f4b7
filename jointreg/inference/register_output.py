"""What registration produces on the fixed grid: the result, the displacement field and its file.

Field formats (``FIELD_FORMATS``; the module docstring of :mod:`jointreg.inference.register`
has the table): ``ants`` (mm, ITK's LPS frame, ``NIFTI_INTENT_VECTOR``), ``nifti`` (mm, RAS+,
``NIFTI_INTENT_DISPVECT``) and ``voxel`` (fixed-grid voxels, channels last). All three use the
pull convention ``warped(x) = moving(x + d(x))``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from jointreg.data.nifti import Volume
from jointreg.errors import ConfigError

FIELD_FORMATS = ("ants", "nifti", "voxel")

_INTENT = {"ants": 1007, "nifti": 1006}  # NIFTI_INTENT_VECTOR, NIFTI_INTENT_DISPVECT
_LPS = np.array([-1.0, -1.0, 1.0])


@dataclass
class RegistrationResult:
    """What :func:`~jointreg.inference.register.register_volumes` computes, on the fixed image's grid.

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
            for 3D models) and model-grid metrics ``ncc``, ``nmi``, ``ssim`` (each also as
            ``identity_*``: before registration), ``folding_percent``, ``sdlogj``.
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
        keys = ("ncc", "identity_ncc", "nmi", "identity_nmi", "ssim", "identity_ssim", "folding_percent", "sdlogj")
        means = {k: float(np.mean([p[k] for p in self.pairs])) for k in keys} if self.pairs else {}
        return {"pairs": len(self.pairs), **means}


def _world(affine: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """``(*S, 3)`` world positions of ``(3, *S)`` voxel coordinates."""
    a = np.asarray(affine, np.float64)
    return np.einsum("ij,j...->...i", a[:3, :3], coords.astype(np.float64)) + a[:3, 3]


def displacements(
    moving: Volume, fixed: Volume, coords: np.ndarray, registered: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """World and fixed-voxel displacements of the fixed voxels, from where they land in the moving image.

    Args:
        moving, fixed: the 3D volumes (their affines are used).
        coords: ``(3, *S)`` moving voxel coordinates of every fixed voxel, ``S`` the fixed shape.
        registered: ``S`` bool; the displacement is 0 elsewhere.

    Returns:
        ``(*S, 3)`` float32 millimetres (RAS+) and ``(*S, 3)`` float32 fixed-grid voxels.
    """
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


def write_field(path: str | PathLike[str], result: RegistrationResult, fixed: Volume, field_format: str = "ants") -> Path:
    """Write the displacement field as NIfTI with the fixed image's affine (atomically).

    See :data:`FIELD_FORMATS` and the docstring of :mod:`jointreg.inference.register`.
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
