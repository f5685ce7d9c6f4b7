"""The ``volumes`` section of a recipe (3D mode, :mod:`jointreg.training.volume_mode`) and what
3D mode refuses in the other sections."""

from __future__ import annotations

from dataclasses import dataclass

from jointreg.errors import ConfigError


@dataclass(frozen=True)
class VolumesConfig:
    """3D mode (:mod:`jointreg.training.volume_mode`): a few training volumes annotated on every
    slice (``jointreg sparsify --volumes N``), the registration network 3D, between whole volumes
    in a common box (:mod:`jointreg.inference.volume_box`).

    Attributes:
        enabled: 3D mode on.
        spacing: millimetres per box voxel along each source array axis (default: each axis's
            median spacing of the training slices, i.e. ``data.size`` in-plane and the slice
            spacing through-plane).
        shape: the box in voxels (default: the largest training volume at ``spacing``, each side
            rounded up to a multiple of 8).
    """

    enabled: bool = False
    spacing: tuple[float, float, float] | None = None
    shape: tuple[int, int, int] | None = None

    def __post_init__(self):
        if self.spacing is not None and min(self.spacing) <= 0:
            raise ConfigError(f"volumes.spacing: must be positive millimetres, got {list(self.spacing)}")
        if self.shape is not None and min(self.shape) < 8:
            raise ConfigError(f"volumes.shape: at least 8 voxels per side, got {list(self.shape)}")


def check_volume_mode(recipe) -> None:
    """What 3D mode cannot use, refused with the key to change (nothing without ``volumes.enabled``)."""
    if not recipe.volumes.enabled:
        return
    if not recipe.registration.enabled:
        raise ConfigError("volumes.enabled: 3D mode registers volumes; it needs registration.enabled: true")
    if recipe.propagation != type(recipe.propagation)():  # the section's defaults
        raise ConfigError("propagation: the slice-propagation settings do not apply in 3D mode (volumes.enabled); "
                          "remove the section (3D mode fuses the atlases' warped labels)")
    if recipe.pairs.cross_volume:
        raise ConfigError("pairs.cross_volume: every pair joins two volumes in 3D mode; remove it")
