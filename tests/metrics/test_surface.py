import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from jointreg.metrics.overlap import dice
from jointreg.metrics.surface import (
    average_symmetric_surface_distance,
    boundary,
    hausdorff_distance,
    surface_distances,
    surface_metrics,
)

# MONAI's own compute_* functions pass a deprecated argument internally (MONAI 1.5-1.6).
pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")


def _ball(shape, centre, radius):
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    return ((grid - np.asarray(centre)) ** 2).sum(-1) <= radius**2


def _box(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def _blob(rng, shape, sigma=2.0, level=0.6):
    # Smoothed noise, thresholded: irregular shapes with holes and several components.
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return field > level * field.std()


# --- boundaries --------------------------------------------------------------------------------------
def test_boundary_of_a_square_is_its_ring():
    m = _box((7, 7), (1, 1), (6, 6))
    ring = m & ~_box((7, 7), (2, 2), (5, 5))
    np.testing.assert_array_equal(boundary(m), ring)


def test_voxels_on_the_image_edge_are_boundary():
    m = _box((6, 6), (0, 0), (3, 6))  # touches three image edges
    edges = boundary(m)
    assert edges[0].all() and edges[:3, 0].all() and edges[:3, -1].all()
    assert not edges[1, 1:5].any()


@pytest.mark.parametrize("ndim", [2, 3])
def test_boundary_matches_monai_get_mask_edges(ndim):
    from monai.metrics.utils import get_mask_edges

    rng = np.random.default_rng(ndim)
    shape = (40, 36) if ndim == 2 else (24, 22, 12)
    a, b = _blob(rng, shape), _blob(rng, shape)
    edges_a, edges_b = get_mask_edges(a, b, crop=False)
    np.testing.assert_array_equal(boundary(a), edges_a)
    np.testing.assert_array_equal(boundary(b), edges_b)


def test_unknown_neighbours_do_not_make_a_boundary():
    # One annotated slice of a 3D volume: its boundary is the in-plane contour, not the slice.
    mask = np.zeros((12, 12, 5), bool)
    mask[3:9, 3:9, 2] = True
    known = np.zeros_like(mask)
    known[:, :, 2] = True
    edges = boundary(mask, known)
    np.testing.assert_array_equal(edges[:, :, 2], boundary(mask[:, :, 2]))
    assert edges[:, :, 2].sum() == 20
    assert boundary(mask).sum() == 36  # without the known mask every voxel of the slice is an edge


# --- known answers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("ndim", [2, 3])
def test_disk_shifted_three_voxels_at_two_mm_has_hd_six_mm(ndim):
    shape = (40, 40) if ndim == 2 else (32, 32, 32)
    gt = _ball(shape, [s // 2 for s in shape], 8)
    pred = np.roll(gt, 3, axis=0)
    metrics = surface_metrics(pred, gt, spacing=2.0)
    assert metrics.hd == pytest.approx(6.0)
    assert metrics.hd95 <= metrics.hd + 1e-9
    assert 0 < metrics.assd < metrics.hd95
    assert not metrics.missed


@pytest.mark.parametrize("axis, expected", [(2, 6.0), (0, 2.0), (1, 1.0)])
def test_anisotropic_spacing_scales_each_axis(axis, expected):
    spacing = (1.0, 0.5, 3.0)
    gt = _box((24, 24, 12), (6, 6, 3), (16, 14, 8))
    pred = np.roll(gt, 2, axis=axis)
    assert hausdorff_distance(pred, gt, spacing) == pytest.approx(expected)


def test_square_shifted_by_one_voxel_known_assd():
    # 5x5 squares one row apart: each ring has 16 voxels, 8 at distance 0 and 8 at distance 1
    # from the other ring, in both directions; 2 mm spacing.
    gt = _box((16, 16), (5, 5), (10, 10))
    pred = np.roll(gt, 1, axis=0)
    d = surface_distances(pred, gt, spacing=2.0)
    assert sorted(d.pred_to_gt.tolist()) == [0.0] * 8 + [2.0] * 8
    assert sorted(d.gt_to_pred.tolist()) == [0.0] * 8 + [2.0] * 8
    assert d.assd == pytest.approx(1.0)
    assert d.hd == d.hd95 == pytest.approx(2.0)


def _square_with_outlier_line(gap_rows=4):
    # gt: a 20x20 square (76 boundary voxels). pred: the same square plus a 6-voxel line
    # `gap_rows` rows below it: the line's voxels are exactly gap_rows voxels from gt's boundary.
    gt = _box((40, 30), (5, 5), (25, 25))
    pred = gt.copy()
    pred[24 + gap_rows, 10:16] = True
    return pred, gt


def test_percentile_argument_of_hausdorff_distance():
    pred, gt = _square_with_outlier_line(gap_rows=4)
    d = surface_distances(pred, gt, 1.0)
    assert hausdorff_distance(pred, gt, 1.0, percentile=95) == pytest.approx(d.hd95) == pytest.approx(4.0)
    # Percentile 0 is the larger of the two directional minima (0 here), not the maximum.
    assert hausdorff_distance(pred, gt, 1.0, percentile=0) == 0.0
    assert hausdorff_distance(pred, gt, 1.0) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="percentile"):
        d.hausdorff(101)


def test_hd95_is_the_max_of_directional_percentiles_not_the_pooled_one():
    import medpy.metric.binary as medpy_binary

    pred, gt = _square_with_outlier_line(gap_rows=4)
    spacing = (1.5, 1.5)
    ours = surface_metrics(pred, gt, spacing)
    # pred -> gt: 76 zeros and 6 x 6 mm, its 95th percentile is 6 mm; gt -> pred: all zeros.
    assert ours.hd95 == pytest.approx(6.0)
    assert ours.hd == pytest.approx(6.0)
    assert ours.assd == pytest.approx(6 * 6.0 / (82 + 76))
    # medpy pools the 158 distances: 6 non-zero of 158 is under 5 %, so its HD95 is 0.
    assert medpy_binary.hd95(pred, gt, voxelspacing=spacing) == pytest.approx(0.0)
    # medpy's ASSD pools both directions, like ours.
    assert medpy_binary.assd(pred, gt, voxelspacing=spacing) == pytest.approx(ours.assd)


# --- empty masks ---------------------------------------------------------------------------------
def test_both_empty_gives_zero_distances():
    empty = np.zeros((10, 10, 4), bool)
    metrics = surface_metrics(empty, empty, (1.0, 1.0, 3.0))
    assert (metrics.hd, metrics.hd95, metrics.assd, metrics.missed) == (0.0, 0.0, 0.0, False)


@pytest.mark.parametrize("empty_side", ["pred", "gt"])
def test_one_empty_gives_nan_and_missed(empty_side):
    full = _box((10, 10), (2, 2), (6, 6))
    empty = np.zeros_like(full)
    pred, gt = (empty, full) if empty_side == "pred" else (full, empty)
    metrics = surface_metrics(pred, gt, 1.0)
    assert metrics.missed
    assert all(math.isnan(v) for v in (metrics.hd, metrics.hd95, metrics.assd))
    assert math.isnan(hausdorff_distance(pred, gt, 1.0))
    assert math.isnan(average_symmetric_surface_distance(pred, gt, 1.0))


def test_monai_alone_reports_inf_or_nan_for_empty_masks():
    # Why we wrap MONAI: it gives inf (HD, ASSD) or NaN (HD95) for one empty mask and NaN for two.
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    def one_hot(mask):
        t = torch.as_tensor(mask, dtype=torch.float32)[None, None]
        return torch.cat([1 - t, t], dim=1)

    full = _box((10, 10), (2, 2), (6, 6))
    empty = np.zeros_like(full)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isinf(compute_hausdorff_distance(one_hot(empty), one_hot(full)).item())
        assert math.isnan(compute_hausdorff_distance(one_hot(empty), one_hot(full), percentile=95).item())
        assert math.isinf(compute_average_surface_distance(one_hot(empty), one_hot(full), symmetric=True).item())
        assert math.isnan(compute_hausdorff_distance(one_hot(empty), one_hot(empty)).item())
    ours_one = surface_metrics(empty, full)
    ours_both = surface_metrics(empty, empty)
    assert ours_one.missed and math.isnan(ours_one.hd)
    assert ours_both.hd == 0.0


def test_surface_distances_refuses_empty_masks():
    with pytest.raises(ValueError, match="non-empty"):
        surface_distances(np.zeros((4, 4)), _box((4, 4), (1, 1), (3, 3)))


# --- unknown (ignore) voxels ---------------------------------------------------------------------------
def test_unknown_voxels_covering_only_agreeing_background_change_nothing():
    rng = np.random.default_rng(3)
    gt = _ball((30, 30, 12), (14, 14, 6), 6)
    noise = rng.random(gt.shape) > 0.999
    noise[:, 24:, :] = False
    pred = np.roll(gt, 2, axis=1) | noise
    known = np.ones_like(gt)
    known[:, 26:, :] = False  # background in both maps
    assert not (gt | pred)[~known].any()
    spacing = (0.8, 0.8, 2.5)
    assert surface_metrics(pred, gt, spacing, known) == surface_metrics(pred, gt, spacing)


def test_errors_inside_unknown_voxels_are_not_counted():
    gt = _ball((30, 30), (12, 12), 6)
    pred = gt.copy()
    pred[24:28, 24:28] = True  # spurious blob ...
    known = np.ones_like(gt)
    known[22:, 22:] = False  # ... where the truth is unknown
    with_blob = surface_metrics(pred, gt, 1.0, known)
    assert (with_blob.hd, with_blob.hd95, with_blob.assd) == (0.0, 0.0, 0.0)
    assert surface_metrics(pred, gt, 1.0).hd > 10


def test_one_annotated_slice_equals_the_2d_evaluation_of_that_slice():
    spacing = (1.25, 1.25, 7.7)
    gt = _ball((40, 40, 9), (20, 20, 4), 12)
    pred = np.roll(_ball((40, 40, 9), (20, 20, 4), 10), 3, axis=0)
    known = np.zeros_like(gt)
    known[:, :, 4] = True
    sparse = surface_metrics(pred, gt, spacing, known)
    plane = surface_metrics(pred[:, :, 4], gt[:, :, 4], spacing[:2])
    assert sparse.hd == pytest.approx(plane.hd)
    assert sparse.hd95 == pytest.approx(plane.hd95)
    assert sparse.assd == pytest.approx(plane.assd)


def test_structure_wrapped_in_unknown_voxels_falls_back_to_the_plain_boundary():
    known = _box((12, 12), (4, 4), (9, 8))
    gt = known.copy()  # fills the known region: no known voxel outside it
    pred = _box((12, 12), (5, 4), (9, 8))
    metrics = surface_metrics(pred, gt, 1.0, known)
    restricted = surface_metrics(pred & known, gt & known, 1.0)
    assert metrics == restricted
    assert math.isfinite(metrics.hd)


def test_torch_inputs_match_numpy():
    gt = _ball((20, 20, 10), (10, 10, 5), 4)
    pred = np.roll(gt, 1, axis=2)
    a = surface_metrics(torch.from_numpy(pred), torch.from_numpy(gt), torch.tensor([1.0, 1.0, 2.0]))
    b = surface_metrics(pred, gt, (1.0, 1.0, 2.0))
    assert a == b


def test_spacing_must_match_the_dimensions():
    m = _box((8, 8), (2, 2), (5, 5))
    with pytest.raises(ValueError, match="spacing"):
        surface_metrics(m, m, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        surface_metrics(m, m, (1.0, 0.0))


# --- cross-checks on random blobs --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, spacing",
    [((48, 40), (0.7, 1.3)), ((28, 24, 10), (0.8, 1.1, 3.0)), ((20, 20, 20), (1.0, 1.0, 1.0))],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_medpy_and_monai_on_random_blobs(shape, spacing, seed):
    import medpy.metric.binary as medpy_binary
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    rng = np.random.default_rng(seed)
    gt = _blob(rng, shape)
    pred = gt ^ (_blob(rng, shape, sigma=1.5, level=1.2))  # gt with holes and extra islands
    assert gt.any() and pred.any()
    ours = surface_metrics(pred, gt, spacing)
    dists = surface_distances(pred, gt, spacing)

    # medpy: HD and the directional distances agree exactly (same boundary, exact EDT).
    directional = getattr(medpy_binary, "__surface_distances")
    pg = directional(pred, gt, spacing)
    gp = directional(gt, pred, spacing)
    assert ours.hd == pytest.approx(medpy_binary.hd(pred, gt, voxelspacing=spacing), rel=1e-6)
    np.testing.assert_allclose(np.sort(dists.pred_to_gt), np.sort(pg), rtol=1e-6)
    np.testing.assert_allclose(np.sort(dists.gt_to_pred), np.sort(gp), rtol=1e-6)
    assert ours.hd95 == pytest.approx(max(np.percentile(pg, 95), np.percentile(gp, 95)), rel=1e-6)
    assert ours.assd == pytest.approx(medpy_binary.assd(pred, gt, voxelspacing=spacing), rel=1e-6)
    assert dice(pred, gt) == pytest.approx(medpy_binary.dc(pred, gt), rel=1e-12)
    # The documented difference: medpy's HD95 is the percentile of the pooled distances, which
    # is never above the larger directional percentile.
    assert medpy_binary.hd95(pred, gt, voxelspacing=spacing) <= ours.hd95 + 1e-6

    # MONAI: same definitions for HD, HD95 and the symmetric ASD.
    def one_hot(mask):
        t = torch.as_tensor(mask, dtype=torch.float32)[None, None]
        return torch.cat([1 - t, t], dim=1)

    hd = compute_hausdorff_distance(one_hot(pred), one_hot(gt), spacing=list(spacing)).item()
    hd95 = compute_hausdorff_distance(one_hot(pred), one_hot(gt), percentile=95, spacing=list(spacing)).item()
    asd = compute_average_surface_distance(one_hot(pred), one_hot(gt), symmetric=True, spacing=list(spacing)).item()
    assert ours.hd == pytest.approx(hd, rel=1e-5)
    assert ours.hd95 == pytest.approx(hd95, rel=1e-5)
    assert ours.assd == pytest.approx(asd, rel=1e-5)


def _square_stack():
    """Two frames of a 20×20 square, frame 0 predicted 2 voxels off along x, frame 1 3 along y."""
    gt = np.zeros((30, 30, 2), bool)
    gt[5:25, 5:25, :] = True
    pred = np.zeros_like(gt)
    pred[7:27, 5:25, 0] = True
    pred[5:25, 8:28, 1] = True
    return pred, gt


def test_framewise_distances_stay_within_each_frame():
    from jointreg.metrics.surface import surface_metrics

    pred, gt = _square_stack()
    # In-plane 0.5 mm; the time "spacing" (a 40 ms frame interval) must not enter any distance.
    framed = surface_metrics(pred, gt, (0.5, 0.5, 40.0), frame_axis=2)
    assert framed.hd == pytest.approx(1.5)  # 3 voxels × 0.5 mm, in frame 1
    assert framed.hd == surface_metrics(pred, gt, (0.5, 0.5, 4000.0), frame_axis=2).hd
    frame0 = surface_metrics(pred[..., 0], gt[..., 0], 0.5)
    frame1 = surface_metrics(pred[..., 1], gt[..., 1], 0.5)
    assert max(frame0.hd, frame1.hd) == framed.hd
    assert min(frame0.assd, frame1.assd) < framed.assd < max(frame0.assd, frame1.assd)
    # As one 3D volume the frames would be neighbouring slices 40 mm apart: another answer.
    assert surface_metrics(pred, gt, (0.5, 0.5, 40.0)).assd != pytest.approx(framed.assd)


def test_framewise_empty_mask_rules():
    from jointreg.metrics.surface import surface_metrics

    pred, gt = _square_stack()
    blank = np.zeros((30, 30, 1), bool)
    # A frame where neither has the structure is skipped.
    both = surface_metrics(np.concatenate([pred, blank], 2), np.concatenate([gt, blank], 2), 0.5, frame_axis=2)
    assert both.hd == pytest.approx(surface_metrics(pred, gt, 0.5, frame_axis=2).hd) and not both.missed
    # A frame the prediction misses makes the structure missed.
    missed = surface_metrics(np.concatenate([pred, blank], 2), np.concatenate([gt, gt[..., :1]], 2), 0.5, frame_axis=2)
    assert missed.missed and np.isnan(missed.hd)
    # ... unless that frame's truth is unknown.
    known = np.ones((30, 30, 3), bool)
    known[..., 2] = False
    ok = surface_metrics(np.concatenate([pred, blank], 2), np.concatenate([gt, gt[..., :1]], 2), 0.5, known, frame_axis=2)
    assert not ok.missed and ok.hd == pytest.approx(1.5)
    assert surface_metrics(blank, blank, 0.5, frame_axis=2).hd == 0.0
