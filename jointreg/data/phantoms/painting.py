"""From shapes to volumes: the tissue map painted in order, and its rendering to intensities."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from jointreg.data.phantoms.shapes import tube

if TYPE_CHECKING:
    from jointreg.data.phantoms.grid import Anatomy, Grid, Shape3


class Painter:
    """A tissue map painted in order: each ``paint`` overwrites what was there."""

    def __init__(self, shape: Shape3, tissues: tuple[str, ...]):
        self.ids = {name: i for i, name in enumerate(tissues)}
        self.tissue = np.zeros(shape, np.uint8)

    def paint(self, name: str, mask: np.ndarray, box: tuple[slice, ...] | None = None) -> None:
        """Set ``name`` where ``mask`` holds; ``mask`` covers ``tissue[box]`` when a box is given."""
        target = self.tissue if box is None else self.tissue[box]
        np.copyto(target, np.uint8(self.ids[name]), where=mask)


def render(
    tissue: np.ndarray, tissues: tuple[str, ...], mean: Mapping[str, float], texture: Mapping[str, float],
    fields: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """Intensity = per-tissue mean + per-tissue amplitude × texture.

    The texture mixes two unit-variance fields (0.6² + 0.8² = 1), so ``texture[name]`` is the
    standard deviation of the tissue's texture in image units.
    """
    lut_mean = np.array([mean[n] for n in tissues], np.float32)
    lut_tex = np.array([texture.get(n, 0.0) for n in tissues], np.float32)
    coarse, fine = fields
    return lut_mean[tissue] + lut_tex[tissue] * (0.6 * coarse + 0.8 * fine)


def paint_tube(
    paint: Painter, a: Anatomy, name: str, start, end, radius_start: float, radius_end: float,
    *, within: np.ndarray,
) -> None:
    """Paint a tapered tube, evaluated only in its bounding box, where ``within`` holds."""
    mid = [(p + q) / 2.0 for p, q in zip(start, end)]
    half = math.dist(start, end) / 2.0 + max(radius_start, radius_end)
    box, sub = a.crop(mid, half)
    paint.paint(name, within[box] & tube(sub, start, end, radius_start, radius_end), box)


def blur_in_place(image: np.ndarray, grid: Grid, fwhm_mm: tuple[float, float, float] = (1.5, 1.5, 3.0)) -> None:
    """Partial-volume blur (Gaussian, FWHM in millimetres) so edges are not one-voxel steps."""
    from scipy.ndimage import gaussian_filter

    sigma = [f / 2.355 / s for f, s in zip(fwhm_mm, grid.spacing)]
    gaussian_filter(image, sigma=sigma, output=image, mode="nearest", truncate=3.0)
