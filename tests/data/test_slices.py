import json
import logging

import numpy as np
import pytest

from jointreg.data.dataset import Dataset
from jointreg.data.nifti import Volume, read_image, read_label, write_volume
from jointreg.data.slices import (
    PlaneGeometry,
    SliceSpec,
    SliceStatus,
    load_sliced_dataset,
    normalize_intensities,
    slice_status,
    slice_volume,
    stack_status,
    through_plane_axis,
)
from jointreg.errors import ConfigError, InputError


def _affine(spacing, origin=(-10.0, 20.0, 5.0)):
    affine = np.diag([*spacing, 1.0]).astype(np.float64)
    affine[:3, 3] = origin
    return affine


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


# --- axis and status -------------------------------------------------------------------------
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


# --- spec and normalisation ------------------------------------------------------------------
def test_slice_spec_json_roundtrip_and_validation():
    spec = SliceSpec(axis=1, size=(96, 64), normalization="mr", mr_percentiles=(1, 99))
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["size"] == [96, 64]
    back = SliceSpec.from_dict(data)
    assert back == spec and back.size == (96, 64) and back.mr_percentiles == (1.0, 99.0)
    for bad in ({"size": (7, 64)}, {"size": (64,)}, {"normalization": "zscore"}, {"axis": 3},
                {"ct_window": (240, -160)}, {"mr_percentiles": (50, 50)}):
        with pytest.raises(ConfigError):
            SliceSpec(**bad)
    with pytest.raises(ConfigError, match="unknown slice setting"):
        SliceSpec.from_dict({"sizes": [64, 64]})


@pytest.mark.parametrize(
    "modality, method",
    [("CT", "ct"), ("ct", "ct"), ("MRI", "mr"), ("T2-SPIR", "mr"), ("T1w", "mr"), ("cine", "mr"),
     ("bSSFP", "mr"), ("echo", "mr"), ("US", "mr"), ("ultrasound", "mr"), ("noNorm", "none")],
)
def test_auto_normalization_from_channel_name(modality, method):
    assert SliceSpec().resolve_normalization(modality) == method


def test_unknown_modality_warns_and_uses_percentiles(caplog):
    with caplog.at_level(logging.WARNING, logger="jointreg.data.slices"):
        assert SliceSpec().resolve_normalization("PET") == "mr"
    assert "unknown modality 'PET'" in caplog.text
    assert SliceSpec(normalization="ct").resolve_normalization("MRI") == "ct"


def test_ct_window_maps_exactly():
    hu = np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0], np.float32)
    out = normalize_intensities(hu, "ct", SliceSpec())
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [0.0, 0.0, 0.5, 1.0, 1.0])


def test_mr_percentiles_are_taken_over_the_whole_volume():
    # Slice 0 holds 0..100, slice 1 holds 100..200: per-volume percentiles (0, 50) are 0 and
    # 100, so slice 1 saturates; per-slice percentiles would stretch each slice to [0, 1].
    volume = np.stack([np.linspace(0, 100, 101), np.linspace(100, 200, 101)], axis=-1).astype(np.float32)
    out = normalize_intensities(volume, "mr", SliceSpec(mr_percentiles=(0, 50)))
    np.testing.assert_allclose(out[:, 0], np.linspace(0, 1, 101), atol=1e-6)
    np.testing.assert_array_equal(out[:, 1], 1.0)
    assert normalize_intensities(np.full((3, 3), 7.0), "mr", SliceSpec()).max() == 0.0
    raw = np.array([[-5.0, 3.5]])
    np.testing.assert_array_equal(normalize_intensities(raw, "none", SliceSpec()), raw.astype(np.float32))


# --- plane geometry --------------------------------------------------------------------------
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


# --- sliced volumes --------------------------------------------------------------------------
def _volume_pair(shape=(40, 30, 6), spacing=(1.0, 1.0, 5.0), ignore=9):
    image_array = np.zeros(shape, np.float32)
    label_array = np.full(shape, ignore, np.int16)
    label_array[..., 1] = 0                                  # empty-annotated slice
    organ = _ellipse(shape[:2], (20, 15), (12, 9))
    label_array[..., 3] = np.where(organ, 1, 0)              # annotated slice
    image_array[organ] = 100.0
    affine = _affine(spacing)
    return Volume(image_array, affine), Volume(label_array, affine)


def test_slice_volume_statuses_geometry_and_padding():
    image, label = _volume_pair()
    sliced = slice_volume(image, label, SliceSpec(size=(64, 64)), modality="MR", ignore_label=9, case="c0")
    assert sliced.axis == 2 and sliced.num_slices == 6
    assert sliced.images.shape == sliced.labels.shape == (6, 64, 64)
    assert sliced.images.dtype == np.float32 and 0.0 <= sliced.images.min() and sliced.images.max() <= 1.0
    assert sliced.status == (SliceStatus.UNANNOTATED, SliceStatus.EMPTY, SliceStatus.UNANNOTATED,
                             SliceStatus.ANNOTATED, SliceStatus.UNANNOTATED, SliceStatus.UNANNOTATED)
    assert sliced.annotated_indices == [1, 3]
    assert sliced.foreground_indices == [3]
    assert sliced.unannotated_indices == [0, 2, 4, 5]
    # 40 x 30 mm into 64 x 64: 0.625 mm pixels, 64 x 48 resized, 8 columns of padding each side.
    assert sliced.geometry.resized_shape == (64, 48) and sliced.geometry.padding == (0, 0, 8, 8)
    assert (sliced.labels[0] == 9).all()                     # unannotated stays ignore, padding too
    assert (sliced.labels[3][:, :8] == 0).all()              # annotated slices pad with background
    assert sliced.reference.shape == (40, 30, 6) and sliced.reference.array.strides == (0, 0, 0)
    assert sliced.source_shape == (40, 30, 6)


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_to_volume_restores_source_shape_and_axis_order(axis):
    image, label = _volume_pair()
    spec = SliceSpec(axis=axis, size=(128, 128))
    sliced = slice_volume(image, label, spec, modality="MR", ignore_label=9, case="c0")
    assert sliced.axis == (2 if axis is None else axis)
    assert sliced.images.shape[0] == image.shape[sliced.axis]
    back = sliced.to_volume(sliced.labels, "label")          # every in-plane scale is >= 3: exact
    np.testing.assert_array_equal(back, label.array)
    restored = sliced.to_volume(sliced.images, "image")
    assert restored.shape == image.shape
    probs = np.stack([sliced.labels == c for c in (0, 1, 9)], axis=1).astype(np.float32)
    assert sliced.to_volume(probs, "probabilities").shape == (3, *image.shape)


def test_to_volume_output_writes_with_the_source_geometry(tmp_path):
    image, label = _volume_pair()
    sliced = slice_volume(image, label, SliceSpec(size=(80, 80)), modality="MR", ignore_label=9, case="c0")
    path = write_volume(tmp_path / "pred.nii.gz", sliced.to_volume(sliced.labels, "label"),
                        reference=sliced.reference, is_label=True)
    written = read_label(path)
    np.testing.assert_array_equal(written.affine, image.affine)
    np.testing.assert_array_equal(written.array, label.array)


def test_slice_volume_rejects_mismatched_label(tmp_path):
    image, label = _volume_pair()
    bad = Volume(label.array[:, :, :5], label.affine, path=tmp_path / "bad.nii.gz")
    with pytest.raises(InputError, match="bad.nii.gz: label shape"):
        slice_volume(image, bad, SliceSpec(), modality="CT", ignore_label=9, case="c0")


def test_load_sliced_dataset_with_full_labels(make_dataset):
    root = make_dataset(n_cases=2, shape=(32, 24, 6), ignore=True)
    ds = Dataset.open(root)
    with pytest.raises(InputError, match="labelsTr_full"):
        load_sliced_dataset(ds, SliceSpec(size=(32, 32)), full_labels=True, progress=False)
    for case in ds.cases():
        full = ds.read_label(case)
        sparse = np.full(full.shape, 3, np.int16)
        sparse[..., 3] = full.array[..., 3]
        ds.write_label(case, full.array, reference=full, full=True)
        ds.write_label(case, sparse, reference=full)
    sliced = load_sliced_dataset(ds, SliceSpec(size=(32, 32)), cases=["case001"], full_labels=True, progress=False)
    assert [s.case for s in sliced] == ["case001"]
    one = sliced[0]
    assert one.annotated_indices == [3]
    assert one.full_labels.shape == one.labels.shape == (6, 32, 32)
    np.testing.assert_array_equal(one.full_labels[3], one.labels[3])
    assert (one.labels[0] == 3).all() and not (one.full_labels[0] == 3).any()
    # CT normalisation: the ellipsoid phantom's organ (~60 HU) maps inside the window.
    image = read_image(ds.image_path("case001"))
    assert one.images.max() == pytest.approx(min(1.0, (image.array.max() + 160) / 400), abs=0.05)
    with pytest.raises(InputError, match="no image for case"):
        load_sliced_dataset(ds, SliceSpec(), cases=["nope"], progress=False)
    ds.label_path("case000", full=True).unlink()       # an unlabelled case has no full label
    both = load_sliced_dataset(ds, SliceSpec(size=(32, 32)), full_labels=True, progress=False)
    assert both[0].full_labels is None and both[1].full_labels is not None


@pytest.mark.realdata
def test_real_mr_volume_slices_along_z_and_maps_back(shared_data):
    image = read_image(shared_data / "chaos_t2" / "image_2.nii.gz")
    label = read_label(shared_data / "chaos_t2" / "label_2.nii.gz")
    sliced = slice_volume(image, label, SliceSpec(), modality="T2-SPIR", ignore_label=None, case="2")
    assert sliced.axis == 2
    assert sliced.geometry.spacing == pytest.approx((2.5, 2.5), rel=1e-4)
    back = sliced.to_volume(sliced.labels, "label")
    liver, restored = label.array == 1, back == 1
    dice = 2 * (liver & restored).sum() / (liver.sum() + restored.sum())
    assert dice > 0.97
