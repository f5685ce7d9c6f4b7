"""Annotated-slice batches built ahead in a background thread (jointreg.training.prefetch): the
same batches, in the same order, with the same generator state, as built in the loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jointreg.training.plan import SEGMENTATION, build_plan, locate, total_steps
from jointreg.training.prefetch import RealBatches


def _batches(recipe, data, ahead):
    from jointreg.training.augment import SliceAugmenter

    return RealBatches(data.train, seed=recipe.seed, batch_size=recipe.segmentation.batch_size, share=list,
                       augment=SliceAugmenter(recipe.segmentation.augmentation), device=torch.device("cpu"),
                       plan=build_plan(recipe), ahead=ahead)


def test_batches_built_ahead_equal_those_built_in_the_loop(tiny_recipe):
    from jointreg.training.data import load_training_data

    recipe = tiny_recipe()
    data = load_training_data(recipe, progress=False)
    plan = build_plan(recipe)
    steps = [g for g in range(total_steps(plan)) if locate(plan, g).network == SEGMENTATION]
    assert len(steps) == 7 and steps[0] == 3  # warm-up 3-5, then 2 rounds of 2
    inline, ahead = _batches(recipe, data, False), _batches(recipe, data, True)
    try:
        for g in steps:
            a, b = inline.get(g), ahead.get(g)
            assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
            assert a.rng.integers(1 << 30) == b.rng.integers(1 << 30)  # the step goes on with the same draws
            pending = ahead._pending[0] if ahead._pending else None
            later = [s for s in steps if s > g]
            assert pending == (later[0] if later else None)  # exactly the next segmentation step
    finally:
        ahead.close()
    fresh = _batches(recipe, data, False)
    assert not np.array_equal(fresh.get(steps[0]).images.numpy(), fresh.get(steps[1]).images.numpy())  # steps differ


@pytest.mark.slow
def test_a_run_with_prefetching_ends_with_the_same_weights(tiny_recipe, monkeypatch):
    from jointreg.training import loop

    from .test_loop import assert_same_exported_weights

    plain = loop.train(tiny_recipe(name="plain"))
    monkeypatch.setattr(loop, "_prefetch", lambda device: True)
    ahead = loop.train(tiny_recipe(name="ahead"))
    assert_same_exported_weights(plain["run"], ahead["run"])
