"""Jacobian of the deformation ``φ(p) = p + u(p)`` of a displacement field."""

from __future__ import annotations

import torch
from torch import Tensor


def jacobian_matrix(flow: Tensor) -> Tensor:
    """Jacobian matrix ``J = I + ∇u`` of ``φ(p) = p + u(p)`` at every voxel.

    ``J[..., i, j] = δ_ij + ∂u_i/∂p_j`` where the derivative along axis ``j`` is the central
    difference ``(u(p + e_j) - u(p - e_j)) / 2`` in the interior and the one-sided difference at
    the first and last voxel (``torch.gradient`` with unit spacing: voxel units throughout).

    Args:
        flow: ``(B, D, *S)`` displacement in voxels, every spatial size >= 2.

    Returns:
        ``(B, *S, D, D)`` Jacobian matrices.
    """
    dims = flow.dim() - 2
    if dims < 1 or flow.shape[1] != dims:
        raise ValueError(f"flow must be (B, D, *S) with D = len(S); got shape {tuple(flow.shape)}")
    if min(flow.shape[2:]) < 2:
        raise ValueError(f"every spatial size must be >= 2 for finite differences; got {tuple(flow.shape[2:])}")
    grads = torch.gradient(flow, dim=list(range(2, 2 + dims)))  # D tensors (B, D_i, *S) = ∂u_i/∂p_j
    jac = torch.stack(grads, dim=-1).movedim(1, -2)  # (B, *S, D_i, D_j)
    return jac + torch.eye(dims, dtype=flow.dtype, device=flow.device)


def jacobian_determinant(flow: Tensor) -> Tensor:
    """Determinant of the Jacobian of ``φ(p) = p + u(p)``: ``det(I + ∇u)`` per voxel.

    1 = volume preserved, > 1 expansion, < 1 compression, <= 0 folding (φ not invertible there).
    Derivatives as in :func:`jacobian_matrix` (central differences inside, one-sided at the edge).

    Args:
        flow: ``(B, D, *S)`` displacement in voxels (2D or 3D).

    Returns:
        ``(B, *S)`` determinants.
    """
    return torch.linalg.det(jacobian_matrix(flow))
