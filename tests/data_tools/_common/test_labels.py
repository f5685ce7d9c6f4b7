"""data_tools._common.labels: label maps."""

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
