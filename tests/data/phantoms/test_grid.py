"""jointreg.data.phantoms.grid: the deformed coordinates and their crop boxes."""

from __future__ import annotations

import numpy as np

from jointreg.data.phantoms.grid import Grid, deformed_coordinates


def test_crop_box_holds_every_voxel_near_the_centre():
    grid = Grid((40, 36, 20), (4.0, 4.0, 6.0), (160.0, 144.0, 120.0))
    warped = deformed_coordinates(np.random.default_rng(0), grid, rotation_deg=20.0, shift_mm=(10.0, 5.0, 8.0),
                                   warp_scale_mm=(40.0, 40.0, 40.0), warp_mm=(8.0, 8.0))
    # Without a warp the box is tight, so a wrong rotation or shift would lose voxels.
    rigid = deformed_coordinates(np.random.default_rng(4), grid, rotation_deg=40.0, shift_mm=(10.0, 5.0, 8.0),
                                  warp_scale_mm=(40.0, 40.0, 40.0), warp_mm=(0.0, 0.0))
    assert abs(rigid.theta) > 0.2 and rigid.margin < 0.01
    for a in (warped, rigid):
        for centre, radius in (((20.0, -15.0, 10.0), 25.0), ((-60.0, 50.0, -40.0), 12.0), ((0.0, 0.0, 0.0), 5.0)):
            near = (a.X - centre[0]) ** 2 + (a.Y - centre[1]) ** 2 + (a.Z - centre[2]) ** 2 <= radius**2
            box, sub = a.crop(centre, radius)
            assert near.any() and near[box].sum() == near.sum()
            assert near[box].size < near.size                      # it does crop
            assert np.array_equal(sub.X, a.X[box])
