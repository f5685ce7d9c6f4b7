"""jointreg.inference.register_grid: source voxels <-> model grid, sampling between grids."""

from __future__ import annotations

import numpy as np

from jointreg.data.slices import PlaneGeometry
from jointreg.inference.register_grid import (
    plane_model_coordinates,
    plane_source_coordinates,
    resample,
    resample_labels,
    volume_model_coordinates,
    volume_source_coordinates,
)


def test_plane_coordinates_agree_with_plane_geometry_resampling():
    # 50 × 30 voxels at 1 × 2 mm on a 32² grid: 27 rows (shrunk, padded 2 + 3) and 32 columns.
    geometry = PlaneGeometry((50, 30), (1.0, 2.0), (32, 32))
    assert geometry.resized_shape == (27, 32) and geometry.padding == (2, 3, 0, 0)
    q = plane_model_coordinates(geometry)
    assert q.shape == (2, 50, 30) and q.dtype == np.float32
    # Voxel centres: row 0 at (0.5 · 27/50 - 0.5 + 2), column 0 at (0.5 · 32/30 - 0.5).
    np.testing.assert_allclose(q[:, 0, 0], [0.27 - 0.5 + 2, 0.5 * 32 / 30 - 0.5], atol=1e-6)
    back = plane_source_coordinates(geometry, q[None])[0]
    np.testing.assert_allclose(back[0], np.broadcast_to(np.arange(50.0)[:, None], (50, 30)), atol=1e-4)
    np.testing.assert_allclose(back[1], np.broadcast_to(np.arange(30.0)[None], (50, 30)), atol=1e-4)
    # A ramp along each axis, resampled by the slicer, reads back the source coordinate of
    # every training pixel (away from the edges, where the resampling clamps): exactly where
    # the slicer enlarges (axis 1); where it shrinks (axis 0) its antialiasing filter wobbles
    # by < 0.1 voxel, far below the 0.5 × 50/27 voxels of a half-pixel convention error.
    pixels = np.stack(np.meshgrid(np.arange(32.0), np.arange(32.0), indexing="ij"))[None]
    expected = plane_source_coordinates(geometry, pixels)[0]  # (2, 32, 32) source coordinates
    for axis, offset, resized, tolerance in ((0, 2, 27, 0.1), (1, 0, 32, 1e-4)):
        ramp = np.broadcast_to(np.arange(geometry.source_shape[axis], dtype=np.float32).reshape((-1, 1) if axis == 0 else (1, -1)), (50, 30))
        on_grid = geometry.to_training(np.ascontiguousarray(ramp)[None], "image")[0]
        inside = slice(offset + 2, offset + resized - 2)
        line = on_grid[inside, 16] if axis == 0 else on_grid[16, inside]
        wanted = expected[axis][inside, 16] if axis == 0 else expected[axis][16, inside]
        np.testing.assert_allclose(line, wanted, atol=tolerance)
        assert abs(float(np.mean(line - wanted))) < 0.01


def test_volume_coordinates_scale_every_axis_without_padding():
    q = volume_model_coordinates((32, 16, 10), (16, 16, 5))
    assert q.shape == (3, 32, 16, 10)
    # Two source voxels per model voxel along axes 0 and 2: centres at -0.25, 0.25, 0.75, ...
    np.testing.assert_allclose(q[0, :3, 0, 0], [-0.25, 0.25, 0.75])
    np.testing.assert_allclose(q[1, 0, :3, 0], [0.0, 1.0, 2.0])
    np.testing.assert_allclose(q[2, 0, 0, :2], [-0.25, 0.25])
    back = volume_source_coordinates((32, 16, 10), (16, 16, 5), q)
    np.testing.assert_allclose(back[0, :, 0, 0], np.arange(32.0), atol=1e-5)
    np.testing.assert_allclose(back[2, 0, 0], np.arange(10.0), atol=1e-5)


def test_resample_between_grids_of_different_shapes():
    image = np.arange(12, dtype=np.float32).reshape(1, 3, 4)  # value = 4 row + column
    coords = np.stack(np.meshgrid(np.array([0.0, 2.0, 5.0, 1.0, 0.5]), np.array([3.0, 1.5]), indexing="ij"))
    out = resample(image[None], coords[None])[0, 0]  # (5, 2): larger along axis 0, smaller along axis 1
    # Row 5 lies beyond the last row (2): the edge is repeated, as in border sampling.
    expected = np.array([[3.0, 1.5], [11.0, 9.5], [11.0, 9.5], [7.0, 5.5], [5.0, 3.5]])
    np.testing.assert_allclose(out, expected, atol=1e-6)
    labels = np.array([[0, 1, 1, 0], [0, 2, 2, 0], [0, 0, 0, 0]], np.int16)
    warped = resample_labels(labels[None], coords[None])[0]
    assert warped.dtype == np.int16
    # (0.5, 1.5) is half label 1, half label 2: the tie goes to the higher id.
    np.testing.assert_array_equal(warped, [[0, 1], [0, 0], [0, 0], [0, 2], [0, 2]])
    np.testing.assert_array_equal(resample_labels(labels[None], coords[None], mode="nearest")[0, 4], [0, 1])
