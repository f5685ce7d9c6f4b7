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
    if recipe.segmentation.enabled:
        from jointreg.nets.segmentation import segmentor_arguments

        segmentor_arguments(recipe.segmentation.architecture, recipe.segmentation.arguments, "segmentation.arguments")
