"""The jointreg version, in a module of its own so that any module can read it without cycles.

It must equal ``[project] version`` in ``pyproject.toml`` (a test checks it).
"""

__version__ = "0.1.0"
