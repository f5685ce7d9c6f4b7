"""`jointreg prepare ...` on bad input: exit code 2, one line naming the file, no output left."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from jointreg.cli.main import main

SHAPE = (6, 5, 3)
MAP = ["--map", "1=liver:1", "2=spleen:2"]


@pytest.fixture
def src(tmp_path, write_nifti, affine):
    """Three good pairs; the tests spoil the last one so that earlier cases are already written."""
    folder = tmp_path / "src"
    for n in (1, 2, 3):
        label = np.zeros(SHAPE, np.uint8)
        label[1:3, 1:3, 1] = 1
        label[4, 4, 2] = 2
        write_nifti(folder / f"image_{n}.nii.gz", np.random.default_rng(n).normal(size=SHAPE), affine())
        write_nifti(folder / f"label_{n}.nii.gz", label, affine())
    return folder


def run_prepare(capsys, *argv):
    code = main(["prepare", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.err


def paired(src, out, *extra):
    return ["paired-nifti", "--images", src / "image_*.nii.gz", "--labels", src / "label_*.nii.gz",
            "--modality", "MR", "--out", out, *MAP, *extra]


def assert_clean_failure(code, err, names, out):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("jointreg prepare: error: ")
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp-")]


def test_good_input_converts(src, tmp_path, capsys):
    code = main(["prepare", *map(str, paired(src, tmp_path / "out"))])
    assert code == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "out" / "dataset.json").exists()


def test_truncated_nifti(src, tmp_path, capsys):
    data = (src / "image_3.nii.gz").read_bytes()
    (src / "image_3.nii.gz").write_bytes(data[:-40])  # header intact, voxel data cut short
    code, err = run_prepare(capsys, *paired(src, tmp_path / "out"))
    assert_clean_failure(code, err, ["image_3.nii.gz", "truncated or corrupt"], tmp_path / "out")


def test_corrupt_nifti(src, tmp_path, capsys):
    (src / "image_3.nii.gz").write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    code, err = run_prepare(capsys, *paired(src, tmp_path / "out"))
    assert_clean_failure(code, err, ["image_3.nii.gz"], tmp_path / "out")


def test_4d_image(src, tmp_path, capsys, write_nifti, affine):
    write_nifti(src / "image_3.nii.gz", np.zeros((*SHAPE, 2), np.float32), affine())
    code, err = run_prepare(capsys, *paired(src, tmp_path / "out"))
    assert_clean_failure(code, err, ["image_3.nii.gz", "expected a 3D volume, found 4D"], tmp_path / "out")


def test_label_shape_mismatch(src, tmp_path, capsys, write_nifti, affine):
    write_nifti(src / "label_3.nii.gz", np.zeros((6, 5, 2), np.uint8), affine())
    code, err = run_prepare(capsys, *paired(src, tmp_path / "out"))
    assert_clean_failure(code, err, ["label_3.nii.gz", "shape"], tmp_path / "out")


def test_label_affine_mismatch(src, tmp_path, capsys, write_nifti, affine):
    write_nifti(src / "label_3.nii.gz", np.zeros(SHAPE, np.uint8), affine(spacing=(1.5, 1.5, 5.0)))
    code, err = run_prepare(capsys, *paired(src, tmp_path / "out"))
    assert_clean_failure(code, err, ["label_3.nii.gz", "affine differs"], tmp_path / "out")


def test_nan_voxels(src, tmp_path, capsys, write_nifti, affine):
    image = np.ones(SHAPE, np.float32)
    image[2, 2, 2] = np.nan
    write_nifti(src / "image_3.nii.gz", image, affine())
    code, err = run_prepare(capsys, *paired(src, tmp_path / "out"))
    assert_clean_failure(code, err, ["image_3.nii.gz", "NaN"], tmp_path / "out")


def test_label_values_not_in_map(src, tmp_path, capsys, write_nifti, affine):
    label = np.zeros(SHAPE, np.uint8)
    label[0, 0, 0] = 7
    write_nifti(src / "label_3.nii.gz", label, affine())
    code, err = run_prepare(capsys, *paired(src, tmp_path / "out"))
    assert_clean_failure(code, err, ["label_3.nii.gz", "[7]", "--unmapped background"], tmp_path / "out")


def test_empty_folder_and_glob_matching_nothing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = run_prepare(capsys, *paired(tmp_path / "empty", tmp_path / "out"))
    assert_clean_failure(code, err, ["image_*.nii.gz", "matches no file"], tmp_path / "out")
    code, err = run_prepare(capsys, "dicom", "--input", tmp_path / "empty", "--out", tmp_path / "out")
    assert_clean_failure(code, err, ["empty", "no case folders"], tmp_path / "out")
    code, err = run_prepare(capsys, "acdc", "--input", tmp_path / "empty", "--out", tmp_path / "out")
    assert_clean_failure(code, err, ["empty", "no ACDC patientXXX folders"], tmp_path / "out")


def test_unpaired_files(src, tmp_path, capsys):
    (src / "label_2.nii.gz").unlink()
    code, err = run_prepare(capsys, *paired(src, tmp_path / "out"))
    assert_clean_failure(code, err, ["image_2.nii.gz", "no matching label"], tmp_path / "out")


def test_existing_output_is_kept(src, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    code, err = run_prepare(capsys, *paired(src, tmp_path / "out"))
    assert code == 2 and "already exists; pass --overwrite" in err and "Traceback" not in err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_dicom_mixed_series(tmp_path, capsys, write_series):
    case = tmp_path / "dicom" / "patient1" / "DICOM_anon"
    write_series(case, [(0, 0, z) for z in (0, 2, 4)], series_uid="1.2.3.4", names=["a1", "a2", "a3"])
    write_series(case, [(0, 0, z) for z in (0, 3)], series_uid="1.2.3.5", names=["b1", "b2"])
    code, err = run_prepare(capsys, "dicom", "--input", tmp_path / "dicom", "--out", tmp_path / "out")
    assert_clean_failure(code, err, ["patient1", "holds 2 DICOM series", "1.2.3.4"], tmp_path / "out")


def test_dicom_gap_and_bad_mask(tmp_path, capsys, write_series, write_nifti, affine):
    write_series(tmp_path / "series", [(0, 0, z) for z in (0, 2, 6)])
    code, err = run_prepare(capsys, "dicom", "--series", tmp_path / "series", "--out", tmp_path / "out")
    assert_clean_failure(code, err, ["series", "not equally spaced"], tmp_path / "out")
    write_series(tmp_path / "ok", [(0, 0, z) for z in (0, 2, 4)])
    mask = write_nifti(tmp_path / "mask.nii.gz", np.zeros((8, 6, 3), np.uint8), affine())
    code, err = run_prepare(capsys, "dicom", "--series", tmp_path / "ok", "--masks-nifti", mask, "--out", tmp_path / "out")
    assert_clean_failure(code, err, ["mask.nii.gz", "does not fit the DICOM series"], tmp_path / "out")


def test_bad_option_values(src, tmp_path, capsys):
    code, err = run_prepare(capsys, *paired(src, tmp_path / "out", "--map", "3=liver"))
    assert_clean_failure(code, err, ["'liver' is not NAME:ID"], tmp_path / "out")
