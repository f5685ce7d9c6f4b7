"""data_tools.dicom.convert: whole conversions (CHAOS layouts, unlabelled series, NIfTI masks)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from data_tools import dicom
from data_tools._common import LabelMap
from jointreg.data.dataset import Dataset
from jointreg.data.validate import validate_dataset
from jointreg.errors import ConfigError, InputError


def axial_positions(z_values):
    return [(-100.0, -50.0, float(z)) for z in z_values]


def test_convert_chaos_ct_layout(tmp_path, chaos_case):
    for case in ("1", "10"):
        chaos_case(tmp_path / "CT" / case)
    out = dicom.convert_dicom(
        tmp_path / "out", input_dir=tmp_path / "CT", png_masks="Ground",
        png_labels=dicom.PngLabels.parse(["liver:1"]), case_prefix="chaosct_", test_cases=["10"],
    )
    ds = Dataset.open(out)
    assert ds.cases("Tr") == ["chaosct_001"] and ds.cases("Ts") == ["chaosct_010"]
    assert ds.spec.labels == {"background": 0, "liver": 1} and ds.spec.modality == "CT"
    image, label = ds.read_image("chaosct_001"), ds.read_label("chaosct_001")
    assert np.array_equal(image.affine, label.affine)
    assert int(label.array.sum()) == 4 and set(np.unique(label.array)) == {0, 1}
    assert image.array.min() == pytest.approx(-1024.0)  # stored 0 -> -1024 HU
    report = validate_dataset(out)
    assert report.ok, report.problems


def test_series_without_masks_is_unlabelled(tmp_path, write_series):
    write_series(tmp_path / "MR" / "a", axial_positions([0, 2]), modality="MR")
    write_series(tmp_path / "MR" / "b", axial_positions([0, 2, 4]), modality="MR")
    ds = Dataset.open(dicom.convert_dicom(tmp_path / "out", input_dir=tmp_path / "MR"))
    assert ds.spec.modality == "MR" and ds.spec.labels == {"background": 0, "ignore": 1}
    assert ds.cases() == ["a", "b"] and np.all(ds.read_label("b").array == 1)
    write_series(tmp_path / "MR" / "c", axial_positions([0, 2]), modality="CT")
    with pytest.raises(ConfigError, match="different DICOM modalities"):
        dicom.convert_dicom(tmp_path / "out2", input_dir=tmp_path / "MR")
    assert Dataset.open(dicom.convert_dicom(tmp_path / "out3", input_dir=tmp_path / "MR", modality="MR")).cases() == ["a", "b", "c"]


def test_png_value_map_and_input_glob_like_chaos_mr(tmp_path, write_series, chaos_case):
    # CHAOS MR: MR/<case>/T2SPIR/{DICOM_anon,Ground} next to MR/<case>/T1DUAL (another series).
    chaos_case(tmp_path / "MR" / "2" / "T2SPIR", png_values=[63, 126, 63, 126])
    write_series(tmp_path / "MR" / "2" / "T1DUAL" / "DICOM_anon", axial_positions([40, 37]))
    labels = dicom.PngLabels.parse(["63=liver:1", "126=kidney_right:2"])
    out = dicom.convert_dicom(tmp_path / "out", input_dir=str(tmp_path / "MR" / "*" / "T2SPIR"), png_masks="Ground",
                              png_labels=labels, modality="MR", case_prefix="mr_")
    ds = Dataset.open(out)
    assert ds.cases() == ["mr_002"]
    assert ds.spec.modality == "MR" and ds.spec.labels == {"background": 0, "liver": 1, "kidney_right": 2}
    assert np.bincount(ds.read_label("mr_002").array.ravel()).tolist() == [6 * 8 * 4 - 4, 2, 2]
    with pytest.raises(InputError, match=r"2: holds 2 DICOM series"):
        dicom.convert_dicom(tmp_path / "out2", input_dir=tmp_path / "MR", modality="MR")
    with pytest.raises(ConfigError, match="either one NAME:ID"):
        dicom.PngLabels.parse(["liver:1", "126=kidney:2"])


def test_convert_single_series_with_mapped_nifti_mask(tmp_path, write_series, write_nifti):
    write_series(tmp_path / "ct", axial_positions([0, 2, 4]))
    series = dicom.read_dicom_series(tmp_path / "ct")
    seg = np.zeros(series.array.shape, np.uint8)
    seg[1:3, 1:3, 1] = 5
    seg[5, 5, 2] = 7
    mask = write_nifti(tmp_path / "seg.nii.gz", seg, series.affine)
    out = dicom.convert_dicom(
        tmp_path / "out", series_dir=tmp_path / "ct", case_id="ct01", masks_nifti=str(mask),
        label_map=LabelMap.parse(["5=liver:1"]), unmapped="background",
    )
    ds = Dataset.open(out)
    assert ds.cases() == ["ct01"]
    label = ds.read_label("ct01").array
    assert int(label.sum()) == 4 and label[5, 5, 2] == 0
    conversion = json.loads((out / "dataset.json").read_text())["conversion"]
    assert conversion["label_map"] == {"5": "liver:1"} and conversion["label_voxels"]["1"] == 4
    np.testing.assert_allclose(nib.load(ds.image_path("ct01")).affine, series.affine, atol=1e-6)


def test_option_conflicts(tmp_path, write_series):
    write_series(tmp_path / "ct", axial_positions([0, 2]))
    with pytest.raises(ConfigError, match="not both"):
        dicom.convert_dicom(tmp_path / "o", input_dir=tmp_path, series_dir=tmp_path / "ct")
    with pytest.raises(ConfigError, match="--png-masks needs --png-label"):
        dicom.convert_dicom(tmp_path / "o", series_dir=tmp_path / "ct", png_masks="Ground")
    with pytest.raises(ConfigError, match="needs a '\\*'"):
        dicom.convert_dicom(tmp_path / "o", input_dir=tmp_path, masks_nifti="seg.nii.gz")
    assert not (tmp_path / "o").exists()
