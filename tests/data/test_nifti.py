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


# --- unusual content: refused with the file and the problem named, or a stated conversion --------
# NIfTI-1 header offsets (bytes): dim 40 (8 x int16), datatype 70 (int16), pixdim 76 (8 x float32),
# scl_slope 112, scl_inter 116 (float32), qform_code 252, sform_code 254 (int16), srow_x 280,
# srow_y 296 (4 x float32). pixdim[0] is the qform's handedness; pixdim[1..3] the spacing.


def _patched(path, *edits):
    """Rewrite header fields of ``path`` in place: each edit is ``(struct format, offset, value)``."""
    import struct

    raw = path.read_bytes()
    compressed = str(path).endswith(".gz")
    block = bytearray(gzip.decompress(raw) if compressed else raw)
    for fmt, offset, value in edits:
        struct.pack_into(fmt, block, offset, value)
    path.write_bytes(gzip.compress(bytes(block)) if compressed else bytes(block))
    return path


def _saved(path, array, affine=None):
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
    return path


@pytest.mark.parametrize(
    "fields, code, message",
    [
        ([("R", "u1"), ("G", "u1"), ("B", "u1")], 128,
         "colour data (RGB, datatype 128) is not supported: jointreg reads one intensity per voxel; convert the image to greyscale"),
        ([("R", "u1"), ("G", "u1"), ("B", "u1"), ("A", "u1")], 2304,
         "colour data (RGBA, datatype 2304) is not supported"),
    ],
)
def test_colour_images_are_refused(tmp_path, fields, code, message):
    path = _saved(tmp_path / "rgb.nii.gz", np.zeros((3, 4, 5), dtype=fields))
    assert int(nib.load(path).header["datatype"]) == code
    for reader in (read_image, read_label):
        with pytest.raises(InputError) as caught:
            reader(path)
        assert str(caught.value).startswith(f"{path}: {message}")


@pytest.mark.parametrize("dtype, label", [(np.complex64, "complex64"), (np.complex128, "complex128")])
def test_complex_images_are_refused_not_silently_made_real(tmp_path, dtype, label):
    path = _saved(tmp_path / "c.nii.gz", (np.ones((3, 4, 5)) * (1 + 2j)).astype(dtype))
    with pytest.raises(InputError) as caught:
        read_image(path)
    assert str(caught.value) == (
        f"{path}: complex-valued data ({label}, datatype {nib.load(path).header['datatype']}) is not supported: "
        "jointreg reads real intensities and would drop the imaginary part; store the magnitude as float32"
    )


@pytest.mark.parametrize("code", [1234, 0, 255, 1536])
def test_unknown_or_unreadable_datatype_codes_are_refused(tmp_path, code):
    path = _patched(_saved(tmp_path / "u.nii.gz", np.ones((3, 4, 5), np.int16)), ("<h", 70, code))
    expected = {
        1234: "unknown NIfTI datatype code 1234 (the header is damaged or not standard NIfTI)",
        0: "NIfTI datatype 0 (none) cannot be read as voxel values",
        255: "NIfTI datatype 255 (all) cannot be read as voxel values",
        1536: "NIfTI datatype 1536 (float128) cannot be read as voxel values",
    }[code]
    with pytest.raises(InputError) as caught:
        read_image(path)
    assert str(caught.value) == f"{path}: {expected}"


@pytest.mark.parametrize("qform_code", [1, 0])  # the affine from the qform, or nibabel's fallback
def test_zero_or_nan_pixdim_is_refused_not_read_as_1mm(tmp_path, qform_code):
    base = _saved(tmp_path / "z.nii", np.ones((3, 4, 5), np.float32), np.diag([1.0, 2.0, 3.0, 1.0]))
    path = _patched(base, ("<f", 84, 0.0), ("<h", 252, qform_code), ("<h", 254, 0))
    with pytest.raises(InputError) as caught:
        read_image(path)
    assert str(caught.value) == (
        f"{path}: voxel spacing along axis 1 is 0 (pixdim[2]): a spacing must be finite and non-zero "
        "(nibabel would read 0 as 1 mm without a word); fix the header"
    )
    _patched(path, ("<f", 84, 2.0), ("<f", 88, float("nan")))
    with pytest.raises(InputError, match=r"z.nii: voxel spacing along axis 2 is nan \(pixdim\[3\]\)"):
        read_label(path)
    _patched(path, ("<f", 88, 3.0))
    assert read_image(path).spacing == pytest.approx((1.0, 2.0, 3.0))


def test_degenerate_sform_is_refused(tmp_path):
    path = _saved(tmp_path / "s.nii.gz", np.ones((3, 4, 5), np.float32))
    _patched(path, ("<f", 296 + 4, 0.0))  # srow_y[1]: the second axis has no length
    with pytest.raises(InputError) as caught:
        read_image(path)
    assert str(caught.value) == f"{path}: degenerate affine: voxel spacing (1, 0, 1) mm must be finite and positive"
    _patched(path, ("<f", 280 + 4, 1.0))  # srow_x[1]: now axes 0 and 1 are the same vector
    with pytest.raises(InputError, match=r"s.nii.gz: degenerate affine: its axes are not independent"):
        read_image(path)


def test_image_scaling_is_applied_and_recorded(tmp_path):
    img = nib.Nifti1Image(np.array([[[100, 200]]], np.int16), np.eye(4))
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, tmp_path / "ct.nii.gz")
    volume = read_image(tmp_path / "ct.nii.gz")
    assert volume.array.ravel().tolist() == [-824.0, -624.0]
    assert volume.scaling == (2.0, -1024.0)
    assert volume.with_array(volume.array * 0).scaling == (2.0, -1024.0)
    plain = read_image(_saved(tmp_path / "plain.nii.gz", np.ones((2, 2, 2), np.int16)))
    assert plain.scaling is None


def test_scaled_label_maps_are_refused(tmp_path):
    img = nib.Nifti1Image(np.full((2, 2, 2), 3, np.int16), np.eye(4))
    img.header.set_slope_inter(2.0, 0.0)
    nib.save(img, tmp_path / "lab.nii.gz")
    with pytest.raises(InputError) as caught:
        read_label(tmp_path / "lab.nii.gz")
    assert str(caught.value) == (
        f"{tmp_path / 'lab.nii.gz'}: label map has an intensity scaling (scl_slope 2, scl_inter 0) that would "
        "change its label values on reading; store labels unscaled (scl_slope 1, scl_inter 0)"
    )


def test_infinite_scaling_is_refused_and_scaling_to_infinity_is_named(tmp_path):
    path = _patched(_saved(tmp_path / "i.nii", np.full((2, 2, 2), 3, np.int16)), ("<f", 112, float("inf")))
    with pytest.raises(InputError, match=r"i.nii: invalid intensity scaling \(scl_slope inf, scl_inter 0\)"):
        read_image(path)
    _patched(path, ("<f", 112, 3e38))  # finite, but 3 x 3e38 overflows float32
    with pytest.raises(InputError) as caught:
        read_image(path)
    assert str(caught.value) == (
        f"{path}: 8 voxel(s) are NaN or infinite after scaling by scl_slope 3e+38, scl_inter 0; jointreg does "
        "not guess intensities: replace them (e.g. by the background value)"
    )


def test_header_declaring_too_many_voxels_is_refused_before_reading(tmp_path):
    path = _saved(tmp_path / "big.nii.gz", np.ones((3, 4, 5), np.int16))
    _patched(path, ("<h", 42, 32767), ("<h", 44, 32767), ("<h", 46, 32767))
    with pytest.raises(InputError) as caught:
        read_image(path)
    assert str(caught.value) == (
        f"{path}: the header declares 35,181,150,961,663 voxels (dim = [32767, 32767, 32767]), "
        "more than the 1,073,741,824 jointreg reads"
    )
    _patched(path, ("<h", 42, -3))
    with pytest.raises(InputError, match=r"big.nii.gz: invalid NIfTI dimensions \(dim = \[3, -3, 32767"):
        read_image(path)


def test_non_finite_voxels_are_refused_unless_asked_for(tmp_path):
    path = _saved(tmp_path / "n.nii.gz", np.array([[[np.nan, np.inf, 1.0]]], np.float32))
    with pytest.raises(InputError) as caught:
        read_image(path)
    assert str(caught.value) == (
        f"{path}: 2 voxel(s) are NaN or infinite; jointreg does not guess intensities: replace them "
        "(e.g. by the background value)"
    )
    kept = read_image(path, check_finite=False).array.ravel()
    assert np.isnan(kept[0]) and np.isposinf(kept[1]) and kept[2] == 1.0
    with pytest.raises(InputError, match="n.nii.gz: label map holds NaN or infinite values"):
        read_label(path)


def test_label_values_beyond_int32_are_refused_not_wrapped(tmp_path):
    path = tmp_path / "l.nii.gz"
    nib.save(nib.Nifti1Image(np.array([[[0, 2**32 + 1]]], np.int64), np.eye(4), dtype=np.int64), path)
    with pytest.raises(InputError, match=r"l.nii.gz: label map holds a value too large for a label id \(4294967297\)"):
        read_label(path)


def test_big_endian_and_nifti2_files_still_read(tmp_path):
    header = nib.Nifti1Header().as_byteswapped(">")
    big = nib.Nifti1Image(np.arange(60, dtype=">i2").reshape(3, 4, 5), np.diag([1.5, 1.5, 4.0, 1.0]), header=header)
    nib.save(big, tmp_path / "be.nii")
    assert nib.load(tmp_path / "be.nii").header.endianness == ">"
    volume = read_image(tmp_path / "be.nii")
    assert volume.array[2, 3, 4] == 59 and volume.spacing == pytest.approx((1.5, 1.5, 4.0))
    nib.save(nib.Nifti2Image(np.ones((3, 4, 5), np.float32), np.diag([2.0, 2.0, 3.0, 1.0])), tmp_path / "n2.nii")
    assert read_image(tmp_path / "n2.nii").spacing == pytest.approx((2.0, 2.0, 3.0))
