"""The plan of a run: the ordered phases every global step belongs to.

Registration warm-up, segmentation warm-up, then ``rounds`` × (K_reg registration steps,
K_seg segmentation steps); a disabled network, or one that does not train (the identity), has no
phases. One global step counter walks the plan, which makes resume exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from jointreg.training.config import Recipe

REGISTRATION = "registration"
SEGMENTATION = "segmentation"


@dataclass(frozen=True)
class Phase:
    network: str  # REGISTRATION | SEGMENTATION
    steps: int
    round: int  # -1 for warm-up


def build_plan(recipe: Recipe) -> list[Phase]:
    """The ordered phases of a run (empty phases dropped)."""
    from jointreg.nets.registration import is_trainable

    s = recipe.schedule
    reg = recipe.registration.enabled and is_trainable(recipe.registration.architecture)
    seg = recipe.segmentation.enabled
    plan = []
    if reg and s.registration_warmup:
        plan.append(Phase(REGISTRATION, s.registration_warmup, -1))
    if seg and s.segmentation_warmup:
        plan.append(Phase(SEGMENTATION, s.segmentation_warmup, -1))
    for r in range(s.rounds):
        if reg and s.registration_steps:
            plan.append(Phase(REGISTRATION, s.registration_steps, r))
        if seg and s.segmentation_steps:
            plan.append(Phase(SEGMENTATION, s.segmentation_steps, r))
    return plan


def total_steps(plan: list[Phase], network: str | None = None) -> int:
    """Steps of the plan (of one network's phases when ``network`` is given)."""
    return sum(p.steps for p in plan if network is None or p.network == network)


def round_ends(plan: list[Phase]) -> dict[int, int]:
    """Global step (exclusive end) → round index, for the last phase of each round."""
    ends, position = {}, 0
    for i, phase in enumerate(plan):
        position += phase.steps
        last_of_round = i + 1 == len(plan) or plan[i + 1].round != phase.round
        if last_of_round:
            ends[position] = phase.round
    return ends


def warmup_ends(plan: list[Phase]) -> set[int]:
    """Global steps (exclusive ends) at which a warm-up phase ends: a run checkpoints there, so
    that a crash after the long registration warm-up does not cost it."""
    ends, position = set(), 0
    for phase in plan:
        position += phase.steps
        if phase.round < 0:
            ends.add(position)
    return ends


def locate(plan: list[Phase], step: int) -> Phase:
    """The phase that global step ``step`` belongs to."""
    position = 0
    for phase in plan:
        if step < position + phase.steps:
            return phase
        position += phase.steps
    raise IndexError(step)
