"""Fixtures of the DICOM converter tests (the DICOM and PNG writers live one folder up)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

ROWS, COLS = 6, 8


@pytest.fixture
def chaos_case(write_series, write_png) -> Callable[..., tuple[list[float], list[int]]]:
    """``chaos_case(root, png_values=None)`` writes a CHAOS-CT-like case and returns ``(z, instances)``.

    Files are named i0000,0000b.dcm.. in DESCENDING z, masks liver_GT_000.png..; PNG n marks
    pixel (row n+1, col 2n+1) for file n (by name), with 255 or ``png_values[n]``.
    """

    def write(root: Path, *, png_values=None) -> tuple[list[float], list[int]]:
        z = [40.0, 37.0, 34.0, 31.0]  # file n (by name) sits at z[n]: names run downward
        names = [f"i{n:04d},0000b.dcm" for n in range(4)]
        instances = [3, 1, 4, 2]
        write_series(root / "DICOM_anon", [(-100.0, -50.0, v) for v in z], names=names, instances=instances)
        for n in range(4):
            png = np.zeros((ROWS, COLS), np.uint8)
            png[n + 1, 2 * n + 1] = 255 if png_values is None else png_values[n]
            write_png(root / "Ground" / f"liver_GT_{n:03d}.png", png)
        return z, instances

    return write
