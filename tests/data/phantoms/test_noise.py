"""jointreg.data.phantoms.noise: smooth random fields."""

from __future__ import annotations

import numpy as np
import pytest

from jointreg.data.phantoms.grid import Grid
from jointreg.data.phantoms.noise import smooth_noise


def test_smooth_noise_has_unit_variance_and_the_requested_smoothness():
    grid = Grid((96, 96, 48), (4.0, 4.0, 4.0), (384.0, 384.0, 192.0))
    field = smooth_noise(np.random.default_rng(0), grid, 12.0)
    assert field.dtype == np.float32 and field.shape == grid.shape
    assert abs(float(field.mean())) < 0.1 and float(field.std()) == pytest.approx(1.0, abs=0.1)
    # Neighbours 4 mm apart are strongly correlated, points 48 mm apart are not.
    near = np.corrcoef(field[:-1].ravel(), field[1:].ravel())[0, 1]
    far = np.corrcoef(field[:-12].ravel(), field[12:].ravel())[0, 1]
    assert near > 0.8 and abs(far) < 0.1
