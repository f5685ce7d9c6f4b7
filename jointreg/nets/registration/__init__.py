"""Registration networks and their registry.

Every network is called as ``net(moving, fixed)`` with ``(B, C, *S)`` images of any size and
returns a :class:`RegistrationOutput`; ``net.config`` holds its constructor arguments.

Example:
    >>> net = create_registration_net("fmirnet", spatial_dims=2)
    >>> out = net(moving, fixed)            # doctest: +SKIP
    >>> out.warped, out.flow                # (B, 1, H, W), (B, 2, H, W) in voxels  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jointreg.errors import ConfigError
from jointreg.nets.registration.base import RegistrationNet
from jointreg.nets.registration.fmirnet import FMIRNet
from jointreg.nets.registration.output import RegistrationOutput
from jointreg.nets.registration.voxelmorph import VoxelMorph


@dataclass(frozen=True)
class RegistryEntry:
    """A registry name: the class and the constructor arguments the name fixes."""

    cls: type[RegistrationNet]
    preset: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


REGISTRATION_NETS: dict[str, RegistryEntry] = {
    "fmirnet": RegistryEntry(FMIRNet, {"scales": 3}, "FMIRNet, three scales fused with spatial attention"),
    "fmirnet-3": RegistryEntry(FMIRNet, {"scales": 3}, "same as fmirnet"),
    "fmirnet-2": RegistryEntry(FMIRNet, {"scales": 2}, "FMIRNet ablation: full and 1/2 scales"),
    "fmirnet-1": RegistryEntry(FMIRNet, {"scales": 1}, "FMIRNet ablation: full scale only"),
    "fmirnet-diff": RegistryEntry(
        FMIRNet, {"scales": 3, "diffeomorphic": True}, "FMIRNet, fused field integrated as a velocity"
    ),
    "voxelmorph": RegistryEntry(VoxelMorph, {"diffeomorphic": False}, "VoxelMorph, displacement field"),
    "voxelmorph-diff": RegistryEntry(
        VoxelMorph, {"diffeomorphic": True}, "VoxelMorph, diffeomorphic (SVF + scaling and squaring)"
    ),
}


def create_registration_net(name: str, **kwargs: Any) -> RegistrationNet:
    """Build a registration network by registry name.

    Args:
        name: one of :data:`REGISTRATION_NETS` (``fmirnet``, ``fmirnet-1``, ``voxelmorph``, ...).
        **kwargs: constructor arguments (e.g. ``spatial_dims=3``, ``features=[8, 16, 32]``). A
            saved ``net.config`` can be passed back as is.

    Raises:
        ConfigError: unknown name, unknown argument, or an argument that contradicts the name
            (e.g. ``fmirnet-1`` with ``scales=3``), or an invalid value.
    """
    entry = REGISTRATION_NETS.get(name)
    if entry is None:
        raise ConfigError(
            f"unknown registration network {name!r}; valid names: {', '.join(sorted(REGISTRATION_NETS))}"
        )
    for key, value in entry.preset.items():
        if key in kwargs and kwargs[key] != value:
            raise ConfigError(f"{name} fixes {key}={value!r}; got {key}={kwargs[key]!r} (choose another name)")
    arguments = {**kwargs, **entry.preset}
    parameters = inspect.signature(entry.cls).parameters
    unknown = sorted(set(arguments) - set(parameters))
    if unknown:
        raise ConfigError(
            f"{name}: unknown argument(s) {', '.join(unknown)}; valid: {', '.join(parameters)}"
        )
    try:
        return entry.cls(**arguments)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{name}: {error}") from error


__all__ = [
    "REGISTRATION_NETS",
    "FMIRNet",
    "RegistrationNet",
    "RegistrationOutput",
    "RegistryEntry",
    "VoxelMorph",
    "create_registration_net",
]
