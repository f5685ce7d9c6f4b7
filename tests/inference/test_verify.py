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
