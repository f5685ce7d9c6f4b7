"""Value checks shared by the recipe sections (:mod:`jointreg.training.config`).

Kept apart so that the dataclasses read as the recipe's schema; every check raises
:class:`~jointreg.errors.ConfigError` naming the dotted key.
"""

from __future__ import annotations

import math
from typing import Any

from jointreg.errors import ConfigError


def _positive(section: str, **values: float) -> None:
    for name, value in values.items():
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{section}.{name}: must be > 0 and finite, got {value}")


def _non_negative(section: str, **values: float) -> None:
    for name, value in values.items():
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{section}.{name}: must be >= 0 and finite, got {value}")


def check_network_arguments(recipe: Any) -> None:
    """Check ``registration.arguments`` / ``segmentation.arguments`` against the constructors
    of the enabled networks (names, finite values) before any data is read.

    Raises:
        ConfigError: an unknown architecture or argument (listing the valid ones), a bad value.
    """
    if recipe.registration.enabled:
        from jointreg.nets.registration import registration_arguments

        registration_arguments(recipe.registration.architecture, recipe.registration.arguments, "registration.arguments")
        check_registration_terms(recipe.registration)
    if recipe.segmentation.enabled:
        from jointreg.nets.segmentation import segmentor_arguments

        segmentor_arguments(recipe.segmentation.architecture, recipe.segmentation.arguments, "segmentation.arguments")


def check_registration_terms(config: Any) -> None:
    """``registration.similarity`` and the names in ``registration.penalties`` at recipe load
    (before any data is read), with the same messages as when the objective is built.

    Raises:
        ConfigError: an unknown similarity (listing the valid ones), or a penalty the network
            does not have (listing its penalties).
    """
    from jointreg.losses.similarity import SIMILARITY_LOSSES
    from jointreg.nets.registration import REGISTRATION_NETS

    if config.similarity not in SIMILARITY_LOSSES:
        raise ConfigError(f"registration.similarity: unknown similarity {config.similarity!r}; "
                          f"valid names: {', '.join(SIMILARITY_LOSSES)}")
    entry = REGISTRATION_NETS.get(config.architecture)
    if entry is not None:
        check_penalty_names(config.architecture, config.penalties, getattr(entry.cls, "penalty_weights", {}))


def check_penalty_names(architecture: str, penalties: Any, defaults: Any) -> None:
    """Every name in ``registration.penalties`` is one of the network's penalties (``defaults``:
    its default weights by name); the one check behind the recipe load and the objective.

    Raises:
        ConfigError: naming the unknown penalty and the network's penalties.
    """
    known = dict(defaults or {})
    unknown = sorted(set(penalties) - set(known))
    if unknown:
        valid = ", ".join(sorted(known)) or "none"
        raise ConfigError(f"registration.penalties: {architecture} has no penalty {unknown[0]!r} (it has: {valid})")
