"""jointreg.data.slices.geometry: PlaneGeometry's scale, padding and image/probability mapping."""

import json

import numpy as np
import pytest

from jointreg.data.slices import PlaneGeometry


@pytest.mark.parametrize(
    "shape, spacing, size, resized, padding, mm",
    [
        ((200, 100), (1.0, 2.0), (128, 128), (128, 128), (0, 0, 0, 0), 1.5625),   # 200 x 200 mm
        ((200, 100), (1.0, 1.0), (128, 128), (128, 64), (0, 0, 32, 32), 1.5625),  # 200 x 100 mm
        ((120, 80), (0.5, 2.0), (128, 128), (48, 128), (40, 40, 0, 0), 1.25),     # 60 x 160 mm
        ((100, 50), (1.0, 3.0), (64, 96), (64, 96), (0, 0, 0, 0), 1.5625),
        ((64, 64), (2.0, 2.0), (128, 100), (100, 100), (14, 14, 0, 0), 1.28),
    ],
)
def test_plane_geometry_scales_in_mm_and_centres(shape, spacing, size, resized, padding, mm):
    geometry = PlaneGeometry(shape, spacing, size)
    assert geometry.resized_shape == resized
    assert geometry.padding == padding
    assert geometry.spacing == pytest.approx((mm, mm))
    ones = geometry.to_training(np.ones((1, *shape), np.float32), "image")[0]
    top, bottom, left, right = padding
    assert ones.shape == size
    np.testing.assert_allclose(ones[top : size[0] - bottom, left : size[1] - right], 1.0, atol=1e-6)
    assert ones.sum() == pytest.approx(resized[0] * resized[1], rel=1e-5)  # padding is 0
    assert PlaneGeometry.from_dict(json.loads(json.dumps(geometry.to_dict()))) == geometry


def test_centre_pixel_maps_to_centre():
    geometry = PlaneGeometry((61, 41), (1.0, 1.5), (64, 64))   # 61 x 61.5 mm, odd sizes
    image = np.zeros((1, 61, 41), np.float32)
    image[0, 30, 20] = 1.0
    out = geometry.to_training(image, "image")[0]
    peak = np.unravel_index(out.argmax(), out.shape)
    assert abs(peak[0] - 31.5) <= 0.5 and abs(peak[1] - 31.5) <= 0.5


def test_smooth_image_round_trip_is_close():
    geometry = PlaneGeometry((64, 48), (2.0, 2.5), (128, 128))
    rows, cols = np.meshgrid(np.arange(64), np.arange(48), indexing="ij")
    image = (np.sin(rows / 64 * 3) * np.cos(cols / 48 * 2)).astype(np.float32)[None]
    back = geometry.to_source(geometry.to_training(image, "image"), "image")
    assert back.shape == image.shape
    assert np.abs(back - image).max() < 0.02


def test_probabilities_stay_distributions_and_padding_is_background():
    geometry = PlaneGeometry((40, 20), (1.0, 1.0), (32, 32))
    probs = np.zeros((2, 3, 40, 20), np.float32)
    probs[:, 0], probs[:, 1, 10:30] = 1.0, 1.0
    probs[:, 0, 10:30] = 0.0
    out = geometry.to_training(probs, "probabilities")
    assert out.shape == (2, 3, 32, 32)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
    assert out[0, 0, 0, 0] == 1.0                  # padding column
    back = geometry.to_source(out, "probabilities")
    assert back.shape == probs.shape
    np.testing.assert_array_equal(back.argmax(1), probs.argmax(1))


def test_mismatched_stack_is_a_clear_error():
    geometry = PlaneGeometry((40, 20), (1.0, 1.0), (32, 32))
    with pytest.raises(ValueError, match="does not match the source grid"):
        geometry.to_training(np.zeros((1, 20, 40)), "image")
    with pytest.raises(ValueError, match="unknown kind"):
        geometry.to_training(np.zeros((1, 40, 20)), "mask")
