"""data_tools.dicom.masks: PNG masks paired with their slices, NIfTI masks in another axis order."""

from __future__ import annotations

import numpy as np
import pytest

from data_tools import dicom
from jointreg.errors import InputError

ROWS, COLS = 6, 8


def axial_positions(z_values):
    return [(-100.0, -50.0, float(z)) for z in z_values]


def test_png_masks_follow_their_dicom_file(tmp_path, chaos_case):
    case = tmp_path / "cases" / "1"
    z, _ = chaos_case(case)
    series = dicom.read_dicom_series(case, exclude=[case / "Ground"])
    mask = dicom.read_png_masks(case / "Ground", series, order="name")
    assert mask.shape == series.array.shape
    for n in range(4):
        k = int(np.argsort(z).tolist().index(n))  # slice index of file n
        i, j = 2 * n + 1, ROWS - 1 - (n + 1)
        assert mask[i, j, k] == 255
        assert np.count_nonzero(mask[:, :, k]) == 1
    # position order pairs PNG n with slice n instead
    by_position = dicom.read_png_masks(case / "Ground", series, order="position")
    assert by_position[1, ROWS - 2, 0] == 255 and mask[1, ROWS - 2, 0] == 0


def test_png_order_instance(tmp_path, chaos_case):
    case = tmp_path / "c"
    z, instances = chaos_case(case)
    series = dicom.read_dicom_series(case, exclude=[case / "Ground"])
    mask = dicom.read_png_masks(case / "Ground", series, order="instance")
    # PNG n belongs to the file with the n-th smallest InstanceNumber.
    by_instance = np.argsort(instances)
    for n, file_index in enumerate(by_instance):
        k = int(np.argsort(z).tolist().index(file_index))
        assert mask[2 * n + 1, ROWS - 2 - n, k] == 255


def test_png_count_and_size_errors(tmp_path, chaos_case, write_png):
    case = tmp_path / "c"
    chaos_case(case)
    series = dicom.read_dicom_series(case, exclude=[case / "Ground"])
    (case / "Ground" / "liver_GT_003.png").unlink()
    with pytest.raises(InputError, match="holds 3 PNG mask.*4 slice"):
        dicom.read_png_masks(case / "Ground", series)
    write_png(case / "Ground" / "liver_GT_003.png", np.zeros((COLS, ROWS)))
    with pytest.raises(InputError, match=r"liver_GT_003.png: PNG is 8x6 but the DICOM images are 6x8"):
        dicom.read_png_masks(case / "Ground", series)


def test_nifti_mask_same_grid_and_itk_orientation(tmp_path, write_series, write_nifti):
    write_series(tmp_path / "s", axial_positions([0, 2, 4]))
    series = dicom.read_dicom_series(tmp_path / "s")
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, size=series.array.shape).astype(np.uint8)
    same = write_nifti(tmp_path / "same.nii.gz", truth, series.affine)
    np.testing.assert_array_equal(dicom.align_mask(same, series), truth)
    # ITK/SimpleITK keep rows top-down: flip j back and move the origin to the first row.
    itk_affine = series.affine.copy()
    itk_affine[:3, 1] *= -1
    itk_affine[:3, 3] = (series.affine @ [0, ROWS - 1, 0, 1])[:3]
    itk = write_nifti(tmp_path / "itk.nii.gz", truth[:, ::-1, :], itk_affine)
    np.testing.assert_array_equal(dicom.align_mask(itk, series), truth)
    shifted = series.affine.copy()
    shifted[0, 3] += 1.0
    bad = write_nifti(tmp_path / "bad.nii.gz", truth, shifted)
    with pytest.raises(InputError, match=r"bad.nii.gz: does not fit the DICOM series.*affine differs by up to 1 mm"):
        dicom.align_mask(bad, series)
