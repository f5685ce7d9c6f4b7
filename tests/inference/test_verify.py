"""Stopping a propagated structure where it stops looking like the annotated one."""

import numpy as np
import pytest

from jointreg.inference.verify import stop_at_appearance_change


def _volume():
    """Slice 3 annotated: a bright square (0.8) on a dark background (0.2). The organ continues
    on slices 1-5 (bright under the square) and ends there: on 0 and 6 the square covers dark
    tissue. Propagation copied the square onto every slice."""
    images = np.full((7, 10, 10), 0.2, np.float32)
    labels = np.zeros((7, 10, 10), np.int16)
    labels[:, 3:7, 3:7] = 1
    images[1:6, 3:7, 3:7] = 0.8 + 0.01 * np.arange(16).reshape(4, 4)
    propagated = np.ones((7, 10, 10), bool)
    propagated[3] = False
    return labels, images, propagated


def test_the_structure_stops_at_the_first_slice_that_does_not_look_like_it():
    labels, images, propagated = _volume()
    out = stop_at_appearance_change(labels, images, [3], [1], propagated=propagated)
    assert [int((out[s] == 1).sum()) for s in range(7)] == [0, 16, 16, 16, 16, 16, 0]
    # Once it failed it stays stopped, even where the tissue looks right again further out.
    images[0, 3:7, 3:7] = images[1, 3:7, 3:7]
    images[1, 3:7, 3:7] = 0.2
    out = stop_at_appearance_change(labels, images, [3], [1], propagated=propagated)
    assert [int((out[s] == 1).sum()) for s in range(7)] == [0, 0, 16, 16, 16, 16, 0]


def test_annotated_voxels_and_other_classes_are_never_changed():
    labels, images, propagated = _volume()
    images[3, 3:7, 3:7] = 0.2  # even if the annotation itself looks unlike its neighbours
    labels[:, 0, 0] = 2
    out = stop_at_appearance_change(labels, images, [3], [1], propagated=propagated)
    assert (out[3] == labels[3]).all() and (out[:, 0, 0] == 2).all()
    assert stop_at_appearance_change(labels, images, [3], [1], propagated=propagated, threshold=0.0).sum() == labels.sum()
    with pytest.raises(ValueError, match="threshold"):
        stop_at_appearance_change(labels, images, [3], [1], propagated=propagated, threshold=1.5)


def _gate_volume():
    """Slice 0 annotated: class 1 a bright 10 × 10 square [1:11, 1:11] (0.80-0.899) on dark tissue
    (0.2). On slice 1 the organ has shrunk to the 7 × 7 square [2:9, 2:9] (0.81), but propagation
    kept the 10 × 10 label; inside that label a bright speck (one pixel, 0.81) lies at (10, 10),
    and a dark pixel (a vessel, 0.2) at (5, 5) inside the organ."""
    images = np.full((2, 12, 12), 0.2, np.float32)
    labels = np.zeros((2, 12, 12), np.int16)
    labels[:, 1:11, 1:11] = 1
    images[0, 1:11, 1:11] = 0.8 + 0.001 * np.arange(100).reshape(10, 10)
    images[1, 2:9, 2:9] = 0.81
    images[1, 5, 5] = 0.2
    images[1, 10, 10] = 0.81
    propagated = np.zeros((2, 12, 12), bool)
    propagated[1] = True
    return labels, images, propagated


def test_the_gate_shrinks_a_propagated_region_to_the_tissue_that_looks_annotated():
    from jointreg.inference.verify import gate_by_appearance

    labels, images, propagated = _gate_volume()
    out = gate_by_appearance(labels, images, [0], [1], propagated=propagated, percentile=1.0)
    expected = np.zeros((12, 12), np.int16)
    expected[2:9, 2:9] = 1  # the speck passed the intensity test and is opened away; the vessel is filled
    assert np.array_equal(out[1], expected)
    assert np.array_equal(out[0], labels[0])  # the annotation itself is never changed
    # percentile 0 is no gate; other classes and unpropagated pixels are left alone
    assert np.array_equal(gate_by_appearance(labels, images, [0], [1], propagated=propagated, percentile=0.0), labels)
    labels[1, 0, :] = 2
    out = gate_by_appearance(labels, images, [0], [1, 2], propagated=propagated, percentile=1.0)
    assert (out[1, 0, :] == 2).all()  # class 2 has no annotated voxel: no range, nothing removed
    out = gate_by_appearance(labels, images, [0], [1], propagated=np.zeros_like(propagated), percentile=1.0)
    assert np.array_equal(out, labels)
    with pytest.raises(ValueError, match="percentile"):
        gate_by_appearance(labels, images, [0], [1], propagated=propagated, percentile=50.0)


def test_appearance_ranges_are_the_annotated_percentiles_of_each_class():
    from jointreg.inference.verify import appearance_ranges

    images = np.zeros((3, 11, 11), np.float32)
    images[0] = np.arange(121, dtype=np.float32).reshape(11, 11)
    labels = np.full((3, 11, 11), 3)
    labels[0] = 0
    labels[0, :, :] = np.where(images[0] <= 100, 1, 0)  # class 1: intensities 0..100
    ranges = appearance_ranges(images, labels, [0], [1, 2], 1.0)
    assert ranges == {1: pytest.approx((1.0, 99.0))}  # class 2 has no annotated voxel: no range
    assert appearance_ranges(images, labels, [0], [1], 0.0) == {}
    with pytest.raises(ValueError, match="percentile"):
        appearance_ranges(images, labels, [0], [1], 50.0)


def test_kept_by_appearance_opens_and_fills_within_the_region():
    from jointreg.inference.verify import kept_by_appearance

    image = np.zeros((9, 9), np.float32)
    region = np.zeros((9, 9), bool)
    region[1:8, 1:8] = True
    image[1:8, 1:8] = 1.0
    image[4, 4] = 5.0  # an enclosed vessel: out of range, but inside the structure
    image[1, 7] = 0.0  # a corner that does not look like it: removed
    kept = kept_by_appearance(region, image, 0.5, 1.5)
    assert kept[4, 4] and not kept[1, 7] and kept.sum() == 48
    assert not kept[~region].any()
