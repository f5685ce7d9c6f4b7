import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from jointreg.cli.main import main
from jointreg.data.dataset import Dataset


def _affine(shift=0.0):
    affine = np.diag([1.5, 1.5, 4.0, 1.0])
    affine[:3, 3] = (-10.0 + shift, 20.0, 5.0)
    return affine


def _corrupt(ds):
    path = ds.image_path("case001")
    path.write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    return path


def _truncated(ds):
    path = ds.image_path("case001")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _four_d(ds):
    path = ds.image_path("case001")
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 4, 3), np.float32), _affine()), str(path))
    return path


def _shape_mismatch(ds):
    ds.write_label("case001", np.zeros((16, 16, 3), np.int16), affine=_affine())
    return ds.label_path("case001")


def _affine_mismatch(ds):
    ds.write_label("case001", ds.read_label("case001").array, affine=_affine(shift=0.5))
    return ds.label_path("case001")


def _nan(ds):
    image = ds.read_image("case001")
    array = image.array.copy()
    array[3, 4, 1] = np.nan
    ds.write_image("case001", array, reference=image)
    return ds.image_path("case001")


def _undeclared(ds):
    label = ds.read_label("case001")
    array = label.array.copy()
    array[0, 0, 0] = 7
    ds.write_label("case001", array, reference=label)
    return ds.label_path("case001")


def _missing_label(ds):
    ds.label_path("case001").unlink()
    return ds.image_path("case001")


def _label_without_image(ds):
    source = ds.label_path("case001")
    extra = source.with_name("case999.nii.gz")
    extra.write_bytes(source.read_bytes())
    return extra


@pytest.mark.parametrize(
    "damage, message",
    [
        (_corrupt, "not a readable NIfTI"),
        (_truncated, "truncated or corrupt"),
        (_four_d, "expected a 3D volume, found 4D"),
        (_shape_mismatch, "label shape (16, 16, 3) differs from (16, 16, 4)"),
        (_affine_mismatch, "label affine differs by up to 0.5 mm"),
        (_nan, "1 voxel(s) are NaN or infinite"),
        (_undeclared, "label value(s) 7 not declared in the labels"),
        (_missing_label, "no label file (expected labelsTr/case001.nii.gz)"),
        (_label_without_image, "label without image (expected imagesTr/case999_0000.nii.gz)"),
    ],
    ids=lambda v: getattr(v, "__name__", "")[1:] if callable(v) else "",
)
def test_bad_input_gives_one_line_naming_the_file_and_exit_2(make_dataset, capsys, damage, message):
    root = make_dataset(n_cases=2, shape=(16, 16, 4))
    bad = damage(Dataset.open(root))
    code = main(["validate", str(root)])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{bad}: ")
    assert message in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert "1 problem(s)" in captured.out


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["validate", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{tmp_path / 'empty'}: folder is empty (expected dataset.json, imagesTr/ and labelsTr/)"]


def test_good_dataset_exits_0_and_writes_the_json_report(make_dataset, tmp_path, capsys):
    root = make_dataset(n_cases=2, shape=(16, 16, 4))
    report_path = tmp_path / "reports" / "tiny.json"
    assert main(["validate", str(root), "--json", str(report_path)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "Tr: 2 image(s), 2 label(s)" in captured.out and "OK" in captured.out
    report = json.loads(report_path.read_text())
    assert report["ok"] is True and report["problems"] == []
    assert report["summary"]["cases"]["Tr"] == {"images": 2, "labels": 2}
