"""data_tools.dicom.geometry: the affine and axis order of a series (dcm2niix's convention)."""

from __future__ import annotations

import numpy as np
import pytest

from data_tools import dicom

ROWS, COLS = 6, 8
ROW_SPACING, COL_SPACING = 0.8, 0.6


def lps_to_ras(point):
    return np.array([-point[0], -point[1], point[2]])


def axial_positions(z_values):
    return [(-100.0, -50.0, float(z)) for z in z_values]


def test_axial_series_known_affine_values_and_order(tmp_path, write_series):
    # Positions deliberately out of order; names and InstanceNumbers run the other way.
    z = [15.0, 10.0, 20.0, 12.5, 17.5]
    write_series(tmp_path / "s", axial_positions(z), rows=ROWS, cols=COLS, spacing=(ROW_SPACING, COL_SPACING))
    series = dicom.read_dicom_series(tmp_path / "s")

    expected = np.array([
        [-COL_SPACING, 0, 0, 100.0],
        [0, ROW_SPACING, 0, 50.0 - (ROWS - 1) * ROW_SPACING],
        [0, 0, 2.5, 10.0],
        [0, 0, 0, 1],
    ])
    np.testing.assert_allclose(series.affine, expected, atol=1e-9)
    assert series.array.shape == (COLS, ROWS, 5)
    assert series.array.dtype == np.float32
    # Slice k (sorted by z) came from written slice n = order[k]; stored value n*1000 + r*20 + c,
    # rescaled by slope 2 and intercept -1024; j counts rows from the bottom.
    order = np.argsort(z)
    for k, n in enumerate(order):
        for i, j in [(0, 0), (7, 5), (3, 1)]:
            stored = n * 1000 + (ROWS - 1 - j) * 20 + i
            assert series.array[i, j, k] == pytest.approx(2.0 * stored - 1024.0)
    assert [s.path.name for s in series.slices] == [f"slice_{n}.dcm" for n in order]


def test_oblique_series_voxels_land_where_dicom_says(tmp_path, write_series):
    # Sagittal-ish orientation with a small rotation: the affine must send voxel (i, j, k) to
    # IPP_k + c * col_spacing * row_dir + r * row_spacing * col_dir (in RAS), r = rows-1-j, c = i.
    angle = np.deg2rad(10)
    row_dir = np.array([0.0, np.cos(angle), np.sin(angle)])
    col_dir = np.array([0.0, np.sin(angle), -np.cos(angle)])
    normal = np.cross(row_dir, col_dir)
    base = np.array([5.0, -20.0, 60.0])
    offsets = [2, 0, 3, 1]
    positions = [tuple(base + 3.0 * o * normal) for o in offsets]
    write_series(tmp_path / "s", positions, orientation=[*row_dir, *col_dir], rows=ROWS, cols=COLS, spacing=(ROW_SPACING, COL_SPACING))
    series = dicom.read_dicom_series(tmp_path / "s")
    order = np.argsort(offsets)
    for i, j, k in [(0, 0, 0), (7, 5, 3), (2, 4, 1), (5, 1, 2)]:
        ipp = np.array(positions[order[k]])
        r, c = ROWS - 1 - j, i
        expected = lps_to_ras(ipp + c * COL_SPACING * row_dir + r * ROW_SPACING * col_dir)
        np.testing.assert_allclose(series.affine @ [i, j, k, 1], [*expected, 1], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(series.affine[:3, :3], axis=0), [COL_SPACING, ROW_SPACING, 3.0], atol=1e-6)


def test_stack_to_volume_axis_mapping():
    stack = np.arange(2 * 3 * 4).reshape(2, 3, 4)  # (K, rows, cols)
    volume = dicom.stack_to_volume(stack)
    assert volume.shape == (4, 3, 2)
    assert volume[1, 0, 1] == stack[1, 2, 1]  # j = 0 is the last row
    assert volume[3, 2, 0] == stack[0, 0, 3]
