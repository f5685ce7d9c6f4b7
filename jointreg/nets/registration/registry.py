"""The registry of registration networks: each network file registers its names with
:func:`register`, and :func:`create_registration_net` builds one by name.

Example (a new network is one file under ``jointreg/nets/registration/`` plus its test)::

    @register("mynet", description="what it is")
    @register("mynet-diff", preset={"diffeomorphic": True}, description="...")
    class MyNet(RegistrationNet):
        ...
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jointreg.errors import ConfigError


@dataclass(frozen=True)
class RegistryEntry:
    """A registry name: the class and the constructor arguments the name fixes."""

    cls: type
    preset: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def tiny_arguments(self) -> dict[str, Any]:
        """Arguments of a narrow version of this entry for tests (the class's, minus the preset)."""
        return {k: v for k, v in self.cls.tiny_arguments().items() if k not in self.preset}


REGISTRATION_NETS: dict[str, RegistryEntry] = {}


def register(name: str, *, preset: Mapping[str, Any] | None = None, description: str = "") -> Callable[[type], type]:
    """Class decorator: make ``name`` build the decorated network with ``preset`` arguments fixed.

    Raises:
        ValueError: ``name`` is taken by another class (two files claiming one name).
    """

    def decorate(cls: type) -> type:
        existing = REGISTRATION_NETS.get(name)
        identity = (cls.__module__, cls.__qualname__)
        if existing is not None and (existing.cls.__module__, existing.cls.__qualname__) != identity:
            raise ValueError(f"registration network name {name!r} is already taken by "
                             f"{existing.cls.__qualname__} ({existing.cls.__module__})")
        REGISTRATION_NETS[name] = RegistryEntry(cls, dict(preset or {}), description)
        return cls

    return decorate


def is_trainable(name: str) -> bool:
    """Whether the network ``name`` is trained (``False`` for the identity); unknown names count
    as trainable, so that building them reports the unknown name."""
    entry = REGISTRATION_NETS.get(name)
    return entry is None or bool(getattr(entry.cls, "trainable", True))


def unregister(name: str) -> None:
    """Remove a name (for tests that register an example network)."""
    REGISTRATION_NETS.pop(name, None)


def registration_arguments(name: str, arguments: Mapping[str, Any], where: str | None = None) -> dict[str, Any]:
    """The constructor arguments of network ``name`` (``arguments`` plus the name's preset),
    checked without building anything: a recipe is checked with this when it is loaded.

    Args:
        name: a registered name.
        arguments: the given constructor arguments.
        where: how to name the arguments in errors (default: the network name).

    Raises:
        ConfigError: unknown name, unknown argument (listing the valid ones), an argument that
            contradicts the name (e.g. ``fmirnet-1`` with ``scales=3``), or a value no network
            setting could have (NaN, infinite, absurdly large).
    """
    from jointreg.nets.arguments import check_names, check_values, named_parameters

    entry = REGISTRATION_NETS.get(name)
    if entry is None:
        raise ConfigError(
            f"unknown registration network {name!r}; valid names: {', '.join(sorted(REGISTRATION_NETS))}"
        )
    label = where or name
    for key, value in entry.preset.items():
        if key in arguments and arguments[key] != value:
            prefix = f"{where}: " if where else ""
            raise ConfigError(f"{prefix}{name} fixes {key}={value!r}; got {key}={arguments[key]!r} (choose another name)")
    merged = {**arguments, **entry.preset}
    check_names(merged, named_parameters(entry.cls), label)
    check_values(merged, label)
    return merged


def create_registration_net(name: str, **kwargs: Any):
    """Build a registration network by registry name.

    Args:
        name: a registered name (``fmirnet``, ``fmirnet-1``, ``voxelmorph``, ``identity``, ...).
        **kwargs: constructor arguments (e.g. ``spatial_dims=3``, ``features=[8, 16, 32]``). A
            saved ``net.config`` can be passed back as is.

    Raises:
        ConfigError: as :func:`registration_arguments`, an invalid value, or arguments that
            would build more than :data:`jointreg.nets.arguments.MAX_PARAMETERS` parameters
            (counted before anything is allocated).
    """
    from jointreg.nets.arguments import build_bounded

    arguments = registration_arguments(name, kwargs)
    cls = REGISTRATION_NETS[name].cls
    try:
        return build_bounded(lambda: cls(**arguments), arguments, name)
    except (TypeError, ValueError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{name}: {error}") from error
