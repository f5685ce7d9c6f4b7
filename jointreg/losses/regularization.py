"""Smoothness penalties on displacement fields ``(B, D, *S)`` in voxels (2D or 3D).

Both are per-pair means over voxels (``reduction="none"`` gives ``(B,)``); the unit is
voxel⁰ (displacement per voxel, squared) for diffusion and voxel⁻² for bending energy.
"""

from __future__ import annotations

from torch import Tensor, nn

from jointreg.errors import ConfigError
from jointreg.losses.similarity import _reduce


def _check_flow(flow: Tensor, min_size: int) -> int:
    dims = flow.dim() - 2
    if dims < 1 or flow.shape[1] != dims:
        raise ValueError(f"flow must be (B, D, *S) with D = len(S); got shape {tuple(flow.shape)}")
    if min(flow.shape[2:]) < min_size:
        raise ValueError(f"every spatial size must be >= {min_size}; got {tuple(flow.shape[2:])}")
    return dims


def diffusion(flow: Tensor, *, reduction: str = "mean") -> Tensor:
    """Diffusion regulariser: the mean squared Frobenius norm of the displacement gradient,
    ``Σ_axes a  mean_p  Σ_c (u_c(p + e_a) - u_c(p))²`` (forward differences; each axis's mean
    runs over the ``n_a - 1`` differences along it).

    A constant field scores 0; ``u_0(p) = s·p_0`` scores ``s²``. (VoxelMorph's ``Grad('l2')``
    also averages over the ``D`` channels and ``D`` axes: it equals this value / ``D²``.)

    Against MONAI's ``DiffusionLoss()`` (mean over channels of central differences
    ``(u(p+e) - u(p-e)) / 2`` on the interior): for any affine field this value is exactly ``D``
    times MONAI's (2 in 2D, 3 in 3D; tested). For other fields there is no fixed factor: the
    central difference does not see the finest oscillation (a checkerboard scores 0 in MONAI),
    so white noise gives about 4·D times MONAI's, and smooth fields tend to ``D``.
    A MONAI weight ``w`` corresponds to ``registration.smoothness_weight = w / D`` here.
    """
    dims = _check_flow(flow, 2)
    total = None
    for axis in range(dims):
        term = flow.diff(dim=2 + axis).pow(2).sum(1).flatten(1).mean(1)
        total = term if total is None else total + term
    return _reduce(total, reduction)


def bending_energy(flow: Tensor, *, reduction: str = "mean") -> Tensor:
    """Bending energy: ``mean_p Σ_c [Σ_a (∂²u_c/∂a²)² + 2 Σ_{a<b} (∂²u_c/∂a∂b)²]``.

    Second derivatives by central differences, ``u(p+e) - 2u(p) + u(p-e)`` and
    ``(u(p+e_a+e_b) - u(p+e_a-e_b) - u(p-e_a+e_b) + u(p-e_a-e_b)) / 4``, on the interior voxels
    (one voxel away from every edge; each size must be >= 3). Any affine field scores 0.

    The stencils and voxels are those of MONAI's ``BendingEnergyLoss()`` (the compact stencils
    of MONAI 1.6; earlier versions applied the central difference twice, a wider stencil), which
    also averages over the ``D`` channels: this value is exactly ``D`` times MONAI's for any
    field (2 in 2D, 3 in 3D; tested): a MONAI weight ``w`` is ``smoothness_weight = w / D``.
    """
    dims = _check_flow(flow, 3)
    inner = tuple(slice(1, -1) for _ in range(dims))

    def shifted(offsets: dict[int, int]) -> Tensor:
        index = [slice(None), slice(None)]
        for axis in range(dims):
            o = offsets.get(axis, 0)
            index.append(slice(1 + o, flow.shape[2 + axis] - 1 + o))
        return flow[tuple(index)]

    centre = flow[(slice(None), slice(None), *inner)]
    energy = None
    for a in range(dims):
        second = shifted({a: 1}) - 2 * centre + shifted({a: -1})
        term = second.pow(2)
        energy = term if energy is None else energy + term
        for b in range(a + 1, dims):
            mixed = (shifted({a: 1, b: 1}) - shifted({a: 1, b: -1}) - shifted({a: -1, b: 1}) + shifted({a: -1, b: -1})) / 4
            energy = energy + 2 * mixed.pow(2)
    return _reduce(energy.sum(1).flatten(1).mean(1), reduction)


class Diffusion(nn.Module):
    """:func:`diffusion` as a module: ``forward(flow) -> scalar``."""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, flow: Tensor) -> Tensor:
        return diffusion(flow, reduction=self.reduction)


class BendingEnergy(nn.Module):
    """:func:`bending_energy` as a module: ``forward(flow) -> scalar``."""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, flow: Tensor) -> Tensor:
        return bending_energy(flow, reduction=self.reduction)


REGULARIZERS: dict[str, type[nn.Module]] = {"diffusion": Diffusion, "bending": BendingEnergy}


def create_regularizer(name: str, **kwargs) -> nn.Module:
    """``"diffusion"`` or ``"bending"``; an unknown name raises :class:`ConfigError`."""
    cls = REGULARIZERS.get(name)
    if cls is None:
        raise ConfigError(f"unknown smoothness regulariser {name!r}; valid names: {', '.join(REGULARIZERS)}")
    return cls(**kwargs)

