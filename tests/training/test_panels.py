"""TensorBoard panels: shapes, value range, what each tile column shows, and the validation's
segmentation panel (fixed slices, contours)."""

import numpy as np
import pytest
import torch

from jointreg.data.slices import SlicedVolume
from jointreg.metrics.montage import CLASS_COLOURS, MontageColumn, contour, render_montage
from jointreg.training.panels import grid_image, overlay, panel_slices, registration_panel, segmentation_montage

H, W = 16, 24
RED = np.array([230, 25, 75]) / 255.0  # the colour of label 1
GREEN = np.array([60, 180, 75]) / 255.0  # label 2


def _grey(a: np.ndarray) -> np.ndarray:
    return np.repeat(np.clip(a, 0, 1)[..., None], 3, axis=-1)


def test_overlay_colours_labels_and_leaves_background_and_ignore_grey():
    image = np.full((4, 4), 0.5, np.float32)
    label = np.array([[0, 1, 2, 9]] * 4)
    rgb = overlay(image, label, alpha=0.5, ignore_index=9)
    assert rgb.shape == (4, 4, 3) and rgb.min() >= 0.0 and rgb.max() <= 1.0
    assert np.allclose(rgb[:, 0], 0.5) and np.allclose(rgb[:, 3], 0.5)  # background, ignore: grey
    assert np.allclose(rgb[0, 1], 0.5 * 0.5 + 0.5 * RED)
    assert np.allclose(rgb[0, 2], 0.5 * 0.5 + 0.5 * GREEN)
    # without an ignore id, 9 is coloured like any class; out-of-range images are clipped
    assert not np.allclose(overlay(image, label, alpha=0.5)[0, 3], 0.5)
    assert np.array_equal(overlay(np.array([[-1.0, 2.0]]), np.zeros((1, 2))), [[[0, 0, 0], [1, 1, 1]]])


def test_grid_of_a_zero_flow_has_lines_every_spacing_pixels():
    grid = grid_image(torch.zeros(2, H, W), spacing=8)
    assert grid.shape == (H, W, 3) and np.array_equal(grid[..., 0], grid[..., 2])
    dark = grid[..., 0] == 0.0
    expected = np.zeros((H, W), bool)
    expected[::8, :] = True
    expected[:, ::8] = True
    assert np.array_equal(dark, expected)
    assert np.all(grid[~expected] == 1.0)


def test_grid_moves_with_the_flow():
    flow = torch.zeros(2, H, W)
    flow[0] = 3.0  # warped(p) = lines(p + 3 along rows): the line of row 8 appears at row 5
    grid = grid_image(flow, spacing=8)[..., 0]
    dark_rows = np.where((grid == 0.0).all(axis=1))[0]
    assert list(dark_rows) == [5]  # row 0's line would be at -3; rows past the end read the border
    assert np.array_equal(np.where((grid == 0.0).all(axis=0))[0], [0, 8, 16])  # columns unchanged


def _pair():
    generator = torch.Generator().manual_seed(0)
    fixed = torch.rand(2, 1, H, W, generator=generator)
    moving = torch.rand(2, 1, H, W, generator=generator)
    warped = torch.rand(2, 1, H, W, generator=generator)
    return fixed, moving, warped, torch.zeros(2, 2, H, W)


def test_registration_panel_columns():
    fixed, moving, warped, flow = _pair()
    label = torch.zeros(2, 1, H, W, dtype=torch.long)
    label[0, 0, 4:8, 4:8] = 1
    panel = registration_panel(fixed, moving, warped, flow, warped_label=label)
    assert panel.shape == (H, 6 * W, 3) and panel.dtype.kind == "f"
    assert panel.min() >= 0.0 and panel.max() <= 1.0
    tiles = [panel[:, i * W:(i + 1) * W] for i in range(6)]
    f, m, wp = (t[0, 0].numpy() for t in (fixed, moving, warped))  # first pair of the batch
    assert np.allclose(tiles[0], _grey(f)) and np.allclose(tiles[1], _grey(m)) and np.allclose(tiles[2], _grey(wp))
    difference = np.abs(wp - f)
    assert np.allclose(tiles[3], _grey(difference / difference.max())) and tiles[3].max() == pytest.approx(1.0)
    assert np.array_equal(tiles[4], grid_image(flow[0]))
    assert np.allclose(tiles[5], overlay(f, label[0, 0].numpy()))
    assert not np.allclose(tiles[5][4:8, 4:8], tiles[0][4:8, 4:8])  # the warped label is drawn on the fixed image


def test_registration_panel_without_label_and_identical_images():
    fixed, moving, _, flow = _pair()
    panel = registration_panel(fixed, moving, fixed.clone(), flow)
    assert panel.shape == (H, 5 * W, 3)
    assert np.all(panel[:, 3 * W:4 * W] == 0.0)  # no difference: a black tile, no division by zero


class _Threshold(torch.nn.Module):
    """A "segmentor" predicting class 1 where the image is brighter than 0.5."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), (x - 0.5) * 10.0], dim=1)


def _volume(case, first, last, n=10, size=16):
    images = np.zeros((n, size, size), np.float32)
    labels = np.zeros((n, size, size), np.int16)
    labels[first:last + 1, 4:10, 4:10] = 1
    images[first:last + 1, 6:12, 4:10] = 1.0  # the bright region: the truth shifted by 2 rows
    return SlicedVolume(case, 2, images, labels, (), None, None, (size, size, n))


def test_panel_slices_are_fixed_by_the_labels_and_spread_over_volumes():
    volumes = [_volume("a", 2, 6), _volume("b", 0, 9)]
    # one slot per volume first (the middle of each labelled extent), then a second round
    assert panel_slices(volumes, 2, ignore_index=2) == [(0, 4), (1, 4)]
    assert panel_slices(volumes, 3, ignore_index=2) == [(0, 3), (1, 3), (0, 5)]
    assert panel_slices(volumes, 0, ignore_index=2) == []


def test_segmentation_montage_draws_the_truth_and_the_segmentors_argmax():
    volumes = [_volume("a", 2, 6)]
    slots = [(0, 3), (0, 8)]
    picture = segmentation_montage(_Threshold(), volumes, slots, {"background": 0, "liver": 1}, tile=16)
    predicted = [(volumes[0].images[s] > 0.5).astype(np.int64) for _, s in slots]
    expected = render_montage(
        [MontageColumn(volumes[0].images[s], volumes[0].labels[s], (p,), caption=f"a s{s}")
         for (_, s), p in zip(slots, predicted)],
        {"liver": 1}, rows=("prediction",), tile=16,
    )
    assert np.array_equal(picture, expected)
    red = np.all(picture == CLASS_COLOURS[1], axis=-1)
    red[-20:] = False  # the legend
    ring = contour(np.ones((6, 6), bool)).sum()
    assert red.sum() == 2 * ring  # slice 3: the truth's ring and the prediction's; slice 8: nothing
