"""data_tools._common.cases: case ids, globs, pairing and splits."""

from __future__ import annotations

import pytest

from data_tools import _common
from jointreg.errors import ConfigError, InputError


def test_case_ids():
    assert _common.make_case_ids(["3", "12", "1"]) == {"3": "003", "12": "012", "1": "001"}
    assert _common.make_case_ids(["3", "1234"], "p") == {"3": "p0003", "1234": "p1234"}
    assert _common.make_case_ids(["a", "b2"], "x_") == {"a": "x_a", "b2": "x_b2"}
    with pytest.raises(ConfigError, match="both give case id '003'"):
        _common.make_case_ids(["3", "003"])
    with pytest.raises(ConfigError, match="may only hold"):
        _common.make_case_ids(["a b"])
    assert sorted(["image_10", "image_2", "image_1"], key=_common.natural_key) == ["image_1", "image_2", "image_10"]


def test_match_glob(tmp_path):
    for name in ("img_1.nii.gz", "img_10.nii.gz", "img_2.nii", "img_2.json"):
        (tmp_path / name).write_bytes(b"")
    found = _common.match_glob(str(tmp_path / "img_*.nii.gz"))
    assert list(found) == ["1", "10"]
    # '*' at the end: NIfTI suffixes dropped, other files skipped.
    assert list(_common.match_glob(str(tmp_path / "img_*"))) == ["1", "2", "10"]
    (tmp_path / "p7").mkdir()
    (tmp_path / "p7" / "t2.nii.gz").write_bytes(b"")
    assert _common.match_glob(str(tmp_path / "*" / "t2.nii.gz")) == {"p7": tmp_path / "p7" / "t2.nii.gz"}
    with pytest.raises(ConfigError, match="exactly one"):
        _common.match_glob(str(tmp_path / "img_?.nii.gz"))
    with pytest.raises(InputError, match="matches no file"):
        _common.match_glob(str(tmp_path / "label_*.nii.gz"))
    with pytest.raises(InputError, match="nowhere: folder not found"):
        _common.match_glob(str(tmp_path / "nowhere" / "x_*.nii.gz"))


def test_pair_files_names_the_lonely_file(tmp_path):
    images = {"1": tmp_path / "image_1.nii.gz", "2": tmp_path / "image_2.nii.gz"}
    with pytest.raises(InputError, match="image_2.nii.gz: image has no matching label file"):
        _common.pair_files(images, {"1": tmp_path / "label_1.nii.gz"})
    with pytest.raises(InputError, match="label_3.nii.gz: label file has no matching image"):
        _common.pair_files(images, {"1": tmp_path / "l1", "2": tmp_path / "l2", "3": tmp_path / "label_3.nii.gz"})


def test_split_cases():
    cases = [f"c{i:02d}" for i in range(10)]
    a = _common.split_cases(cases, test_fraction=0.3, seed=4)
    assert a == _common.split_cases(cases, test_fraction=0.3, seed=4)
    assert sum(v == "Ts" for v in a.values()) == 3
    assert a != _common.split_cases(cases, test_fraction=0.3, seed=5)
    b = _common.split_cases(cases, test_cases=["c03", "7"], aliases={"7": "c07"})
    assert [c for c, s in b.items() if s == "Ts"] == ["c03", "c07"]
    with pytest.raises(ConfigError, match="unknown case 'c99'"):
        _common.split_cases(cases, test_cases=["c99"])
    with pytest.raises(ConfigError, match="at least one for training"):
        _common.split_cases(["a"], test_cases=["a"])
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        _common.split_cases(cases, test_fraction=1.0)
