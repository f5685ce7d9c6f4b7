"""data_tools._common.output: output folder checks."""

from __future__ import annotations

import pytest

from data_tools import _common
from jointreg.errors import InputError


def test_check_new_output(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(InputError, match="already exists; pass --overwrite"):
        _common.check_new_output(tmp_path / "out", overwrite=False)
    assert _common.check_new_output(tmp_path / "out", overwrite=True) == tmp_path / "out"
    (tmp_path / "out" / "raw").mkdir()
    with pytest.raises(InputError, match="contains the input"):
        _common.check_new_output(tmp_path / "out", overwrite=True, inputs=[tmp_path / "out" / "raw"])
    assert _common.check_new_output(tmp_path / "new", overwrite=False) == tmp_path / "new"
