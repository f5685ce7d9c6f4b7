"""One version: ``pyproject.toml``, :mod:`jointreg.version` and ``jointreg.__version__`` agree."""

import re
import tomllib
from pathlib import Path

import jointreg
from jointreg.version import __version__

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_pyproject_version_is_the_package_version():
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    assert "version" not in project.get("dynamic", [])
    assert project["version"] == __version__
    assert jointreg.__version__ is __version__


def test_version_is_a_release_number():
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__), __version__
