"""jointreg.data.slices.status: the slicing axis and per-slice label status."""

import numpy as np
import pytest

from jointreg.data.slices import SliceStatus, slice_status, stack_status, through_plane_axis


@pytest.mark.parametrize(
    "spacing, axis",
    [((1.25, 1.25, 7.7), 2), ((5.0, 1.0, 1.0), 0), ((1.0, 3.0, 1.0), 1), ((1.0, 1.0, 1.0), 2),
     ((2.0, 2.0, 1.0), 1), ((1.0000001, 1.0, 1.0), 2)],
)
def test_through_plane_axis_is_largest_spacing_ties_last(spacing, axis):
    assert through_plane_axis(spacing) == axis


def test_slice_status_three_cases():
    ignore = 3
    assert slice_status(None, ignore) is SliceStatus.UNANNOTATED
    assert slice_status(np.full((4, 4), ignore), ignore) is SliceStatus.UNANNOTATED
    empty = np.full((4, 4), ignore)
    empty[0, 0] = 0
    assert slice_status(empty, ignore) is SliceStatus.EMPTY
    partial = empty.copy()
    partial[1, 1] = 2
    assert slice_status(partial, ignore) is SliceStatus.ANNOTATED
    # Without an ignore id every voxel is known.
    assert slice_status(np.zeros((4, 4)), None) is SliceStatus.EMPTY
    stack = np.stack([np.full((4, 4), ignore), empty, partial])
    assert stack_status(stack, ignore) == (SliceStatus.UNANNOTATED, SliceStatus.EMPTY, SliceStatus.ANNOTATED)
    assert stack_status(None, ignore, 2) == (SliceStatus.UNANNOTATED,) * 2
