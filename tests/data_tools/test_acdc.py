"""data_tools/acdc.py on small files written in the official ACDC layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_tools import acdc
from jointreg.data.dataset import Dataset
from jointreg.data.validate import validate_dataset
from jointreg.errors import ConfigError, InputError

SHAPE = (10, 9, 3)


def write_patient(root, pid, write_nifti, affine, *, ed=1, es=3, frames=4, info=None, gt=True, label_value=3):
    folder = root / pid
    folder.mkdir(parents=True)
    text = info if info is not None else f"ED: {ed}\nES: {es}\nGroup: DCM\nHeight: 184.0\nNbFrame: {frames}\nWeight: 95.0\n"
    (folder / "Info.cfg").write_text(text)
    geometry = affine(spacing=(1.5, 1.5, 10.0))
    number = int(pid[len("patient"):])
    write_nifti(folder / f"{pid}_4d.nii.gz", np.zeros((*SHAPE, frames), np.int16), geometry)
    for frame in (ed, es):
        image = np.full(SHAPE, number * 100 + frame, np.int16)
        write_nifti(folder / f"{pid}_frame{frame:02d}.nii.gz", image, geometry)
        if gt:
            label = np.zeros(SHAPE, np.uint8)
            label[2:4, 2:4, :] = 1
            label[5:7, 5:7, 1] = 2
            label[8, 8, 2] = label_value
            write_nifti(folder / f"{pid}_frame{frame:02d}_gt.nii.gz", label, geometry)
    return folder


@pytest.fixture
def acdc_root(tmp_path, write_nifti, affine):
    root = tmp_path / "database"
    write_patient(root / "training", "patient001", write_nifti, affine, ed=1, es=3)
    write_patient(root / "training", "patient002", write_nifti, affine, ed=2, es=4)
    write_patient(root / "testing", "patient101", write_nifti, affine, ed=1, es=2)
    return tmp_path


def test_info_parsing(tmp_path):
    cfg = tmp_path / "Info.cfg"
    cfg.write_text("ED: 1\nES: 12\nGroup: DCM\nHeight: 184.0\nNbFrame: 30\nWeight: 95.0\n")
    info = acdc.read_info(cfg)
    assert info == acdc.PatientInfo(1, 12, "DCM", 184.0, 95.0, 30)
    for text, message in [
        ("ED: 1\nthis line is wrong\n", "line 2 is not 'Key: value'"),
        ("ED: one\nES: 12\n", "'ED: one' is not a whole number"),
        ("ED: 1\n", "has no 'ES:' line"),
        ("ED: 3\nES: 3\n", "same frame"),
        ("ED: 1\nES: 31\nNbFrame: 30\n", "beyond NbFrame 30"),
        ("ED: 1\nES: 2\nHeight: tall\n", "'Height: tall' is not a number"),
    ]:
        cfg.write_text(text)
        with pytest.raises(InputError, match=message):
            acdc.read_info(cfg)


def test_convert_official_layout(acdc_root):
    out = acdc.convert_acdc(acdc_root, acdc_root / "out")
    ds = Dataset.open(out)
    assert ds.cases("Tr") == ["patient001_ED", "patient001_ES", "patient002_ED", "patient002_ES"]
    assert ds.cases("Ts") == ["patient101_ED", "patient101_ES"]
    assert ds.spec.labels == {"background": 0, "rv": 1, "myocardium": 2, "lv": 3}
    assert ds.spec.modality == "MR" and ds.spec.num_training == 4
    # ED of patient002 is frame 2 (value 202), ES frame 4 (value 204); the 4D file is ignored.
    assert np.all(ds.read_image("patient002_ED").array == 202)
    assert np.all(ds.read_image("patient002_ES").array == 204)
    label = ds.read_label("patient101_ES", "Ts").array
    assert np.bincount(label.ravel()).tolist() == [int(np.prod(SHAPE)) - 12 - 4 - 1, 12, 4, 1]
    info = json.loads((out / "dataset.json").read_text())["conversion"]["patients"]["patient002"]
    assert info == {"ed_frame": 2, "es_frame": 4, "group": "DCM", "height_cm": 184.0, "weight_kg": 95.0, "num_frames": 4}
    report = validate_dataset(out)
    assert report.ok, report.problems


def test_split_options(acdc_root):
    only_test = Dataset.open(acdc.convert_acdc(acdc_root / "database", acdc_root / "t", split="testing"))
    assert only_test.cases("Tr") == [] and only_test.cases("Ts") == ["patient101_ED", "patient101_ES"]
    moved = Dataset.open(acdc.convert_acdc(acdc_root, acdc_root / "m", split="training", test_cases=["patient002_ES"]))
    # A patient moves with both frames.
    assert moved.cases("Tr") == ["patient001_ED", "patient001_ES"]
    assert moved.cases("Ts") == ["patient002_ED", "patient002_ES"]
    with pytest.raises(ConfigError, match="'patient101' is not a training patient"):
        acdc.convert_acdc(acdc_root, acdc_root / "x", split="training", test_cases=["patient101"])


def test_plain_patient_folder(tmp_path, write_nifti, affine):
    write_patient(tmp_path / "pts", "patient007", write_nifti, affine)
    ds = Dataset.open(acdc.convert_acdc(tmp_path / "pts", tmp_path / "out"))
    assert ds.cases() == ["patient007_ED", "patient007_ES"]


def test_missing_gt_and_bad_info_leave_nothing(tmp_path, write_nifti, affine):
    write_patient(tmp_path / "a", "patient001", write_nifti, affine)
    write_patient(tmp_path / "a", "patient002", write_nifti, affine, gt=False)
    with pytest.raises(InputError, match=r"patient002_frame01_gt.nii.gz: ground truth of the ED frame 1 not found"):
        acdc.convert_acdc(tmp_path / "a", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    write_patient(tmp_path / "b", "patient003", write_nifti, affine, info="ED 1\nES: 3\n")
    with pytest.raises(InputError, match=r"patient003/Info.cfg: line 1 is not 'Key: value'"):
        acdc.convert_acdc(tmp_path / "b", tmp_path / "out")
    write_patient(tmp_path / "c", "patient004", write_nifti, affine, label_value=4)
    with pytest.raises(InputError, match=r"patient004_frame01_gt.nii.gz: label values \[4\] are not declared"):
        acdc.convert_acdc(tmp_path / "c", tmp_path / "out")
    (tmp_path / "d").mkdir()
    with pytest.raises(InputError, match="holds no ACDC patientXXX folders"):
        acdc.convert_acdc(tmp_path / "d", tmp_path / "out")
    assert not (tmp_path / "out").exists()
