"""Registration pairs between 2D slices: annotated (moving) → nearby slices (fixed).

Following FMIRNet, a moving slice is an annotated slice and its fixed slices are the other slices
of the same volume within a radius; optionally the fixed slice comes from another volume (at the
same relative position along the slicing axis), or the moving slice is an unannotated one (image
terms only). Pairs are drawn with a caller-supplied ``numpy.random.Generator`` so that a run is
reproducible and resumable step by step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jointreg.data.slices import SlicedVolume, SliceStatus


@dataclass(frozen=True)
class SlicePair:
    """One registration pair, as indices into a list of :class:`SlicedVolume`.

    Attributes:
        moving: ``(volume, slice)`` of the moving slice.
        fixed: ``(volume, slice)`` of the fixed slice.
        distance: slice distance between them (for a cross-volume pair: the distance between
            relative positions, in slices of the fixed volume).
    """

    moving: tuple[int, int]
    fixed: tuple[int, int]
    distance: int

    @property
    def same_volume(self) -> bool:
        return self.moving[0] == self.fixed[0]


def labelled_slices(volume: SlicedVolume) -> list[int]:
    """Slices that carry a label (annotated, including annotated-empty ones)."""
    return [i for i, s in enumerate(volume.status) if s != SliceStatus.UNANNOTATED]


class PairSampler:
    """Draw registration pairs from a list of sliced volumes.

    Args:
        volumes: the training volumes.
        radius: fixed slices lie within ``radius`` slices of the moving slice.
        cross_volume: probability of a cross-volume pair.
        unannotated_moving: probability that the moving slice is drawn among all slices.
        annotated_fixed: probability that the fixed slice is an annotated slice of another
            volume (both labels known: the registration's label term supervises these pairs).

    Raises:
        ValueError: no volume has an annotated slice with a neighbour within the radius.
    """

    def __init__(
        self,
        volumes: Sequence[SlicedVolume],
        *,
        radius: int = 6,
        cross_volume: float = 0.0,
        unannotated_moving: float = 0.0,
        annotated_fixed: float = 0.0,
    ):
        self.volumes = list(volumes)
        self.radius = int(radius)
        self.cross_volume = float(cross_volume) if len(self.volumes) > 1 else 0.0
        self.unannotated_moving = float(unannotated_moving)
        self.moving_slices = [(v, s) for v, vol in enumerate(self.volumes) for s in labelled_slices(vol)]
        self.moving_slices = [(v, s) for v, s in self.moving_slices if self._neighbours(v, s)]
        if not self.moving_slices:
            raise ValueError("no annotated slice has another slice within the pairing radius")
        self.all_slices = [(v, s) for v, vol in enumerate(self.volumes) for s in range(len(vol.status))]
        self.labelled = [(v, s) for v, vol in enumerate(self.volumes) for s in labelled_slices(vol)]
        volumes_with_labels = {v for v, _ in self.labelled}
        self.annotated_fixed = float(annotated_fixed) if len(volumes_with_labels) > 1 else 0.0

    def _neighbours(self, volume: int, index: int) -> list[int]:
        n = len(self.volumes[volume].status)
        lo, hi = max(0, index - self.radius), min(n - 1, index + self.radius)
        return [i for i in range(lo, hi + 1) if i != index]

    def same_volume_pairs(self) -> list[SlicePair]:
        """Every (annotated moving, fixed within radius) pair of the same volume, in order."""
        return [
            SlicePair((v, s), (v, f), abs(f - s))
            for v, s in self.moving_slices
            for f in self._neighbours(v, s)
        ]

    def sample(self, n: int, rng: np.random.Generator) -> list[SlicePair]:
        """Draw ``n`` pairs (with replacement)."""
        pairs = []
        for _ in range(n):
            if self.annotated_fixed and rng.random() < self.annotated_fixed:
                pairs.append(self._annotated_pair(rng))
                continue
            if self.unannotated_moving and rng.random() < self.unannotated_moving:
                v, s = self.all_slices[rng.integers(len(self.all_slices))]
                neighbours = self._neighbours(v, s)
                if not neighbours:
                    v, s = self.moving_slices[rng.integers(len(self.moving_slices))]
                    neighbours = self._neighbours(v, s)
            else:
                v, s = self.moving_slices[rng.integers(len(self.moving_slices))]
                neighbours = self._neighbours(v, s)
            if self.cross_volume and rng.random() < self.cross_volume:
                pairs.append(self._cross(v, s, rng))
                continue
            f = neighbours[rng.integers(len(neighbours))]
            pairs.append(SlicePair((v, s), (v, f), abs(f - s)))
        return pairs

    def _annotated_pair(self, rng: np.random.Generator) -> SlicePair:
        v, s = self.labelled[rng.integers(len(self.labelled))]
        others = [(w, f) for w, f in self.labelled if w != v]
        w, f = others[rng.integers(len(others))]
        n_src, n_dst = len(self.volumes[v].status), len(self.volumes[w].status)
        centre = round(s / max(n_src - 1, 1) * (n_dst - 1))
        return SlicePair((v, s), (w, f), abs(f - centre))

    def _cross(self, v: int, s: int, rng: np.random.Generator) -> SlicePair:
        others = [i for i in range(len(self.volumes)) if i != v]
        w = others[rng.integers(len(others))]
        n_src, n_dst = len(self.volumes[v].status), len(self.volumes[w].status)
        centre = round(s / max(n_src - 1, 1) * (n_dst - 1))
        offset = int(rng.integers(-self.radius, self.radius + 1))
        f = int(np.clip(centre + offset, 0, n_dst - 1))
        return SlicePair((v, s), (w, f), abs(f - centre))
