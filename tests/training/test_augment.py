"""SliceAugmenter: reproducible per seed, identity settings change nothing, labels move with the image."""

from dataclasses import replace

import numpy as np
import pytest

from jointreg.training.augment import SliceAugmenter
from jointreg.training.config import AugmentationConfig

# Every random change switched off, but the transforms still run (enabled, probability 1).
IDENTITY = AugmentationConfig(
    enabled=True, rotate=0.0, scale=(1.0, 1.0), translate=0.0, elastic=0.0, brightness=0.0, contrast=0.0,
    gamma=(1.0, 1.0), noise=0.0, probability=1.0,
)
# Geometry only: a large rotation, no intensity change.
ROTATE = replace(IDENTITY, rotate=40.0)
IGNORE = 255
LEVEL = 0.3  # image intensity of class c is LEVEL * c


def _slice(dtype=np.int16) -> tuple[np.ndarray, np.ndarray]:
    """A 48 × 48 label map with two off-centre blocks and an ignore strip, and its image."""
    label = np.zeros((48, 48), dtype)
    label[6:20, 8:30] = 1
    label[26:40, 30:42] = 2
    label[44:, :] = IGNORE
    image = np.where(label == IGNORE, 0.0, LEVEL * label).astype(np.float32)
    return image, label


def test_same_seed_same_draw_other_seed_another():
    augment = SliceAugmenter(AugmentationConfig(probability=1.0))
    image, label = _slice()
    first, again, other = augment(image, label, seed=7), augment(image, label, seed=7), augment(image, label, seed=8)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])
    # a fresh augmenter (a resumed run) draws the same for the same seed
    fresh = SliceAugmenter(AugmentationConfig(probability=1.0))(image, label, seed=7)
    assert np.array_equal(first[0], fresh[0]) and np.array_equal(first[1], fresh[1])


def test_disabled_returns_the_inputs_themselves():
    image, label = _slice()
    out_image, out_label = SliceAugmenter(replace(IDENTITY, enabled=False))(image, label, seed=3)
    assert out_image is image and out_label is label


def test_identity_settings_return_the_input_unchanged():
    image, label = _slice()
    out_image, out_label = SliceAugmenter(IDENTITY)(image, label, seed=3)
    assert out_image.dtype == np.float32 and out_label.dtype == np.int16
    assert np.allclose(out_image, image, atol=1e-6)
    assert np.array_equal(out_label, label)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.int64])
def test_labels_stay_class_ids_and_move_with_the_image(dtype):
    image, label = _slice(dtype)
    out_image, out_label = SliceAugmenter(ROTATE)(image, label, seed=11)
    assert out_image.shape == image.shape and out_label.shape == label.shape
    assert out_label.dtype == dtype
    assert set(np.unique(out_label)) <= {0, 1, 2, IGNORE}  # nearest neighbour: no blended ids
    assert {1, 2} <= set(np.unique(out_label))
    assert (out_label != label).mean() > 0.1  # it did move
    # Wherever the label is a class, the image shows that class's intensity (except along edges,
    # where the image is interpolated linearly): the label was moved by the same transform.
    classes = out_label != IGNORE
    agree = np.abs(out_image - LEVEL * out_label) < 0.05
    assert agree[classes].mean() > 0.93, agree[classes].mean()
    assert out_image.min() >= 0.0 and out_image.max() <= 1.0


def test_intensity_changes_keep_the_range_and_the_labels():
    image, label = _slice()
    image = np.clip(image + 0.4, 0.0, 1.0)  # bright: brightening and noise push it past 1 before the clip
    strong = replace(IDENTITY, brightness=0.4, contrast=0.4, gamma=(0.5, 2.0), noise=0.1)
    out_image, out_label = SliceAugmenter(strong)(image, label, seed=5)
    assert np.array_equal(out_label, label)  # no geometric change
    assert out_image.min() >= 0.0 and out_image.max() <= 1.0
    assert np.abs(out_image - image).mean() > 0.01
