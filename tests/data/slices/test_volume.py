"""jointreg.data.slices.volume: slicing volumes, mapping results back, loading a dataset."""

import numpy as np
import pytest

from jointreg.data.dataset import Dataset
from jointreg.data.nifti import Volume, read_image, read_label, write_volume
from jointreg.data.slices import SliceSpec, SliceStatus, load_sliced_dataset, slice_volume
from jointreg.errors import InputError


def _affine(spacing, origin=(-10.0, 20.0, 5.0)):
    affine = np.diag([*spacing, 1.0]).astype(np.float64)
    affine[:3, 3] = origin
    return affine


def _ellipse(shape, centre, radii):
    grid = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


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
