"""data_tools.dicom.series: reading a series, and the errors of irregular or mixed series."""

from __future__ import annotations

import numpy as np
import pytest

from data_tools import dicom
from jointreg.errors import InputError


def axial_positions(z_values):
    return [(-100.0, -50.0, float(z)) for z in z_values]


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
