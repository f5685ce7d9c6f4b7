"""data_tools/paired_nifti.py on small NIfTI pairs."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from data_tools import paired_nifti
from data_tools._common import LabelMap
from jointreg.data.dataset import Dataset
from jointreg.data.validate import validate_dataset
from jointreg.errors import InputError

SHAPE = (7, 6, 4)


@pytest.fixture
def pairs(tmp_path, write_nifti, affine):
    """image_{1,2,10}.nii.gz (float64) + label_*.nii.gz with values 0/200/500/600."""
    src = tmp_path / "src"
    for n in (1, 2, 10):
        geometry = affine(spacing=(1.25, 1.25, 8.0), origin=(n, -n, 2.0 * n))
        image = np.arange(np.prod(SHAPE), dtype=np.float64).reshape(SHAPE) + n + 0.25
        label = np.zeros(SHAPE, np.float64)
        label[1:3, 1:3, :] = 200
        label[4, 4, n % 4] = 500
        label[0, 5, 0] = 600
        write_nifti(src / f"image_{n}.nii.gz", image, geometry)
        write_nifti(src / f"label_{n}.nii.gz", label, geometry)
    return src


def convert(src, out, **kwargs):
    kwargs.setdefault("labels", str(src / "label_*.nii.gz"))
    kwargs.setdefault("modality", "MR")
    return paired_nifti.convert_paired_nifti(str(src / "image_*.nii.gz"), out, **kwargs)


def test_convert_with_map_prefix_and_test_case(pairs, tmp_path):
    out = convert(pairs, tmp_path / "out", label_map=LabelMap.parse(["200=myocardium:2", "500=lv:3", "600=rv:1"]),
                  case_prefix="ms_", test_cases=["10"])
    ds = Dataset.open(out)
    assert ds.cases("Tr") == ["ms_001", "ms_002"] and ds.cases("Ts") == ["ms_010"]
    assert ds.spec.labels == {"background": 0, "rv": 1, "myocardium": 2, "lv": 3}
    assert ds.spec.modality == "MR" and ds.spec.num_training == 2 and ds.spec.name == "out"
    source = nib.load(str(pairs / "image_2.nii.gz"))
    image = ds.read_image("ms_002")
    written = nib.load(str(ds.image_path("ms_002")))
    assert written.get_data_dtype() == np.float32
    np.testing.assert_array_equal(image.array, source.get_fdata().astype(np.float32))
    np.testing.assert_array_equal(image.affine, source.affine)
    label = ds.read_label("ms_010", "Ts")
    assert label.array[4, 4, 2] == 3 and label.array[0, 5, 0] == 1 and label.array[1, 1, 0] == 2
    assert np.bincount(label.array.ravel()).tolist() == [int(np.prod(SHAPE)) - 16 - 2, 1, 16, 1]
    np.testing.assert_array_equal(label.affine, ds.read_image("ms_010", "Ts").affine)
    conversion = json.loads((out / "dataset.json").read_text())["conversion"]
    assert conversion["cases"]["ms_010"] == "image_10.nii.gz"
    assert conversion["cases_per_split"] == {"Tr": 2, "Ts": 1}
    report = validate_dataset(out)
    assert report.ok, report.problems


def test_without_map_values_are_kept(pairs, tmp_path):
    ds = Dataset.open(convert(pairs, tmp_path / "out"))
    assert ds.spec.labels == {"background": 0, "label_200": 200, "label_500": 500, "label_600": 600}
    assert set(np.unique(ds.read_label("001").array)) == {0, 200, 500, 600}


def test_unmapped_background_and_images_only(pairs, tmp_path):
    ds = Dataset.open(convert(pairs, tmp_path / "a", label_map=LabelMap.parse(["500=lv:3"]), unmapped="background"))
    assert set(np.unique(ds.read_label("002").array)) == {0, 3}
    # Images only: every training label is "ignore" everywhere; test cases get no label.
    only = Dataset.open(convert(pairs, tmp_path / "b", labels=None, label_map=LabelMap.parse(["1=liver:1"]), test_cases=["2"]))
    assert only.spec.labels == {"background": 0, "liver": 1, "ignore": 2}
    assert only.cases("Tr") == ["001", "010"] and only.cases("Ts") == ["002"]
    assert np.all(only.read_label("010").array == 2)
    assert not only.label_path("002", "Ts").exists() and not (only.root / "labelsTs").exists()
    report = validate_dataset(only.root)
    assert report.ok, report.problems


def test_test_fraction_is_seeded(pairs, tmp_path):
    a = Dataset.open(convert(pairs, tmp_path / "a", test_fraction=0.34, seed=1)).cases("Ts")
    b = Dataset.open(convert(pairs, tmp_path / "b", test_fraction=0.34, seed=1)).cases("Ts")
    assert a == b and len(a) == 1


def test_overwrite(pairs, tmp_path):
    convert(pairs, tmp_path / "out")
    with pytest.raises(InputError, match="already exists"):
        convert(pairs, tmp_path / "out")
    (tmp_path / "out" / "stale.txt").write_text("old")
    convert(pairs, tmp_path / "out", overwrite=True)
    assert not (tmp_path / "out" / "stale.txt").exists()
    assert Dataset.open(tmp_path / "out").cases() == ["001", "002", "010"]


def test_label_geometry_mismatch(pairs, tmp_path, write_nifti, affine):
    write_nifti(pairs / "label_2.nii.gz", np.zeros(SHAPE), affine(spacing=(1.25, 1.25, 8.0), origin=(2.5, -2, 4)))
    with pytest.raises(InputError, match=r"label_2.nii.gz: does not fit its image image_2.nii.gz: affine differs by up to 0.5 mm"):
        convert(pairs, tmp_path / "out")
    write_nifti(pairs / "label_2.nii.gz", np.zeros((7, 6, 3)), affine(spacing=(1.25, 1.25, 8.0), origin=(2, -2, 4)))
    with pytest.raises(InputError, match=r"label_2.nii.gz: does not fit its image.*shape \(7, 6, 3\) differs"):
        convert(pairs, tmp_path / "out")
    assert not (tmp_path / "out").exists()
