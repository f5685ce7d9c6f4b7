"""jointreg.data.phantoms.echo: the apical four-chamber echo cine loop (frames on axis 2)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
from scipy.ndimage import binary_erosion

from jointreg.data.phantoms import (
    ECHO_LABELS,
    PHANTOM_KINDS,
    CardiacCycle,
    draw_cycle,
    ed_es_frames,
    make_phantom,
    phantom_rng,
)
from jointreg.data.phantoms.echo import AREA_CHANGE
from jointreg.data.slices import through_plane_axis

KIND = "echo-a4c"
SEEDS = (0, 1, 2, 3)
CROSS = np.zeros((3, 3, 1), bool)          # 4-neighbourhood within a frame
CROSS[1, :, 0] = CROSS[:, 1, 0] = True


@lru_cache(maxsize=None)
def phantom(seed: int, shape: tuple[int, int, int] | None = None):
    return make_phantom(KIND, seed, shape=shape)


def areas(label: np.ndarray, value: int) -> np.ndarray:
    return (label == value).sum(axis=(0, 1))


def neighbours(label: np.ndarray) -> list[np.ndarray]:
    """The 4 in-frame neighbours of every pixel (the frame edge padded with background)."""
    pad = np.pad(label, ((1, 1), (1, 1), (0, 0)))
    nx, ny = label.shape[:2]
    return [pad[i:i + nx, j:j + ny] for i, j in ((0, 1), (2, 1), (1, 0), (1, 2))]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * int((a & b).sum()) / (int(a.sum()) + int(b.sum()))


# --- labels and geometry -------------------------------------------------------------------------
def test_labels_modality_and_frames_on_the_slicing_axis():
    p = phantom(0)
    assert p.labels == ECHO_LABELS == {"background": 0, "lv": 1, "myocardium": 2, "atrium": 3}
    assert set(np.unique(p.label).tolist()) == {0, 1, 2, 3}
    assert p.modality == "US" and p.image.shape == (112, 112, 32) == PHANTOM_KINDS[KIND].shape
    assert p.spacing == pytest.approx((1.5, 1.5, 33.0))            # mm, mm, ms between frames
    assert through_plane_axis(p.spacing) == 2                      # the slice workflow cuts frames
    assert (p.label[p.tissue_mask("rv_blood", "ra_blood", "pericardium")] == 0).all()   # CAMUS: unlabelled
    assert (p.label[p.tissue_mask("lv_blood")] == 1).all() and (p.label[p.tissue_mask("la_blood")] == 3).all()
    assert p.image.min() == 0 and p.image.max() <= 255 and np.array_equal(p.image, np.rint(p.image))


@pytest.mark.parametrize("seed", SEEDS)
def test_outside_the_sector_is_black_background(seed):
    p = phantom(seed)
    outside = p.tissue_mask("outside")
    assert (p.image[outside] == 0).all() and (p.label[outside] == 0).all()
    # The sector is static and exactly a fan from the probe (top centre of axis 1's first row).
    assert (outside == outside[..., :1]).all()
    inside = ~outside[..., 0]
    nx, ny = inside.shape
    dx, dy = np.arange(nx)[:, None] - (nx - 1) / 2.0, np.arange(ny)[None, :] + 0.5
    r, angle = np.hypot(dx, dy), np.abs(np.arctan2(dx, dy))
    fan = (r <= r[inside].max()) & (angle <= angle[inside].max())
    assert np.array_equal(fan, inside)
    assert 0.5 < inside.mean() < 0.8 and not inside[0, 0] and inside[nx // 2, 2]
    # Inside, speckle and the noise floor leave (almost) no pixel at exactly 0.
    assert (p.image[~outside] == 0).mean() < 0.02


# --- anatomy and motion --------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_myocardium_encloses_the_lv_up_to_the_valve_plane(seed):
    label = phantom(seed).label
    lv = label == 1
    around = neighbours(label)
    # Every LV pixel's 4-neighbours are LV, myocardium or, across the mitral plane, the LA.
    for nb in around:
        assert np.isin(nb[lv], (1, 2, 3)).all()
    # In every frame the LV meets both: the valve plane is open onto the atrium.
    for value in (2, 3):
        touching = np.zeros_like(lv)
        for nb in around:
            touching |= lv & (nb == value)
        assert touching.any(axis=(0, 1)).all()
    # The atrium lies deeper (further from the probe, axis 1) than the ventricle.
    depth = np.arange(label.shape[1])[None, :, None]
    assert (depth * (label == 3)).sum() / (label == 3).sum() > (depth * lv).sum() / lv.sum() + 20


@pytest.mark.parametrize("seed", SEEDS)
def test_lv_area_follows_the_cardiac_phase(seed):
    p = phantom(seed)
    lv, myo, la = (areas(p.label, v) for v in (1, 2, 3))
    ed, es = ed_es_frames(p.label)
    assert lv[ed] == lv.max() and lv[es] == lv.min()
    # The drawn cycle of this case: ED and ES frames are where it is fullest and emptiest.
    cycle = draw_cycle(phantom_rng(KIND, seed))
    filling = cycle.filling((np.arange(p.image.shape[2]) + 0.5) * p.spacing[2])   # frame k at (k + ½)·Δt
    assert filling[ed] > filling.max() - 0.02 and filling[es] < filling.min() + 0.02
    # A realistic 2D ejection fraction, within the configured range (± pixels and the warp).
    assert AREA_CHANGE[0] - 0.02 < 1.0 - lv[es] / lv[ed] < AREA_CHANGE[1] + 0.02
    # The myocardium keeps its area, so around the smaller cavity the wall is thicker.
    assert 0.85 < myo[es] / myo[ed] < 1.15
    lv_es, lv_ed = p.label[..., es] == 1, p.label[..., ed] == 1
    perimeter = [int((m & ~binary_erosion(m, CROSS[..., 0])).sum()) for m in (lv_ed, lv_es)]
    assert myo[es] / perimeter[1] > 1.1 * myo[ed] / perimeter[0]
    # The atrium fills while the ventricle empties.
    assert la[es] > 1.2 * la[ed] and np.corrcoef(lv, la)[0, 1] < -0.5


def test_cardiac_cycle_known_answers():
    c = CardiacCycle(period_ms=800.0, ed_ms=100.0, systole=0.375, rapid=0.2, atrial=0.15, early=0.7)
    assert c.es_ms == 400.0
    t = np.arange(-800.0, 1600.0, 5.0)
    f = c.filling(t)
    assert f.min() >= 0.0 and f.max() <= 1.0
    np.testing.assert_allclose(c.filling([100.0, 900.0, -700.0, 400.0, 1200.0]), [1, 1, 1, 0, 0], atol=1e-12)
    ejection = c.filling(np.arange(100.0, 400.0, 5.0))
    assert (np.diff(ejection) < 0).all()                               # the LV empties all through systole
    assert float(c.filling(100.0 + 0.7 * 800.0)) == pytest.approx(0.7)   # diastasis: the early filling
    refill = c.filling(np.arange(400.0, 900.0, 5.0))
    assert (np.diff(refill) >= -1e-12).all()                           # and refills until the next ED
    np.testing.assert_allclose(c.filling(t + 800.0), f, atol=1e-9)     # periodic
    with pytest.raises(ValueError):
        CardiacCycle(period_ms=800.0, ed_ms=0.0, systole=0.6, rapid=0.3, atrial=0.2)


def test_ed_es_frames_known_answer():
    label = np.zeros((4, 4, 5), np.int16)
    for frame, count in enumerate((3, 5, 1, 0, 5)):
        label.reshape(16, 5)[:count, frame] = 1
    label[3, 3, 3] = 2                                   # frame 3 holds no LV: not the smallest
    assert ed_es_frames(label) == (1, 2)                 # ties go to the lower index
    assert ed_es_frames(np.moveaxis(label, 2, 0), axis=0) == (1, 2)
    with pytest.raises(ValueError, match="no frame"):
        ed_es_frames(label, lv=7)


# --- image --------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_blood_pools_are_darker_than_the_myocardium(seed):
    p = phantom(seed)
    myo = float(p.image[p.label == 2].mean())
    assert float(p.image[p.label == 1].mean()) < 0.5 * myo
    assert float(p.image[p.label == 3].mean()) < 0.5 * myo
    assert float(p.image[p.tissue_mask("pericardium")].mean()) > myo   # the bright pericardium


@pytest.mark.parametrize("seed", SEEDS)
def test_speckle_statistics(seed):
    p = phantom(seed)
    # Fully developed speckle: std / mean of a compressed Rayleigh envelope, 0.33 (gamma 0.6)
    # to 0.52 (gamma 1, plain Rayleigh), inside tissue away from its edges.
    for region in (p.label == 2, p.tissue_mask("soft_tissue")):
        core = binary_erosion(region, CROSS, iterations=2)
        values = p.image[core]
        assert 0.3 < values.std() / values.mean() < 0.6
    # Static tissue keeps its speckle from frame to frame; blood decorrelates.
    def frame_correlation(mask):
        both = mask[..., 1:] & mask[..., :-1]
        return np.corrcoef(p.image[..., 1:][both], p.image[..., :-1][both])[0, 1]

    assert frame_correlation(binary_erosion(p.tissue_mask("soft_tissue"), CROSS, iterations=2)) > 0.6
    assert abs(frame_correlation(binary_erosion(p.label == 1, CROSS, iterations=2))) < 0.2


# --- reproducibility ----------------------------------------------------------------------------
def test_same_seed_same_loop_other_seed_other_heart():
    a, b = make_phantom(KIND, 5), make_phantom(KIND, 5)
    for name in ("image", "label", "tissue", "affine"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    c = make_phantom(KIND, 6)
    assert not np.array_equal(a.image, c.image)
    ed_a, ed_c = ed_es_frames(a.label)[0], ed_es_frames(c.label)[0]
    assert dice(a.label[..., ed_a] == 2, c.label[..., ed_c] == 2) < 0.8


def test_anatomy_and_timing_do_not_depend_on_the_grid_shape():
    fine, coarse = phantom(3), phantom(3, (56, 56, 16))                  # 3 mm pixels, 66 ms frames
    assert coarse.spacing == pytest.approx((3.0, 3.0, 66.0))
    (ed_f, es_f), (ed_c, es_c) = ed_es_frames(fine.label), ed_es_frames(coarse.label)
    cycle = draw_cycle(phantom_rng(KIND, 3))
    for frame_f, frame_c in ((ed_f, ed_c), (es_f, es_c)):
        # The same instant of the beat (the loop may hold two EDs), within one coarse frame.
        apart = cycle.phase((frame_f + 0.5) * 33.0) - cycle.phase((frame_c + 0.5) * 66.0)
        assert min(abs(apart), 1.0 - abs(apart)) * cycle.period_ms <= 66.0
    for value in (1, 2, 3):
        mm2_fine = areas(fine.label, value)[ed_f] * 1.5**2
        mm2_coarse = areas(coarse.label, value)[ed_c] * 3.0**2
        assert mm2_coarse == pytest.approx(mm2_fine, rel=0.15)


def test_an_ed_es_annotated_dataset(tmp_path):
    """The echo datasets' setting: generate loops, keep only the ED and ES frames annotated."""
    from jointreg.data.dataset import Dataset
    from jointreg.data.phantoms import case_seed, generate_phantom_dataset
    from jointreg.data.sparsify import sparsify_dataset

    shape = (56, 56, 16)
    full = generate_phantom_dataset(tmp_path / "echo", KIND, n_train=2, n_test=0, seed=1, shape=shape)
    manifest = sparsify_dataset(full, tmp_path / "ed_es", slices_per_volume=2, strategy="extremes",
                                classes=["lv"], progress=False)
    ds = Dataset.open(tmp_path / "ed_es")
    assert ds.spec.modality == "US"
    for i, case in enumerate(ds.cases("Tr")):
        truth = make_phantom(KIND, case_seed(1, i), shape=shape).label
        entry = manifest["cases"][case]
        assert entry["axis"] == 2 and entry["slices"] == sorted(ed_es_frames(truth))
        sparse = ds.read_label(case).array
        assert (np.delete(sparse, entry["slices"], axis=2) == ds.spec.ignore_label).all()
        np.testing.assert_array_equal(sparse[..., entry["slices"]], truth[..., entry["slices"]])
