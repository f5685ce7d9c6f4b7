"""jointreg.data.phantoms.cardiac_mr: ACDC label ids, bSSFP contrast and short-axis anatomy."""

from __future__ import annotations

import numpy as np
import pytest

from jointreg.data.phantoms import CARDIAC_LABELS, make_phantom

CARDIAC_SMALL = (64, 64, 12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cardiac_mr_anatomy(seed):
    p = make_phantom("cardiac-mr", seed, shape=CARDIAC_SMALL)
    assert p.labels == CARDIAC_LABELS == {"background": 0, "rv": 1, "myocardium": 2, "lv": 3}
    assert set(np.unique(p.label).tolist()) == {0, 1, 2, 3}
    assert p.image.min() >= 0                                 # magnitude images
    rv, myo, lv = (p.label == v for v in (1, 2, 3))
    # bSSFP contrast: bright blood, dark myocardium, darker lungs.
    assert np.median(p.image[lv]) > 1.8 * np.median(p.image[myo])
    assert np.median(p.image[p.tissue_mask("lung")]) < 0.5 * np.median(p.image[myo])
    # The LV shrinks to the apex (low slice indices); the RV ends before the LV apex.
    lv_area, myo_area = lv.sum(axis=(0, 1)), myo.sum(axis=(0, 1))
    first_myo = int(np.flatnonzero(myo_area)[0])
    assert lv_area[first_myo] < 0.3 * lv_area.max()
    assert np.flatnonzero(rv.sum(axis=(0, 1)))[0] > first_myo
    # The myocardium wraps the blood pool: along every row and column of a mid slice, LV voxels
    # are bracketed by myocardium.
    mid = int(np.argmax(lv_area))
    for line in list(np.flatnonzero(lv[:, :, mid].any(axis=1))):
        row_lv = np.flatnonzero(lv[line, :, mid])
        row_myo = np.flatnonzero(myo[line, :, mid])
        if row_myo.size:
            assert row_myo.min() < row_lv.min() or row_myo.max() > row_lv.max()
