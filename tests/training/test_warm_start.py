"""A registration warm-up reused by another run with the same warm-up (jointreg.training.warm_start):
the receiving run ends with exactly the weights it would have had training its own."""

from __future__ import annotations

import pytest

from jointreg.training.warm_start import FOLDER, find_warm_start, warmup_key


def _warmup(run) -> object:
    from pathlib import Path

    return Path(run) / "checkpoints" / FOLDER


def test_the_key_ignores_the_segmentor_and_the_propagation_but_not_the_registration(tiny_recipe):
    base = warmup_key(tiny_recipe())
    assert warmup_key(tiny_recipe("segmentation.arguments.head_channels=16", "propagation.radius=9")) == base
    assert warmup_key(tiny_recipe("segmentation.enabled=false")) == base  # the same warm-up, alone
    assert warmup_key(tiny_recipe("registration.lr=0.01")) != base
    assert warmup_key(tiny_recipe("seed=1")) != base
    assert warmup_key(tiny_recipe("schedule.rounds=3")) != base  # more registration steps: another lr schedule


@pytest.mark.slow
def test_a_run_started_from_another_runs_warmup_ends_with_its_own_weights(tiny_recipe):
    from jointreg.training.loop import train

    from .test_loop import assert_same_exported_weights

    source = train(tiny_recipe(name="source"))
    other = ("segmentation.arguments.head_channels=16",)  # another segmentor, the same warm-up
    alone = train(tiny_recipe(*other, name="alone"))
    shared = find_warm_start(tiny_recipe(*other), [source["run"]])
    assert shared == _warmup(source["run"])
    started = train(tiny_recipe(*other, name="started"), warm_start=shared)
    assert_same_exported_weights(alone["run"], started["run"])
    log = (started["run"] and open(f"{started['run']}/train.log").read())
    assert "registration warm-up (steps 0-2) taken from" in log and " step 0/" not in log  # 3 steps not run
    assert find_warm_start(tiny_recipe("registration.lr=0.01"), [source["run"]]) is None


@pytest.mark.slow
def test_a_warmup_that_draws_random_numbers_is_not_shared(tiny_recipe):
    from jointreg.training.checkpoint import read_state
    from jointreg.training.loop import train

    sampled = train(tiny_recipe("registration.architecture=pmrnet", "registration.arguments={}", name="pmrnet"))
    assert read_state(_warmup(sampled["run"]))["reusable"] is False  # PMRNet samples its latent flows
    assert find_warm_start(tiny_recipe("registration.architecture=pmrnet", "registration.arguments={}"),
                           [sampled["run"]]) is None
