"""The registration warm-up of one run, reused by another whose warm-up would be identical.

The registration warm-up (the plan's first phase) trains the registration network alone: its
batches come from ``default_rng([seed, step])``, the segmentor is not used (not warm yet), and
the registration network is built first, right after the seed. Two runs that differ only in the
segmentor or in the propagation rules (RUNet and RFCN of a study, or a registration-only run)
therefore end their warm-ups with the same registration weights, optimiser and schedule states.

At the end of the registration warm-up every run writes ``checkpoints/registration_warmup``
with the registration network's state and a key (:func:`warmup_key`): the SHA-256 of everything
the warm-up depends on (data, pairs, registration, seed, schedule, precision, device, threads,
and the number of registration steps of the whole plan, which sets the learning-rate schedule).
A study hands a later run the warm-up of an earlier one with the same key
(:func:`find_warm_start`), and :func:`apply_warm_start` starts that run at the first step after
the warm-up, exactly where it would have been.

One more condition makes this exact: nothing in the warm-up may draw from torch's global random
generator (the network's init is drawn before, and its state after the warm-up must still be
the one the receiving run has after building its own networks). A network that samples while
training (PMRNet) draws; its warm-ups are recorded as not reusable and are never shared.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from jointreg.training.plan import REGISTRATION, build_plan, total_steps

log = logging.getLogger(__name__)

FOLDER = "registration_warmup"
_NOT_KEYED = ("name", "output", "segmentation", "propagation", "logging", "evaluation")


def warmup_key(recipe) -> str:
    """SHA-256 of what the registration warm-up depends on (see the module docstring)."""
    from jointreg.training.run_folder import canonical_recipe

    data = {k: v for k, v in canonical_recipe(recipe).items() if k not in _NOT_KEYED}
    data["registration_steps_in_plan"] = total_steps(build_plan(recipe), REGISTRATION)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def warmup_length(recipe) -> int:
    """Steps of the registration warm-up (0: the plan has none)."""
    plan = build_plan(recipe)
    return plan[0].steps if plan and plan[0].network == REGISTRATION and plan[0].round < 0 else 0


def save_warmup(folder: Path, recipe, role, state, rng_unchanged: bool) -> None:
    """Write ``folder`` (``RUN/checkpoints/registration_warmup``) at the end of the warm-up."""
    from jointreg.training.checkpoint import save_checkpoint

    save_checkpoint(folder, {"key": warmup_key(recipe), "reusable": bool(rng_unchanged), "step": state.step,
                             "registration_steps": state.registration_steps, "registration": role.state()})


def find_warm_start(recipe, candidates: list[Path]) -> Path | None:
    """The first of the ``candidates`` (run folders) whose warm-up ``recipe`` can reuse."""
    from jointreg.training.checkpoint import read_state

    key = warmup_key(recipe)
    for run in candidates:
        folder = Path(run) / "checkpoints" / FOLDER
        if not (folder / "state.json").is_file():
            continue
        try:
            state = read_state(folder)
        except Exception:  # an unreadable leftover is simply not a candidate
            continue
        if state.get("key") == key and state.get("reusable"):
            return folder
    return None


def apply_warm_start(folder: Path, nets, state) -> None:
    """Load a reused warm-up: the registration role's state and the step counters."""
    from jointreg.training.checkpoint import load_checkpoint

    payload = load_checkpoint(folder)
    nets.role(REGISTRATION).restore(payload["registration"])
    state.step = int(payload["step"])
    state.registration_steps = int(payload["registration_steps"])
    log.info("registration warm-up (steps 0-%d) taken from %s: same registration, data, pairs, seed and "
             "schedule, hence the same weights", state.step - 1, folder.parent.parent)


def rng_fingerprint() -> str:
    """A digest of torch's generator states (to tell whether the warm-up drew from them)."""
    digest = hashlib.sha256(torch.get_rng_state().numpy().tobytes())
    if torch.cuda.is_available():
        for state in torch.cuda.get_rng_state_all():
            digest.update(state.numpy().tobytes())
    return digest.hexdigest()
