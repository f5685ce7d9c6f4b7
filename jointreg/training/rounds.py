"""What happens at the end of each round: validation, selection of the best weights, early
stopping, and the resume checkpoint (:func:`save_last`, also used between rounds)."""

from __future__ import annotations

import json
import logging

from jointreg.export.run_folder import RunPaths
from jointreg.training.checkpoint import save_checkpoint
from jointreg.training.config import Recipe
from jointreg.training.data import TrainingData
from jointreg.training.logger import RunLogger, log_validation_round
from jointreg.training.networks import Networks, TrainingState, checkpoint_payload, weights_payload
from jointreg.training.run_folder import RECIPE_KEY, recipe_record

log = logging.getLogger(__name__)


def end_of_round(
    recipe: Recipe, paths: RunPaths, data: TrainingData, nets: Networks, state: TrainingState,
    logger: RunLogger, round_index: int, final: bool,
) -> bool:
    """Validate (keeping the best weights, counting patience) and checkpoint after a round.

    Returns:
        Whether the resume checkpoint was written (every ``schedule.checkpoint_every`` rounds,
        after the last one, and on early stopping; the warm-ups' is the loop's).
    """
    s = recipe.schedule
    is_warmup = round_index < 0
    if data.validation and not is_warmup and ((round_index + 1) % s.validate_every == 0 or final):
        scores = validate(recipe, data, nets)
        logger.scalars("validation", scores, state.step)
        state.history.append({"step": state.step, "round": round_index, **scores})
        score = scores.get("dice", scores.get("label_dice", scores.get("ncc")))
        log.info("round %d validation: %s", round_index, json.dumps({k: round(v, 4) for k, v in scores.items()}))
        if score is not None and (state.best_score is None or score > state.best_score):
            state.best_score, state.best_step = float(score), state.step
            state.validations_without_improvement = 0
            save_checkpoint(paths.best, weights_payload(nets))
        else:
            state.validations_without_improvement += 1
            if s.patience is not None and state.validations_without_improvement >= s.patience:
                log.info("early stopping at step %d (no improvement in %d validations)", state.step, s.patience)
                state.stopped_early = True
    if not is_warmup and ((round_index + 1) % s.validate_every == 0 or final):
        log_validation_round(logger, recipe, data, nets, state.step)  # panels; logging.monitor's scores
    if not is_warmup and ((round_index + 1) % s.checkpoint_every == 0 or final or state.stopped_early):
        save_last(recipe, paths, nets, state)
        return True
    return False


def save_last(recipe: Recipe, paths: RunPaths, nets: Networks, state: TrainingState) -> None:
    """Write the resume checkpoint ``checkpoints/last``: networks, optimisers, schedulers,
    counters, RNG states, and the recipe it was made with (checked by ``--resume``)."""
    save_checkpoint(paths.last, {**checkpoint_payload(nets, state), RECIPE_KEY: recipe_record(recipe)})


def validate(recipe: Recipe, data: TrainingData, nets: Networks) -> dict[str, float]:
    """Validation scores of the networks on the held-out training cases."""
    from jointreg.training.validation import validation_scores

    return validation_scores(recipe, data, nets, data.validation, use_full_labels=recipe.data.validation_labels == "full")
