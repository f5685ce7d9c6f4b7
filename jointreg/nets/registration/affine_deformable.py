"""Coupled linear + deformable registration in one network (the source paper 002: an affine
branch and a deformable branch that predicts spatial gradients of the deformation).

Both branches share one encoder-decoder over the pair ``[moving, fixed]``:

* **affine branch**: global average of the deepest features → linear layer → ``M`` (``D×D``) and
  ``t`` (``D``), initialised to the identity (``M = I + ΔM``, ``t = 0``). The affine sampling map is
  ``G_A(p) = M (p − c) + c + t`` about the grid centre ``c`` (voxels), the translation ``t`` in
  units of half the grid size (so that ``|A − A_I|₁`` weighs rotation, scale and shift alike).
* **deformable branch**: full-resolution features → ``D`` channels → ``Φ_d = 2·sigmoid(·)`` in
  ``(0, 2)``, the spacing between consecutive sampling points along axis ``d`` (1 = unchanged).
  Integrated by cumulative sums, ``G_N(p)_d = Σ_{k ≤ p_d} Φ_d(…, k, …) − 1``, the sampling
  coordinates increase strictly along each axis: grid lines never cross along an axis (shear
  across axes can still give non-positive Jacobian determinants, which the metrics report).
  Zero output gives ``Φ = 1`` and ``G_N = id``.
* **composition**, deformable then affine as in the paper, ``W(S, G) = W(W(S, G_N), G_A)``: the
  displacement is ``u = u_A + u_N ∘ (id + u_A)`` (:func:`jointreg.spatial.integrate.compose`).

Regularisers (the paper's eq. 4, as named penalties): ``affine_identity = mean |A − A_I|``
over the ``D × (D+1)`` parameters and ``gradient_identity = mean |Φ − 1|``. The smoothness prior
of the recipe applies to the deformable displacement ``u_N`` only (``regularized``), so that the
affine part is not penalised for being large. Extras: ``affine`` ``(B, D, D+1)``, the map from a
fixed-grid voxel ``p`` to its sampling location ``[M | b] [p, 1]`` about voxel 0 (independent of
padding), ``spatial_gradients`` ``Φ`` and ``deformable`` ``u_N``.

The paper's encoder (dilated convolutions, squeeze-excitation) is replaced by a small UNet of
this package's blocks; the branches and the integration follow the paper.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from jointreg.nets.blocks import EncoderDecoder, conv
from jointreg.nets.registration.base import RegistrationNet
from jointreg.nets.registration.output import Prediction
from jointreg.nets.registration.registry import register
from jointreg.spatial.integrate import compose


def _centred_points(size: Sequence[int], like: Tensor) -> Tensor:
    """``(D, *S)`` voxel coordinates minus the grid centre."""
    axes = [torch.arange(n, dtype=like.dtype, device=like.device) - (n - 1) / 2 for n in size]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def integrate_gradients(gradients: Tensor) -> Tensor:
    """Displacement ``(B, D, *S)`` of the sampling grid whose spacing along axis ``d`` is
    ``gradients[:, d]`` (cumulative sums; all ones give zero)."""
    dims = gradients.shape[1]
    parts = []
    for d in range(dims):
        coordinate = torch.cumsum(gradients[:, d], dim=1 + d) - 1.0
        index = torch.arange(gradients.shape[2 + d], dtype=gradients.dtype, device=gradients.device)
        parts.append(coordinate - index.view(*([-1] + [1] * (dims - 1 - d))))
    return torch.stack(parts, dim=1)


@register("affine-deformable", preset={"affine": True, "deformable": True},
          description="coupled affine + deformable (spatial gradients integrated by cumulative sums)")
@register("deformable-gradients", preset={"affine": False, "deformable": True},
          description="the deformable branch alone (spatial gradients, fold-free along each axis)")
@register("affine", preset={"affine": True, "deformable": False}, description="the affine branch alone")
class AffineDeformable(RegistrationNet):
    """Affine and/or spatial-gradient deformable registration (2D or 3D).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of each image.
        features: channels per level of the shared encoder-decoder, full resolution first.
        affine: use the affine branch.
        deformable: use the deformable (spatial-gradient) branch.
        norm: normalisation of the blocks (``None``, ``"instance"``, ...).
    """

    penalty_weights = {"affine_identity": 0.01, "gradient_identity": 0.01}

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        features: Sequence[int] = (16, 32, 32, 32),
        affine: bool = True,
        deformable: bool = True,
        norm: str | None = None,
    ):
        super().__init__(spatial_dims, in_channels)
        features = [int(f) for f in features]
        if len(features) < 2:
            raise ValueError(f"features needs at least 2 levels; got {features}")
        if not (affine or deformable):
            raise ValueError("enable the affine branch, the deformable branch, or both")
        dims = spatial_dims
        self.use_affine, self.use_deformable = bool(affine), bool(deformable)
        self.multiple = 2 ** (len(features) - 1)
        # Only the deformable branch needs the full-resolution features.
        self.trunk = EncoderDecoder(dims, 2 * in_channels, features, norm=norm, decode=deformable)
        self.theta = nn.Linear(features[-1], dims * (dims + 1)) if affine else None
        self.gradients = conv(dims, features[0], dims, kernel_size=3) if deformable else None
        for layer in (self.theta, self.gradients):
            if layer is not None:  # zero output: the identity affine, unit spacing
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    @classmethod
    def tiny_arguments(cls) -> dict:
        return {"features": [4, 8]}

    def predict(self, moving: Tensor, fixed: Tensor) -> Prediction:
        dims, size = self.spatial_dims, [int(n) for n in moving.shape[2:]]
        x, deepest = self.trunk(torch.cat([moving, fixed], dim=1))
        fields, extras, penalties = {}, {}, {}
        deformable_flow = moving.new_zeros(moving.shape[0], dims, *size)
        if self.gradients is not None:
            spacing = 2.0 * torch.sigmoid(self.gradients(x))
            deformable_flow = integrate_gradients(spacing)
            fields.update(spatial_gradients=spacing, deformable=deformable_flow)
            penalties["gradient_identity"] = (spacing - 1.0).abs().mean()
        fields["regularized"] = deformable_flow  # the smoothness prior leaves the affine part alone
        flow = deformable_flow
        if self.theta is not None:
            theta = self.theta(deepest.flatten(2).mean(2)).view(-1, dims, dims + 1)
            matrix = torch.eye(dims, dtype=theta.dtype, device=theta.device) + theta[:, :, :dims]
            half = torch.tensor([(n - 1) / 2 for n in size], dtype=theta.dtype, device=theta.device)
            shift = theta[:, :, dims] * half
            points = _centred_points(size, moving)
            affine_flow = (torch.einsum("bij,j...->bi...", matrix, points) - points
                           + shift.view(-1, dims, *([1] * dims)))
            flow = compose(deformable_flow, affine_flow) if self.gradients is not None else affine_flow
            # About voxel 0: G_A(p) = M p + (c + t − M c).
            offset = half + shift - torch.einsum("bij,j->bi", matrix, half)
            extras["affine"] = torch.cat([matrix, offset.unsqueeze(2)], dim=2)
            penalties["affine_identity"] = theta.abs().mean()
        return Prediction(flow, fields=fields, extras=extras, penalties=penalties)
