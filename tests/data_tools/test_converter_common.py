"""data_tools/_common.py: label maps, case ids, globs, splits, output checks."""

from __future__ import annotations

import numpy as np
import pytest

from data_tools import _common
from jointreg.errors import ConfigError, InputError


def test_label_map_parse_and_apply():
    m = _common.LabelMap.parse(["200=myocardium:2", "500=lv:3", "600=rv:1"])
    assert m.labels == {"background": 0, "rv": 1, "myocardium": 2, "lv": 3}
    source = np.array([[0, 200], [500, 600]], dtype=np.int16)
    np.testing.assert_array_equal(m.apply(source), [[0, 2], [3, 1]])
    assert m.apply(source).dtype == np.int16
    assert m.to_json() == {"200": "myocardium:2", "500": "lv:3", "600": "rv:1"}


def test_label_map_merges_and_background():
    m = _common.LabelMap.parse(["1=kidney:2", "2=kidney:2", "9=background:0"])
    np.testing.assert_array_equal(m.apply(np.array([0, 1, 2, 9])), [0, 2, 2, 0])
    assert m.labels == {"background": 0, "kidney": 2}


def test_label_map_unmapped_values():
    m = _common.LabelMap.parse(["1=liver:1"])
    with pytest.raises(InputError, match=r"lab.nii.gz: label values \[2, 7\] are not in the label map \(mapped: 0, 1\)"):
        m.apply(np.array([0, 1, 2, 7]), source="lab.nii.gz")
    np.testing.assert_array_equal(m.apply(np.array([0, 1, 2, 7]), unmapped="background"), [0, 1, 0, 0])


@pytest.mark.parametrize(
    "items, message",
    [
        (["200"], "not SRC=NAME:ID"),
        (["x=liver:1"], "not SRC=NAME:ID"),
        (["1=liver"], "not NAME:ID"),
        (["1=liver:1", "1=spleen:2"], "source value 1 twice"),
        (["1=liver:1", "2=liver:2"], "'liver' is given two ids"),
        (["1=liver:1", "2=spleen:1"], "class id 1 is given to both 'liver' and 'spleen'"),
        (["1=liver:0"], "reserved for background"),
    ],
)
def test_label_map_errors(items, message):
    with pytest.raises(ConfigError, match=message):
        _common.LabelMap.parse(items)


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


def test_check_new_output(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(InputError, match="already exists; pass --overwrite"):
        _common.check_new_output(tmp_path / "out", overwrite=False)
    assert _common.check_new_output(tmp_path / "out", overwrite=True) == tmp_path / "out"
    (tmp_path / "out" / "raw").mkdir()
    with pytest.raises(InputError, match="contains the input"):
        _common.check_new_output(tmp_path / "out", overwrite=True, inputs=[tmp_path / "out" / "raw"])
    assert _common.check_new_output(tmp_path / "new", overwrite=False) == tmp_path / "new"
