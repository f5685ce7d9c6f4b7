"""Registration networks and their registry.

Every network is called as ``net(moving, fixed)`` with ``(B, C, *S)`` images of any size and
returns a :class:`RegistrationOutput`; ``net.config`` holds its constructor arguments. Each
network lives in its own module of this package and registers its names there
(:func:`~jointreg.nets.registration.registry.register`); importing the package imports every
module, so a new network is one new file.

Example:
    >>> net = create_registration_net("fmirnet", spatial_dims=2)
    >>> out = net(moving, fixed)            # doctest: +SKIP
    >>> out.warped, out.flow                # (B, 1, H, W), (B, 2, H, W) in voxels  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import pkgutil

from jointreg.nets.registration.base import RegistrationNet
from jointreg.nets.registration.integration import Displacement, FieldIntegration, StationaryVelocity
from jointreg.nets.registration.output import Prediction, RegistrationOutput
from jointreg.nets.registration.registry import (
    REGISTRATION_NETS,
    RegistryEntry,
    create_registration_net,
    is_trainable,
    register,
    registration_arguments,
)

_INFRASTRUCTURE = {"base", "integration", "output", "registry"}

# Every other module of this package is a network that registers itself on import.
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module not in _INFRASTRUCTURE and not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "REGISTRATION_NETS",
    "Displacement",
    "FieldIntegration",
    "Prediction",
    "RegistrationNet",
    "RegistrationOutput",
    "RegistryEntry",
    "StationaryVelocity",
    "create_registration_net",
    "is_trainable",
    "register",
    "registration_arguments",
]
