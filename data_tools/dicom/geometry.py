"""DICOM geometry as pure functions: slice normal, voxel-to-RAS affine, pixel stack to volume.

Array axes, as dcm2niix writes them: ``i`` = DICOM column, ``j`` = DICOM row counted from the
bottom of the displayed image, ``k`` = slice, lowest position along the normal first (see
:mod:`data_tools.dicom`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal of a slice from ImageOrientationPatient (row cosine × column cosine), LPS."""
    import numpy as np

    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    normal = np.cross(row, col)
    return normal / np.linalg.norm(normal)


def dicom_affine(
    orientation: Sequence[float],
    first_position: Sequence[float],
    pixel_spacing: Sequence[float],
    slice_step: Sequence[float],
    rows: int,
) -> np.ndarray:
    """Voxel-to-RAS affine (mm) of the array built by :func:`stack_to_volume`.

    Args:
        orientation: ImageOrientationPatient: direction (LPS) of increasing column index,
            then of increasing row index.
        first_position: ImagePositionPatient (LPS, mm) of the first slice's first pixel
            (top-left as displayed).
        pixel_spacing: PixelSpacing: (distance between rows, distance between columns) in mm.
        slice_step: LPS vector (mm) from one slice's position to the next one's.
        rows: number of pixel rows (the j axis is counted from the last row).

    Returns:
        4×4 float64 affine; column 0 walks along a DICOM row, column 1 up the columns
        (bottom to top as displayed), column 2 through the slices.
    """
    import numpy as np

    row_dir, col_dir = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    row_spacing, col_spacing = float(pixel_spacing[0]), float(pixel_spacing[1])
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing
    # j runs from the last DICOM row upward (dcm2niix's convention), hence the minus sign and
    # an origin at the bottom-left pixel.
    lps[:3, 1] = -col_dir * row_spacing
    lps[:3, 2] = np.asarray(slice_step, float)
    lps[:3, 3] = np.asarray(first_position, float) + (rows - 1) * col_dir * row_spacing
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def stack_to_volume(stack: np.ndarray) -> np.ndarray:
    """``(K, rows, cols)`` DICOM/PNG pixel arrays → ``(cols, rows, K)`` volume, rows reversed.

    ``volume[i, j, k] == stack[k, rows - 1 - j, i]``; pairs with :func:`dicom_affine`.
    """
    import numpy as np

    return np.ascontiguousarray(np.transpose(stack, (2, 1, 0))[:, ::-1, :])
