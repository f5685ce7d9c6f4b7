"""jointreg.inference.register_inputs: slice maps."""

from __future__ import annotations

import pytest

from jointreg.errors import ConfigError
from jointreg.inference.register_inputs import parse_slice_map


def test_parse_slice_map_pairs_and_ranges():
    assert parse_slice_map("3:5,4:6") == [(3, 5), (4, 6)]
    assert parse_slice_map(["17:15-17", "2:0"]) == [(2, 0), (17, 15), (17, 16), (17, 17)]


@pytest.mark.parametrize("text", ["3-5", "a:1", "3:5,4:5", "1:4-2", "", "-1:2"])
def test_parse_slice_map_rejects_bad_text(text):
    with pytest.raises(ConfigError):
        parse_slice_map(text)
