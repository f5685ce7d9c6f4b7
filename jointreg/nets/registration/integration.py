"""How a network's predicted field becomes the displacement: a strategy the network is given.

A registration network predicts one field on its (padded) grid; the strategy turns it into the
displacement that warps the moving image:

* :class:`Displacement`: the field is the displacement (no integration).
* :class:`StationaryVelocity`: the field is a stationary velocity, integrated by scaling and
  squaring (optionally on a coarser grid); the velocity is kept in the output's extras.

Networks that integrate inside themselves (e.g. time-dependent velocity fields) are given
:class:`Displacement` and put their velocities into the extras.
"""

from __future__ import annotations

from torch import Tensor, nn

from jointreg.spatial.integrate import IntegrateVelocity


class FieldIntegration(nn.Module):
    """Base of the strategies: ``forward(field) -> displacement`` on the same grid.

    Attributes:
        keeps: the extras key under which the network output keeps the field as predicted
            (before integration), or ``None`` when the field is the displacement itself.
    """

    keeps: str | None = None

    def forward(self, field: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class Displacement(FieldIntegration):
    """The predicted field is the displacement."""

    def forward(self, field: Tensor) -> Tensor:
        return field


class StationaryVelocity(FieldIntegration):
    """The predicted field is a stationary velocity, integrated by scaling and squaring.

    Integration runs on the padded grid, so it sees the same context as the network.

    Args:
        steps: number of squarings.
        downsize: integrate on a grid this many times coarser (VoxelMorph's ``int_downsize``).
    """

    keeps = "velocity"

    def __init__(self, steps: int = 7, downsize: int = 1):
        super().__init__()
        self.integrate = IntegrateVelocity(steps, downsize)

    def forward(self, field: Tensor) -> Tensor:
        return self.integrate(field)


def velocity_or_displacement(diffeomorphic: bool, steps: int, downsize: int) -> FieldIntegration:
    """The strategy behind the ``diffeomorphic`` / ``int_steps`` / ``int_downsize`` arguments
    that VoxelMorph-style networks expose."""
    return StationaryVelocity(steps, downsize) if diffeomorphic else Displacement()
