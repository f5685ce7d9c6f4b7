"""jointreg.data.slices.resample: label resampling (through PlaneGeometry) keeps thin structures and areas."""

import numpy as np
import pytest

from jointreg.data.slices import PlaneGeometry


def _ellipse(shape, centre, radii):
    grid = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def _blobs(shape):
    """Two big elliptic blobs (classes 1, 2) on background, in a 2D grid."""
    h, w = shape
    label = np.zeros(shape, np.int16)
    label[_ellipse(shape, (h * 0.5, w * 0.55), (h * 0.3, w * 0.25))] = 1
    label[_ellipse(shape, (h * 0.3, w * 0.3), (h * 0.12, w * 0.12))] = 2
    return label


@pytest.mark.parametrize(
    "shape, spacing, size, start",
    [
        ((64, 64), (2.0, 2.0), (128, 128), "source"),      # enlarging: source -> grid -> source
        ((40, 30), (1.0, 1.0), (80, 80), "source"),        # enlarging with padding
        ((256, 256), (1.25, 1.25), (128, 128), "training"),  # halving: grid -> source -> grid
        ((120, 96), (1.0, 1.0), (60, 60), "training"),
    ],
)
def test_label_round_trip_is_exact_through_the_finer_grid(shape, spacing, size, start):
    geometry = PlaneGeometry(shape, spacing, size)
    if start == "source":
        label = _blobs(shape)[None]
        back = geometry.to_source(geometry.to_training(label, "label"), "label")
    else:
        rh, rw = geometry.resized_shape
        top, _, left, _ = geometry.padding
        label = np.zeros((1, *size), np.int16)
        label[0, top : top + rh, left : left + rw] = _blobs((rh, rw))
        back = geometry.to_training(geometry.to_source(label, "label"), "label")
    np.testing.assert_array_equal(back, label)
    assert back.dtype == np.int16


@pytest.mark.parametrize(
    "shape, size, stride",
    [((64, 64), (128, 128), 1), ((256, 256), (128, 128), 2), ((100, 100), (96, 96), 1),
     ((200, 100), (128, 72), 1), ((150, 150), (32, 32), 2)],   # the last shrinks 4.7 times
)
def test_one_pixel_wide_line_survives_label_resampling(shape, size, stride):
    geometry = PlaneGeometry(shape, (1.0, 1.0), size)
    columns = np.arange(1, shape[1] - 1, stride)
    stack = np.zeros((columns.size, *shape), np.int16)
    stack[np.arange(columns.size), 5 : shape[0] - 5, columns] = 1   # one vertical line per slice
    out = geometry.to_training(stack, "label")
    assert (out == 1).reshape(columns.size, -1).any(axis=1).all()
    diagonal = np.zeros((1, *shape), np.int16)
    n = min(shape)
    diagonal[0, np.arange(n), np.arange(n)] = 2
    out = geometry.to_training(diagonal, "label")[0]
    # The line stays connected: every row it crosses on the training grid holds a pixel of it.
    rows = np.flatnonzero((out == 2).any(axis=1))
    assert rows.size >= min(geometry.resized_shape) - 1
    assert np.array_equal(rows, np.arange(rows[0], rows[-1] + 1))


@pytest.mark.parametrize("shape, size", [((256, 256), (128, 128)), ((200, 200), (128, 128)), ((100, 100), (96, 96))])
def test_label_shrinking_does_not_grow_any_class(shape, size):
    # Ties in the halving steps alternate, so areas are kept on average (a naive "ties go to
    # foreground" rule grows every disc by about 1 %).
    geometry = PlaneGeometry(shape, (1.0, 1.0), size)
    rng = np.random.default_rng(0)
    stack = np.zeros((12, *shape), np.int16)
    for disc in stack:
        centre = rng.uniform(0.35, 0.65, 2) * shape
        disc[_ellipse(shape, centre, (shape[0] * rng.uniform(0.1, 0.3),) * 2)] = 1
    out = geometry.to_training(stack, "label")
    mm2 = np.prod(geometry.spacing)
    ratio = (out == 1).sum() * mm2 / (stack == 1).sum()
    assert ratio == pytest.approx(1.0, abs=0.004)


def test_label_ids_and_ignore_are_kept_as_classes():
    geometry = PlaneGeometry((32, 20), (1.0, 1.0), (64, 64))
    label = np.full((1, 32, 20), 7, np.int16)     # 7 = ignore
    label[0, 5:25, 3:17] = 0
    label[0, 10:20, 8:12] = 4
    out = geometry.to_training(label, "label")
    assert set(np.unique(out)) == {0, 4, 7}       # 0 also pads the grid
    back = geometry.to_source(out, "label")
    np.testing.assert_array_equal(back, label)
