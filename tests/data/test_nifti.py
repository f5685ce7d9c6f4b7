import gzip

import nibabel as nib
import numpy as np
import pytest

from jointreg.data.nifti import read_image, read_label, same_geometry, write_volume
from jointreg.errors import InputError


def _affine():
    a = np.array([[0, 0, -2.5, 10], [1.25, 0, 0, -5], [0, -1.25, 0, 3], [0, 0, 0, 1]], float)
    return a


def test_roundtrip_keeps_data_affine_and_spacing(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    path = write_volume(tmp_path / "x.nii.gz", data, affine=_affine())
    vol = read_image(path)
    np.testing.assert_array_equal(vol.array, data)
    np.testing.assert_allclose(vol.affine, _affine())
    assert vol.spacing == pytest.approx((1.25, 1.25, 2.5))
    assert vol.array.dtype == np.float32


def test_write_copies_reference_header_and_labels_are_integers(tmp_path):
    img = nib.Nifti1Image(np.zeros((3, 4, 5), np.int16), _affine())
    img.header["descrip"] = b"scanner X"
    nib.save(img, tmp_path / "src.nii.gz")
    ref = read_image(tmp_path / "src.nii.gz")
    label = np.zeros((3, 4, 5), np.int64)
    label[1, 2, 3] = 4
    out = write_volume(tmp_path / "lab.nii.gz", label, reference=ref, is_label=True)
    back = nib.load(out)
    assert back.get_data_dtype() == np.uint8
    assert back.header["descrip"].tobytes().startswith(b"scanner X")
    np.testing.assert_allclose(back.affine, _affine())
    assert read_label(out).array[1, 2, 3] == 4


def test_scaled_integer_image_reads_physical_values(tmp_path):
    img = nib.Nifti1Image(np.full((2, 2, 2), 100, np.int16), np.eye(4))
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, tmp_path / "ct.nii.gz")
    assert read_image(tmp_path / "ct.nii.gz").array[0, 0, 0] == pytest.approx(-824.0)


def test_truncated_file_is_one_clear_error(tmp_path):
    write_volume(tmp_path / "x.nii.gz", np.random.rand(20, 20, 20).astype(np.float32), affine=np.eye(4))
    raw = (tmp_path / "x.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"cut\.nii\.gz: .*(truncated|corrupt|cannot read)"):
        read_image(tmp_path / "cut.nii.gz")


def test_garbage_file_is_rejected(tmp_path):
    (tmp_path / "bad.nii.gz").write_bytes(gzip.compress(b"not a nifti at all"))
    with pytest.raises(InputError, match="bad.nii.gz"):
        read_image(tmp_path / "bad.nii.gz")


def test_4d_rejected_but_trailing_singleton_accepted(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), tmp_path / "t.nii.gz")
    with pytest.raises(InputError, match="expected a 3D volume, found 4D"):
        read_image(tmp_path / "t.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 1), np.float32), np.eye(4)), tmp_path / "s.nii.gz")
    assert read_image(tmp_path / "s.nii.gz").shape == (4, 4, 4)


def test_nan_voxels_are_reported_with_count(tmp_path):
    data = np.zeros((3, 3, 3), np.float32)
    data[0, 0, 0] = np.nan
    data[1, 1, 1] = np.inf
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "n.nii.gz")
    with pytest.raises(InputError, match="2 voxel"):
        read_image(tmp_path / "n.nii.gz")


def test_non_integer_labels_rejected(tmp_path):
    nib.save(nib.Nifti1Image(np.full((2, 2, 2), 0.5, np.float32), np.eye(4)), tmp_path / "l.nii.gz")
    with pytest.raises(InputError, match="non-integer"):
        read_label(tmp_path / "l.nii.gz")


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        write_volume(tmp_path / "o.nii.gz", np.zeros((2, 2, 2)), reference=None, affine=None)
    assert list(tmp_path.iterdir()) == []


def test_same_geometry_reports_affine_difference():
    from jointreg.data.nifti import Volume

    a = Volume(np.zeros((2, 2, 2)), np.eye(4))
    shifted = np.eye(4)
    shifted[0, 3] = 0.5
    assert same_geometry(a, Volume(np.zeros((2, 2, 2)), np.eye(4))) is None
    assert "0.5" in same_geometry(a, Volume(np.zeros((2, 2, 2)), shifted))
    assert "shape" in same_geometry(a, Volume(np.zeros((2, 2, 3)), np.eye(4)))
