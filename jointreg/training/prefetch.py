"""Build the next segmentation step's batch of annotated slices while the device trains.

The annotated-slice batch of a segmentation step (draw, augmentation, stacking, the copy to the
device) is host work: ~7 ms for 8 augmented 64² slices and ~10 ms at 128² on one CPU core. On a
CPU that is 1–2 % of a step; on a GPU, whose step takes milliseconds, it would leave the GPU
waiting. With prefetching (on when training on CUDA), one background thread builds the batch of
the next segmentation step as soon as the current one has its own, so the host work overlaps the
device's.

Nothing about the result changes: the batch of step ``g`` is drawn from
``numpy.random.default_rng([seed, g])`` and its augmentation seeds, whichever thread builds it,
and the loop continues with that generator's state for the step's other draws. Only one batch
is in flight at a time, so the augmentation pipeline is never used by two threads at once.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from jointreg.data.batches import labelled_batch
from jointreg.training.data import sample_labelled
from jointreg.training.plan import SEGMENTATION, Phase


@dataclass
class RealBatch:
    """A segmentation step's annotated slices, and the step's generator after drawing them."""

    rng: np.random.Generator
    images: torch.Tensor
    labels: torch.Tensor


class RealBatches:
    """The annotated-slice batches of the segmentation steps, built ahead when ``ahead``.

    Args:
        volumes: the training volumes; seed: the recipe's seed; batch_size: the global batch.
        share: keeps this process's part of a drawn batch (multi-process runs).
        augment: the segmentation augmentation or ``None``.
        plan: the run's phases (to find the next segmentation step).
        ahead: build the next batch in a background thread.
    """

    def __init__(self, volumes, *, seed: int, batch_size: int, share, augment, device: torch.device,
                 plan: list[Phase], ahead: bool):
        self.volumes, self.seed, self.batch_size = volumes, seed, batch_size
        self.share, self.augment, self.device = share, augment, device
        self._starts = _segmentation_steps(plan)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jointreg-batches") if ahead else None
        self._pending: tuple[int, Future] | None = None

    def get(self, step: int) -> RealBatch:
        """The batch of segmentation step ``step``; then starts building the next one."""
        if self._pending is not None and self._pending[0] == step:
            batch = self._pending[1].result()
        else:
            if self._pending is not None:  # a batch for another step (not expected): discard it
                self._pending[1].result()
            batch = self.build(step)
        self._pending = None
        following = self._next(step)
        if self._pool is not None and following is not None:
            self._pending = (following, self._pool.submit(self.build, following))
        return batch

    def build(self, step: int) -> RealBatch:
        rng = np.random.default_rng([self.seed, step])
        slots = sample_labelled(self.volumes, self.batch_size, rng)
        seeds = rng.integers(0, 2**31 - 1, size=len(slots)).tolist()
        images, labels = labelled_batch(self.volumes, self.share(slots), augment=self.augment,
                                        seeds=self.share(seeds), device=self.device)
        return RealBatch(rng, images, labels)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending = None

    def _next(self, step: int) -> int | None:
        """The first segmentation step after ``step`` (``None``: there is none)."""
        for start, stop in self._starts:
            if stop > step + 1:
                return max(start, step + 1)
        return None


def _segmentation_steps(plan: list[Phase]) -> list[tuple[int, int]]:
    """``[start, stop)`` global step ranges of the plan's segmentation phases."""
    ranges, position = [], 0
    for phase in plan:
        if phase.network == SEGMENTATION and phase.steps:
            ranges.append((position, position + phase.steps))
        position += phase.steps
    return ranges
