"""Composition, resizing and integration of displacement fields.

Fields follow :mod:`jointreg.spatial.warp`: ``(B, D, *S)``, voxels, channel ``d`` = axis ``d``,
pull convention ``warped(p) = moving(p + u(p))``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from jointreg.spatial.warp import Warp, coordinate_dtype, identity_grid, warp


def linear_mode(spatial_dims: int) -> str:
    """``F.interpolate``'s name for (multi)linear interpolation in ``spatial_dims`` dimensions."""
    try:
        return {1: "linear", 2: "bilinear", 3: "trilinear"}[spatial_dims]
    except KeyError:
        raise ValueError(f"spatial_dims must be 1, 2 or 3; got {spatial_dims}") from None


def compose(flow_a: Tensor, flow_b: Tensor, *, padding_mode: str = "border", grid: Tensor | None = None) -> Tensor:
    """The single field equivalent to warping by ``flow_a`` first, then by ``flow_b``.

    Warping ``x`` by ``a`` gives ``x_a(p) = x(p + a(p))``; warping that by ``b`` gives
    ``x_a(p + b(p)) = x(p + b(p) + a(p + b(p)))``. Hence::

        compose(a, b)(p) = b(p) + a(p + b(p))
        warp(warp(x, a), b) ≈ warp(x, compose(a, b))      (equal up to interpolation)

    ``a`` is sampled at ``p + b(p)`` by linear interpolation with ``padding_mode``.

    Args:
        flow_a: ``(B, D, *S)`` the field applied first.
        flow_b: ``(B, D, *S)`` the field applied second.
        padding_mode: how ``a`` is read outside the grid (``"border"`` or ``"zeros"``).
        grid: optional cached identity grid ``(1, D, *S)``.

    Returns:
        ``(B, D, *S)`` composed displacement in voxels.
    """
    return flow_b + warp(flow_a, flow_b, padding_mode=padding_mode, grid=grid)


def integrate_velocity(velocity: Tensor, steps: int = 7, *, grid: Tensor | None = None) -> Tensor:
    """Exponentiate a stationary velocity field by scaling and squaring.

    ``u_0 = v / 2**steps``, then ``steps`` times ``u <- compose(u, u) = u + u∘(id + u)``, which
    gives the displacement of ``exp(v)``, a diffeomorphism when ``v`` is smooth enough.
    A constant ``v`` integrates to exactly that translation.

    Args:
        velocity: ``(B, D, *S)`` velocity in voxels (per unit time).
        steps: number of squarings (0 returns ``velocity``).
        grid: optional cached identity grid ``(1, D, *S)``.

    Returns:
        ``(B, D, *S)`` displacement in voxels.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0; got {steps}")
    if grid is None:
        grid = identity_grid(velocity.shape[2:], device=velocity.device, dtype=coordinate_dtype(velocity))
    flow = velocity / (2**steps)
    for _ in range(steps):
        flow = compose(flow, flow, grid=grid)
    return flow


def resize_flow(flow: Tensor, size: tuple[int, ...] | list[int], *, align_corners: bool = False) -> Tensor:
    """Resample a field to another grid size, converting the vectors to the new grid's voxels.

    The field is interpolated (bi/trilinear) and channel ``d`` is multiplied by the ratio of voxel
    counts along axis ``d``:

    * ``align_corners=False`` (default; the geometry of pooling and strided convolutions, and of
      ``F.interpolate``'s default): the grids share their outer EDGES; the factor is
      ``new_n / old_n`` (exactly 2 for a 2x upsampling).
    * ``align_corners=True``: the grids share their first and last voxel CENTRES; the factor is
      ``(new_n - 1) / (old_n - 1)``.

    Args:
        flow: ``(B, D, *S)`` displacement in voxels of the old grid.
        size: the new spatial shape (``D`` ints).
        align_corners: see above.

    Returns:
        ``(B, D, *size)`` displacement in voxels of the new grid (``flow`` itself when the size
        does not change).
    """
    old = [int(n) for n in flow.shape[2:]]
    new = [int(n) for n in size]
    if len(new) != len(old):
        raise ValueError(f"size {tuple(new)} must have {len(old)} entries")
    if new == old:
        return flow
    out = F.interpolate(flow, size=new, mode=linear_mode(len(old)), align_corners=align_corners)
    factors = []
    for n_old, n_new in zip(old, new):
        if align_corners and n_old > 1 and n_new > 1:
            factors.append((n_new - 1) / (n_old - 1))
        else:
            factors.append(n_new / n_old)
    scale = out.new_tensor(factors).view(1, len(old), *([1] * len(old)))
    return out * scale


class IntegrateVelocity(nn.Module):
    """Scaling-and-squaring as a module, optionally on a coarser grid (VoxelMorph's
    ``int_downsize``): the velocity is resized by ``1 / downsize``, integrated there, and the
    displacement resized back, which saves time and smooths the result.

    Args:
        steps: number of squarings (7 in VoxelMorph).
        downsize: integer factor of the integration grid (1 = full resolution).
    """

    def __init__(self, steps: int = 7, downsize: int = 1):
        super().__init__()
        if steps < 0:
            raise ValueError(f"steps must be >= 0; got {steps}")
        if downsize < 1:
            raise ValueError(f"downsize must be >= 1; got {downsize}")
        self.steps = int(steps)
        self.downsize = int(downsize)
        self.warp = Warp(mode="bilinear", padding_mode="border")

    def forward(self, velocity: Tensor) -> Tensor:
        """``(B, D, *S)`` velocity in voxels → ``(B, D, *S)`` displacement in voxels."""
        size = [int(n) for n in velocity.shape[2:]]
        v = velocity
        if self.downsize > 1:
            v = resize_flow(v, [max(1, n // self.downsize) for n in size])
        grid = self.warp.identity(v)
        flow = integrate_velocity(v, self.steps, grid=grid)
        return resize_flow(flow, size)

    def extra_repr(self) -> str:
        return f"steps={self.steps}, downsize={self.downsize}"
