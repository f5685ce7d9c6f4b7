"""The 3D-mode box: exact maps between source voxels, training slices and the box."""

from __future__ import annotations

import numpy as np
import pytest

from jointreg.data.nifti import Volume
from jointreg.data.slices import SliceSpec, slice_volume
from jointreg.inference.volume_box import (
    AxisMap, VolumeBox, box_in_stack, box_to_stack_coordinates, image_box, label_box, probabilities_box, source_to_box,
    stack_in_box, stack_spacing,
)


def _sliced(shape=(64, 48, 10), spacing=(1.25, 1.25, 7.7), size=(32, 32), seed=0):
    rng = np.random.default_rng(seed)
    image = rng.random(shape).astype(np.float32)
    label = np.zeros(shape, np.int16)
    label[10:40, 8:30, 2:8] = 1
    affine = np.diag([*spacing, 1.0])
    spec = SliceSpec(size=size, normalization="none")
    return slice_volume(Volume(image, affine), Volume(label, affine), spec, modality="CT", ignore_label=2, case="c")


def test_axis_map_inverse_and_composition_are_exact():
    a = AxisMap((2.0, 0.5, 4.0), (1.0, -3.0, 0.25))
    b = AxisMap((0.25, 3.0, 1.0), (2.0, 0.0, -1.0))
    x = np.random.default_rng(0).normal(size=(3, 5, 4)) * 10
    np.testing.assert_allclose(a.inverse().apply(a.apply(x)), x, atol=1e-4)
    np.testing.assert_allclose(a.then(b).apply(x), b.apply(a.apply(x)), atol=1e-4)


def test_source_to_box_centres_the_volume():
    # 36 slices at 7.7 mm in a 40-slice box at 7.7 mm: two empty slices on each side.
    m = source_to_box((36,), (7.7,), (7.7,), (40,))
    assert m.apply(np.array([[0.0, 35.0]]))[0].tolist() == [2.0, 37.0]
    # 256 voxels at 1.25 mm into 64 at 5 mm: voxel areas aligned (voxels 0..3 -> box voxel 0).
    m = source_to_box((256,), (1.25,), (5.0,), (64,))
    np.testing.assert_allclose(m.apply(np.array([[1.5, 253.5]]))[0], [0.0, 63.0], atol=1e-6)


def test_fitting_box_of_chaos_like_volumes():
    a = _sliced(shape=(256, 256, 36), size=(64, 64))
    b = _sliced(shape=(256, 256, 31), size=(64, 64))
    assert stack_spacing(a) == (5.0, 5.0, 7.7)
    box = VolumeBox.fitting([a, b])
    assert box.spacing == (5.0, 5.0, 7.7) and box.shape == (64, 64, 40)


def test_image_box_is_the_stack_where_the_grids_coincide():
    v = _sliced(shape=(64, 64, 10), spacing=(2.0, 2.0, 5.0), size=(32, 32))  # 4 mm training pixels
    box = VolumeBox((4.0, 4.0, 5.0), (32, 32, 14))
    boxed = image_box(box, v)
    stack = np.moveaxis(v.images, 0, -1)  # (H, W, S) = source axis order
    np.testing.assert_allclose(boxed[..., 2:12], stack, atol=1e-5)
    assert np.all(boxed[..., :2] == 0) and np.all(boxed[..., 12:] == 0)
    labels = label_box(box, v, v.labels, ignore_index=2)
    np.testing.assert_array_equal(labels[..., 2:12], np.moveaxis(v.labels, 0, -1))
    assert np.all(labels[..., :2] == 2)


def test_stack_and_box_coordinates_round_trip():
    v = _sliced()
    box = VolumeBox((3.0, 2.5, 6.0), (24, 32, 16))
    q = stack_in_box(box, v)
    back = box_to_stack_coordinates(box, v, q)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in v.images.shape], indexing="ij"))
    np.testing.assert_allclose(back, grid, atol=1e-3)
    coords, inside = box_in_stack(box, v)
    assert coords.shape == (3, 24, 32, 16) and inside.any() and not inside.all()


def test_box_refuses_bad_settings():
    with pytest.raises(ValueError, match="three"):
        VolumeBox((1.0, 1.0), (8, 8, 8))
    with pytest.raises(ValueError, match="positive"):
        VolumeBox((1.0, 0.0, 1.0), (8, 8, 8))


def test_probabilities_box_carries_each_class_and_background_outside():
    v = _sliced(shape=(64, 64, 10), spacing=(2.0, 2.0, 5.0), size=(32, 32))
    box = VolumeBox((4.0, 4.0, 5.0), (32, 32, 14))
    onehot = np.stack([v.labels == 0, v.labels == 1], axis=1).astype(np.float32)  # (S, K, H, W)
    boxed = probabilities_box(box, v, onehot)
    assert boxed.shape == (2, 32, 32, 14)
    np.testing.assert_allclose(boxed[1][..., 2:12], np.moveaxis(onehot[:, 1], 0, -1), atol=1e-5)
    assert np.all(boxed[0][..., :2] == 1) and np.all(boxed[1][..., 12:] == 0)
