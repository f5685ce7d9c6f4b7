"""data_tools/dicom.py: geometry, rescaling, slice order, masks, bad series."""

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

ROWS, COLS = 6, 8
ROW_SPACING, COL_SPACING = 0.8, 0.6


def lps_to_ras(point):
    return np.array([-point[0], -point[1], point[2]])


def axial_positions(z_values):
    return [(-100.0, -50.0, float(z)) for z in z_values]


def test_axial_series_known_affine_values_and_order(tmp_path, write_series):
    # Positions deliberately out of order; names and InstanceNumbers run the other way.
    z = [15.0, 10.0, 20.0, 12.5, 17.5]
    write_series(tmp_path / "s", axial_positions(z), rows=ROWS, cols=COLS, spacing=(ROW_SPACING, COL_SPACING))
    series = dicom.read_dicom_series(tmp_path / "s")

    expected = np.array([
        [-COL_SPACING, 0, 0, 100.0],
        [0, ROW_SPACING, 0, 50.0 - (ROWS - 1) * ROW_SPACING],
        [0, 0, 2.5, 10.0],
        [0, 0, 0, 1],
    ])
    np.testing.assert_allclose(series.affine, expected, atol=1e-9)
    assert series.array.shape == (COLS, ROWS, 5)
    assert series.array.dtype == np.float32
    # Slice k (sorted by z) came from written slice n = order[k]; stored value n*1000 + r*20 + c,
    # rescaled by slope 2 and intercept -1024; j counts rows from the bottom.
    order = np.argsort(z)
    for k, n in enumerate(order):
        for i, j in [(0, 0), (7, 5), (3, 1)]:
            stored = n * 1000 + (ROWS - 1 - j) * 20 + i
            assert series.array[i, j, k] == pytest.approx(2.0 * stored - 1024.0)
    assert [s.path.name for s in series.slices] == [f"slice_{n}.dcm" for n in order]


def test_oblique_series_voxels_land_where_dicom_says(tmp_path, write_series):
    # Sagittal-ish orientation with a small rotation: the affine must send voxel (i, j, k) to
    # IPP_k + c * col_spacing * row_dir + r * row_spacing * col_dir (in RAS), r = rows-1-j, c = i.
    angle = np.deg2rad(10)
    row_dir = np.array([0.0, np.cos(angle), np.sin(angle)])
    col_dir = np.array([0.0, np.sin(angle), -np.cos(angle)])
    normal = np.cross(row_dir, col_dir)
    base = np.array([5.0, -20.0, 60.0])
    offsets = [2, 0, 3, 1]
    positions = [tuple(base + 3.0 * o * normal) for o in offsets]
    write_series(tmp_path / "s", positions, orientation=[*row_dir, *col_dir], rows=ROWS, cols=COLS, spacing=(ROW_SPACING, COL_SPACING))
    series = dicom.read_dicom_series(tmp_path / "s")
    order = np.argsort(offsets)
    for i, j, k in [(0, 0, 0), (7, 5, 3), (2, 4, 1), (5, 1, 2)]:
        ipp = np.array(positions[order[k]])
        r, c = ROWS - 1 - j, i
        expected = lps_to_ras(ipp + c * COL_SPACING * row_dir + r * ROW_SPACING * col_dir)
        np.testing.assert_allclose(series.affine @ [i, j, k, 1], [*expected, 1], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(series.affine[:3, :3], axis=0), [COL_SPACING, ROW_SPACING, 3.0], atol=1e-6)


def test_stack_to_volume_axis_mapping():
    stack = np.arange(2 * 3 * 4).reshape(2, 3, 4)  # (K, rows, cols)
    volume = dicom.stack_to_volume(stack)
    assert volume.shape == (4, 3, 2)
    assert volume[1, 0, 1] == stack[1, 2, 1]  # j = 0 is the last row
    assert volume[3, 2, 0] == stack[0, 0, 3]


def test_gap_duplicate_orientation_and_size_errors(tmp_path, write_series):
    write_series(tmp_path / "gap", axial_positions([0, 2, 4, 8, 10]))
    with pytest.raises(InputError, match=r"gap.*not equally spaced.*4\.000 mm between"):
        dicom.read_dicom_series(tmp_path / "gap")
    write_series(tmp_path / "dup", axial_positions([0, 2, 2, 4]))
    with pytest.raises(InputError, match="same position"):
        dicom.read_dicom_series(tmp_path / "dup")
    write_series(tmp_path / "orient", axial_positions([0, 2]), names=["a.dcm", "b.dcm"], series_uid="1.5")
    write_series(tmp_path / "orient", axial_positions([4]), orientation=(1, 0, 0, 0, 0, -1), names=["c.dcm"], series_uid="1.5")
    with pytest.raises(InputError, match="inconsistent ImageOrientationPatient"):
        dicom.read_dicom_series(tmp_path / "orient")
    write_series(tmp_path / "size", axial_positions([0, 2]), names=["a.dcm", "b.dcm"], series_uid="1.6")
    write_series(tmp_path / "size", axial_positions([4]), rows=5, names=["c.dcm"], series_uid="1.6")
    with pytest.raises(InputError, match="different sizes"):
        dicom.read_dicom_series(tmp_path / "size")


def test_mixed_series_error_names_folder(tmp_path, write_series):
    write_series(tmp_path / "mixed", axial_positions([0, 2, 4]), series_uid="1.2.3", names=["a1", "a2", "a3"])
    write_series(tmp_path / "mixed", axial_positions([0, 2, 4]), series_uid="1.2.4", names=["b1", "b2", "b3"])
    with pytest.raises(InputError, match=r"mixed: holds 2 DICOM series \(1\.2\.3 'synthetic': 3 file\(s\); 1\.2\.4"):
        dicom.read_dicom_series(tmp_path / "mixed")


def test_per_file_series_uids_are_one_series(tmp_path, write_series):
    # Some anonymisers (CHAOS) give every file its own SeriesInstanceUID.
    write_series(tmp_path / "anon", axial_positions([0, 2, 4]), series_uid=["1.1", "1.2", "1.3"])
    assert dicom.read_dicom_series(tmp_path / "anon").array.shape == (8, 6, 3)


def test_non_dicom_files_are_skipped_and_empty_folder_errors(tmp_path, write_series):
    write_series(tmp_path / "case" / "DICOM_anon", axial_positions([0, 2]))
    (tmp_path / "case" / "notes.txt").write_text("hello")
    (tmp_path / "case" / "junk.bin").write_bytes(b"\x00" * 300)
    assert dicom.read_dicom_series(tmp_path / "case").array.shape == (8, 6, 2)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(InputError, match=r"empty: no DICOM image found \(1 other"):
        dicom.read_dicom_series(tmp_path / "empty")


def _chaos_case(root, write_series, write_png, *, png_values=None):
    """A CHAOS-CT-like case: names i0000,0000b.dcm.. in DESCENDING z, masks liver_GT_000.png..

    PNG n marks pixel (row n+1, col 2n+1) for file n (by name).
    """
    z = [40.0, 37.0, 34.0, 31.0]  # file n (by name) sits at z[n]: names run downward
    names = [f"i{n:04d},0000b.dcm" for n in range(4)]
    instances = [3, 1, 4, 2]
    write_series(root / "DICOM_anon", axial_positions(z), names=names, instances=instances)
    for n in range(4):
        png = np.zeros((ROWS, COLS), np.uint8)
        png[n + 1, 2 * n + 1] = 255 if png_values is None else png_values[n]
        write_png(root / "Ground" / f"liver_GT_{n:03d}.png", png)
    return z, instances


def test_png_masks_follow_their_dicom_file(tmp_path, write_series, write_png):
    case = tmp_path / "cases" / "1"
    z, _ = _chaos_case(case, write_series, write_png)
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


def test_png_order_instance(tmp_path, write_series, write_png):
    case = tmp_path / "c"
    z, instances = _chaos_case(case, write_series, write_png)
    series = dicom.read_dicom_series(case, exclude=[case / "Ground"])
    mask = dicom.read_png_masks(case / "Ground", series, order="instance")
    # PNG n belongs to the file with the n-th smallest InstanceNumber.
    by_instance = np.argsort(instances)
    for n, file_index in enumerate(by_instance):
        k = int(np.argsort(z).tolist().index(file_index))
        assert mask[2 * n + 1, ROWS - 2 - n, k] == 255


def test_png_count_and_size_errors(tmp_path, write_series, write_png):
    case = tmp_path / "c"
    _chaos_case(case, write_series, write_png)
    series = dicom.read_dicom_series(case, exclude=[case / "Ground"])
    (case / "Ground" / "liver_GT_003.png").unlink()
    with pytest.raises(InputError, match="holds 3 PNG mask.*4 slice"):
        dicom.read_png_masks(case / "Ground", series)
    write_png(case / "Ground" / "liver_GT_003.png", np.zeros((COLS, ROWS)))
    with pytest.raises(InputError, match=r"liver_GT_003.png: PNG is 8x6 but the DICOM images are 6x8"):
        dicom.read_png_masks(case / "Ground", series)


def test_convert_chaos_ct_layout(tmp_path, write_series, write_png):
    for case in ("1", "10"):
        _chaos_case(tmp_path / "CT" / case, write_series, write_png)
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


def test_png_value_map_and_input_glob_like_chaos_mr(tmp_path, write_series, write_png):
    # CHAOS MR: MR/<case>/T2SPIR/{DICOM_anon,Ground} next to MR/<case>/T1DUAL (another series).
    _chaos_case(tmp_path / "MR" / "2" / "T2SPIR", write_series, write_png, png_values=[63, 126, 63, 126])
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


def test_single_slice_uses_slice_thickness_and_bad_pixels_name_the_file(tmp_path, write_series):
    import pydicom

    (path,) = write_series(tmp_path / "one", axial_positions([7.0]))
    ds = pydicom.dcmread(path)
    ds.SliceThickness = 3.0
    ds.save_as(path)
    series = dicom.read_dicom_series(tmp_path / "one")
    assert series.array.shape == (8, 6, 1)
    np.testing.assert_allclose(series.affine[:3, 2], [0, 0, 3.0])
    paths = write_series(tmp_path / "bad", axial_positions([0, 2]))
    ds = pydicom.dcmread(paths[1])
    ds.PixelData = ds.PixelData[:10]
    ds.save_as(paths[1])
    with pytest.raises(InputError, match=r"slice_1.dcm: cannot decode pixel data \(transfer syntax 1.2.840.10008.1.2.1\)") as info:
        dicom.read_dicom_series(tmp_path / "bad")
    assert "\n" not in str(info.value)
