"""Spatial transforms in voxel units: warping, composition, integration, Jacobians.

A displacement field ("flow") is ``(B, D, *S)`` in voxels of its own grid, channel ``d`` along
spatial axis ``d``; warping pulls: ``warped(p) = moving(p + u(p))``. See ``docs/registration.md``.
"""

from jointreg.spatial.integrate import IntegrateVelocity, compose, integrate_velocity, linear_mode, resize_flow
from jointreg.spatial.jacobian import jacobian_determinant, jacobian_matrix
from jointreg.spatial.labels import known_mask, one_hot
from jointreg.spatial.warp import (
    Warp,
    flow_to_grid_sample_grid,
    identity_grid,
    sample,
    warp,
    warp_labels,
    warp_onehot,
)

__all__ = [
    "IntegrateVelocity",
    "Warp",
    "compose",
    "flow_to_grid_sample_grid",
    "identity_grid",
    "integrate_velocity",
    "jacobian_determinant",
    "jacobian_matrix",
    "known_mask",
    "linear_mode",
    "one_hot",
    "resize_flow",
    "sample",
    "warp",
    "warp_labels",
    "warp_onehot",
]
