"""The converters on the real data in ../shared/data (skipped when it is absent)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from jointreg.cli.main import main
from jointreg.data.dataset import Dataset
from jointreg.data.validate import validate_dataset

pytestmark = pytest.mark.realdata


def _source_counts(path, values):
    array = np.asanyarray(nib.load(str(path)).dataobj)
    return [int((array == v).sum()) for v in values]


@pytest.mark.slow
def test_ms_cmr(shared_data, tmp_path, capsys):
    src = shared_data / "ms_cmr"
    out = tmp_path / "ms_cmr"
    code = main([
        "prepare", "paired-nifti", "--images", str(src / "image_*.nii.gz"), "--labels", str(src / "label_*.nii.gz"),
        "--map", "200=myocardium:2", "500=lv:3", "600=rv:1", "--modality", "MR", "--case-prefix", "mscmr_", "--out", str(out),
    ])
    assert code == 0, capsys.readouterr().err
    report = validate_dataset(out)
    assert report.ok, report.problems
    ds = Dataset.open(out)
    assert ds.cases() == [f"mscmr_{n:03d}" for n in range(1, 16)]
    assert ds.spec.labels == {"background": 0, "rv": 1, "myocardium": 2, "lv": 3}
    label = ds.read_label("mscmr_007").array
    assert [int((label == v).sum()) for v in (2, 3, 1)] == _source_counts(src / "label_7.nii.gz", (200, 500, 600))
    image = ds.read_image("mscmr_007")
    assert image.shape[:2] == (256, 256) and image.spacing[0] == pytest.approx(1.25, abs=1e-3)
    np.testing.assert_array_equal(image.affine, nib.load(str(src / "image_7.nii.gz")).affine)


@pytest.mark.slow
def test_chaos_t2(shared_data, tmp_path, capsys):
    src = shared_data / "chaos_t2"
    out = tmp_path / "chaos_t2"
    code = main([
        "prepare", "paired-nifti", "--images", str(src / "image_*.nii.gz"), "--labels", str(src / "label_*.nii.gz"),
        "--map", "1=liver:1", "2=kidney_right:2", "3=kidney_left:3", "4=spleen:4", "--modality", "T2",
        "--case-prefix", "chaos_", "--test-cases", "19", "20", "--out", str(out),
    ])
    assert code == 0, capsys.readouterr().err
    report = validate_dataset(out)
    assert report.ok, report.problems
    ds = Dataset.open(out)
    assert ds.cases("Tr") == ["chaos_001", "chaos_002", "chaos_003", "chaos_005", "chaos_008", "chaos_010", "chaos_013", "chaos_015"]
    assert ds.cases("Ts") == ["chaos_019", "chaos_020"]
    assert ds.spec.num_training == 8
    image = ds.read_image("chaos_005")
    source = nib.load(str(src / "image_5.nii.gz"))
    assert nib.load(str(ds.image_path("chaos_005"))).get_data_dtype() == np.float32  # source is float64
    np.testing.assert_array_equal(image.array, source.get_fdata().astype(np.float32))
    label = ds.read_label("chaos_020", "Ts").array
    assert [int((label == v).sum()) for v in (1, 2, 3, 4)] == _source_counts(src / "label_20.nii.gz", (1, 2, 3, 4))


def test_totalseg_dicom_matches_reference_nifti(shared_data, tmp_path, capsys):
    src = shared_data / "totalseg_ct"
    out = tmp_path / "ct"
    code = main([
        "prepare", "dicom", "--series", str(src / "example_ct_dicom"), "--case-id", "ct001",
        "--masks-nifti", str(src / "example_seg_dicom.nii.gz"), "--map", "5=liver:1", "--unmapped", "background",
        "--out", str(out),
    ])
    assert code == 0, capsys.readouterr().err
    ds = Dataset.open(out)
    assert ds.spec.modality == "CT" and ds.spec.labels == {"background": 0, "liver": 1}
    reference = nib.load(str(src / "example_seg_dicom.nii.gz"))
    image = ds.read_image("ct001")
    assert image.shape == reference.shape == (512, 512, 20)
    assert np.abs(image.affine - reference.affine).max() < 1e-3
    hu = image.array
    assert -1024 <= hu.min() <= -1000 and hu.max() < 4000
    liver = np.asanyarray(reference.dataobj) == 5
    assert 20 <= float(np.median(hu[liver])) <= 200
    np.testing.assert_array_equal(ds.read_label("ct001").array == 1, liver)
    report = validate_dataset(out)
    assert report.ok, report.problems
