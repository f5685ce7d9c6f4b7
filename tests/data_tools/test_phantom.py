"""data_tools/phantom.py: ``jointreg prepare phantom``."""

from __future__ import annotations

import json

import pytest

from jointreg.data.phantoms import PHANTOM_KINDS


def test_prepare_phantom_command(tmp_path, capsys):
    from jointreg.cli.main import main

    out = tmp_path / "heart"
    code = main(["prepare", "phantom", "--kind", "cardiac-mr", "--shape", "32", "32", "12",
                 "--cases", "2", "--test-cases", "1", "--seed", "3", "--out", str(out)])
    assert code == 0
    assert "2 training + 1 test cardiac-mr" in capsys.readouterr().out
    assert len(list((out / "imagesTs").iterdir())) == 1
    assert json.loads((out / "dataset.json").read_text())["phantom"]["seed"] == 3

    assert main(["prepare", "phantom", "--kind", "lung", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown phantom kind 'lung'" in err[0]
    assert not (tmp_path / "x").exists()


def test_prepare_phantom_help_names_every_kind(capsys):
    from jointreg.cli.main import main

    with pytest.raises(SystemExit):
        main(["prepare", "phantom", "--help"])
    text = capsys.readouterr().out
    for kind in PHANTOM_KINDS:
        assert kind in text
