import numpy as np
import pytest
import torch

from jointreg.metrics.overlap import dice, dice_from_counts, overlap_counts


def _square(shape=(12, 12), lo=2, hi=8):
    m = np.zeros(shape, bool)
    m[lo:hi, lo:hi] = True
    return m


def test_identical_masks_have_dice_one():
    m = _square()
    assert dice(m, m) == 1.0


def test_disjoint_masks_have_dice_zero():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:3] = True
    b[-3:] = True
    assert dice(a, b) == 0.0


def test_half_overlap_known_value():
    # |A| = 8, |B| = 4, |A ∩ B| = 4 -> 2*4 / 12.
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[:1] = True
    assert dice(a, b) == pytest.approx(8 / 12)


def test_empty_mask_rules():
    empty = np.zeros((6, 6), bool)
    assert dice(empty, empty) == 1.0
    assert dice(_square((6, 6), 1, 3), empty) == 0.0
    assert dice(empty, _square((6, 6), 1, 3)) == 0.0
    assert dice_from_counts(0, 0, 0) == 1.0


def test_unknown_voxels_are_not_counted():
    gt = _square()
    pred = gt.copy()
    pred[10:, 10:] = True  # a false positive ...
    known = np.ones_like(gt)
    known[9:, 9:] = False  # ... lying where the truth is unknown
    counts = overlap_counts(pred, gt, known)
    assert (counts.true_positive, counts.pred, counts.gt) == (36, 36, 36)
    assert dice(pred, gt, known) == 1.0
    assert dice(pred, gt) < 1.0


def test_torch_tensors_give_the_numpy_answer():
    a = _square((8, 8, 4), 1, 5)
    b = np.roll(a, 1, axis=0)
    assert dice(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(dice(a, b))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((3, 3)), np.zeros((3, 4)))
