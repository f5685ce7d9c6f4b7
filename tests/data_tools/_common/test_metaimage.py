"""data_tools._common.metaimage: MetaImage headers, element types, byte orders, geometry."""

from __future__ import annotations

import numpy as np
import pytest

from data_tools._common.metaimage import ELEMENT_TYPES, read_metaimage, write_metaimage
from jointreg.errors import InputError

HEADER = "ObjectType = Image\nNDims = 3\nDimSize = 4 3 2\nElementSpacing = 0.5 0.25 2\nElementType = MET_SHORT\n"


def _known(dtype) -> np.ndarray:
    """(4, 3, 2) distinct values, negative ones for signed types, the type's extremes at two corners."""
    dtype = np.dtype(dtype)
    values = np.arange(24).reshape(4, 3, 2) - (12 if dtype.kind in "if" else 0)
    if dtype.kind == "f":
        return (values * 1.25).astype(dtype)
    array = values.astype(dtype)
    array[0, 0, 0], array[3, 2, 1] = np.iinfo(dtype).max, np.iinfo(dtype).min
    return array


@pytest.mark.parametrize("element_type", sorted(ELEMENT_TYPES))
@pytest.mark.parametrize("msb", [False, True])
def test_round_trip_every_element_type(tmp_path, element_type, msb):
    dtype = np.dtype(ELEMENT_TYPES[element_type])
    array = _known(dtype)
    path = write_metaimage(tmp_path / "x.mhd", array, spacing=(0.5, 0.25, 2.0), offset=(1.0, -2.0, 3.0), msb=msb)
    image = read_metaimage(path)
    assert image.array.dtype == dtype and image.array.dtype.isnative
    np.testing.assert_array_equal(image.array, array)
    assert image.spacing == (0.5, 0.25, 2.0) and image.offset == (1.0, -2.0, 3.0)
    assert image.header["BinaryDataByteOrderMSB"] == str(msb)
    # MET_LONG/ULONG are 32 bit: the writer names int32 MET_INT, the reader takes both.
    assert (tmp_path / "x.raw").stat().st_size == 24 * dtype.itemsize


def test_known_bytes_in_both_byte_orders(tmp_path):
    # x fastest: the file's voxel n is (n % 4, n // 4 % 3, n // 12).
    values = np.arange(24, dtype=np.int16) * 300 - 3000
    for msb, order in ((False, "<"), (True, ">")):
        (tmp_path / "v.raw").write_bytes(values.astype(order + "i2").tobytes())
        (tmp_path / "v.mhd").write_text(HEADER + f"BinaryDataByteOrderMSB = {msb}\nElementDataFile = v.raw\n")
        image = read_metaimage(tmp_path / "v.mhd")
        assert image.array.shape == (4, 3, 2)
        assert image.array[1, 0, 0] == values[1] and image.array[0, 1, 0] == values[4] and image.array[0, 0, 1] == values[12]
        assert image.array[3, 2, 1] == values[23]


def test_local_compressed_and_header_size(tmp_path):
    array = _known(np.float32)
    for path, kwargs in ((tmp_path / "a.mha", {}), (tmp_path / "c.mhd", {"compressed": True}), (tmp_path / "d.mha", {"compressed": True})):
        np.testing.assert_array_equal(read_metaimage(write_metaimage(path, array, **kwargs)).array, array)
    assert (tmp_path / "c.zraw").exists() and not (tmp_path / "a.raw").exists()
    data = array.transpose().astype("<f4").tobytes()
    for size, prefix in (("16", b"x" * 16), ("-1", b"any leading bytes")):
        (tmp_path / "h.raw").write_bytes(prefix + data)
        (tmp_path / "h.mhd").write_text(
            "NDims = 3\nDimSize = 4 3 2\nElementType = MET_FLOAT\nHeaderSize = " + size + "\nElementDataFile = h.raw\n"
        )
        np.testing.assert_array_equal(read_metaimage(tmp_path / "h.mhd").array, array)


def test_geometry_as_itk_and_nifti(tmp_path):
    # Direction with axis 0 along LPS +y and axis 1 along LPS -x (TransformMatrix is column-major).
    direction = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    path = write_metaimage(tmp_path / "r.mhd", _known(np.int16), spacing=(0.5, 0.25, 2.0), offset=(1.0, 2.0, 3.0), direction=direction)
    assert "TransformMatrix = 0 1 0 -1 0 0 0 0 1" in path.read_text()
    image = read_metaimage(path)
    np.testing.assert_array_equal(image.direction, direction)
    # LPS point of voxel (1, 0, 0) = (1, 2.5, 3) -> RAS (-1, -2.5, 3).
    np.testing.assert_allclose(image.affine @ [1, 0, 0, 1], [-1.0, -2.5, 3.0, 1.0])
    np.testing.assert_allclose(image.affine @ [0, 1, 0, 1], [-0.75, -2.0, 3.0, 1.0])
    flat = write_metaimage(tmp_path / "f.mhd", np.zeros((5, 4), np.uint8), spacing=(0.3, 0.15))
    np.testing.assert_allclose(read_metaimage(flat).affine, np.diag([-0.3, -0.15, 1.0, 1.0]))


def test_matches_simpleitk(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    nib = pytest.importorskip("nibabel")
    array = _known(np.int16)
    direction = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    ours = write_metaimage(tmp_path / "ours.mhd", array, spacing=(0.5, 0.25, 2.0), offset=(1.0, 2.0, 3.0), direction=direction, msb=True)
    itk = sitk.ReadImage(str(ours))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(itk).transpose(2, 1, 0), array)
    assert itk.TransformIndexToPhysicalPoint((1, 0, 0)) == pytest.approx((1.0, 2.5, 3.0))
    # The other way: ITK's MetaImage read here equals ITK's NIfTI read by nibabel.
    sitk.WriteImage(itk, str(tmp_path / "itk.mhd"))
    sitk.WriteImage(itk, str(tmp_path / "itk.nii.gz"))
    image, nifti = read_metaimage(tmp_path / "itk.mhd"), nib.load(str(tmp_path / "itk.nii.gz"))
    np.testing.assert_array_equal(image.array, np.asanyarray(nifti.dataobj))
    np.testing.assert_allclose(image.affine, nifti.affine, atol=1e-6)


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        (HEADER + "ElementDataFile = gone.raw\n", None, r"bad\.mhd: its data file gone\.raw \(ElementDataFile\) is not found"),
        (HEADER + "ElementDataFile = bad.raw\n", 40, r"bad\.mhd: its data file bad\.raw holds 40 bytes .* needs 48: truncated"),
        (HEADER + "ElementDataFile = bad.raw\n", 50, r"needs 48: longer than the header says \(wrong DimSize"),
        (HEADER.replace("4 3 2", "4 3") + "ElementDataFile = bad.raw\n", 48, r"DimSize = 4 3 should hold 3 value"),
        (HEADER.replace("MET_SHORT", "MET_HALF") + "ElementDataFile = bad.raw\n", 48, r"ElementType 'MET_HALF' is not one of"),
        (HEADER + "ElementNumberOfChannels = 3\nElementDataFile = bad.raw\n", 48, "3 channels per voxel"),
        (HEADER + "BinaryData = False\nElementDataFile = bad.raw\n", 48, "ASCII voxel data"),
        (HEADER + "ElementDataFile = slice%03d.raw 1 2 1\n", 48, "data split over several files"),
        (HEADER.replace("0.5 0.25 2", "0.5 0 2") + "ElementDataFile = bad.raw\n", 48, "ElementSpacing 0.5 0 2 must be positive"),
        (HEADER, 48, "no 'ElementDataFile =' line"),
        ("NDims 3\n", 48, r"line 1 of the MetaImage header is not 'Key = Value'"),
        ("ObjectType = Image\nDimSize = 4 3 2\nElementDataFile = bad.raw\n", 48, "no 'NDims =' line"),
    ],
)
def test_bad_headers_name_the_file(tmp_path, header, data, message):
    (tmp_path / "bad.mhd").write_text(header)
    if data is not None:
        (tmp_path / "bad.raw").write_bytes(b"\0" * data)
    with pytest.raises(InputError, match=message) as info:
        read_metaimage(tmp_path / "bad.mhd")
    assert str(info.value).startswith(str(tmp_path / "bad.mhd"))
    assert "\n" not in str(info.value)


def test_missing_header_and_corrupt_compressed_data(tmp_path):
    with pytest.raises(InputError, match="none.mhd: file not found"):
        read_metaimage(tmp_path / "none.mhd")
    (tmp_path / "z.zraw").write_bytes(b"not zlib at all")
    (tmp_path / "z.mhd").write_text(HEADER + "CompressedData = True\nElementDataFile = z.zraw\n")
    with pytest.raises(InputError, match="z.zraw: compressed voxel data is corrupt"):
        read_metaimage(tmp_path / "z.mhd")
