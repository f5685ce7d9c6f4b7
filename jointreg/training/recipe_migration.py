"""Recipes written before the ``propagation`` section existed still load: its keys used to live
in the ``segmentation`` section (``segmentation.trust`` is now ``propagation.trust``, and
``segmentation.propagation_radius`` is ``propagation.radius``)."""

from __future__ import annotations

import logging
from typing import Any

from jointreg.errors import ConfigError

# Keys that lived in the segmentation section before the propagation section existed.
MOVED_TO_PROPAGATION = {
    "propagation_radius": "radius", "trust": "trust", "trust_decay": "trust_decay",
    "trust_residual": "trust_residual", "foreground_within": "foreground_within",
    "absent_residual": "absent_residual", "background_margin": "background_margin",
    "appearance_percentiles": "appearance_percentiles",
}


def _moved_key(key: str) -> str:
    """The current name of a dotted recipe key (``segmentation.trust`` → ``propagation.trust``)."""
    section, _, name = key.partition(".")
    if section == "segmentation" and name in MOVED_TO_PROPAGATION:
        logging.getLogger(__name__).warning("recipe key %s is now propagation.%s", key, MOVED_TO_PROPAGATION[name])
        return f"propagation.{MOVED_TO_PROPAGATION[name]}"
    return key


def move_propagation_keys(data: dict[str, Any], overrides: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Read recipes written before the ``propagation`` section existed: ``segmentation.trust``
    and the other :data:`MOVED_TO_PROPAGATION` keys move there, in the file and in overrides.

    Raises:
        ConfigError: a key given under both names in the file.
    """
    overrides = [_moved_key(o.split("=", 1)[0].strip()) + "=" + o.split("=", 1)[1] if "=" in o else o for o in overrides]
    segmentation = data.get("segmentation")
    if not isinstance(segmentation, dict) or not set(segmentation) & set(MOVED_TO_PROPAGATION):
        return data, overrides
    propagation = dict(data.get("propagation") or {})
    segmentation = dict(segmentation)
    for old in [k for k in segmentation if k in MOVED_TO_PROPAGATION]:
        new = _moved_key(f"segmentation.{old}").split(".", 1)[1]
        if new in propagation:
            raise ConfigError(f"segmentation.{old} and propagation.{new} both given; keep propagation.{new}")
        propagation[new] = segmentation.pop(old)
    return {**data, "segmentation": segmentation, "propagation": propagation}, overrides
