"""PMRNet: probabilistic multilayer regularisation (the source paper 003), feature-level latent
transformations between two encoders, fused into the deformation.

Two encoders of the same shape, one per image, give features ``F^m_l`` (moving) and ``F^f_l``
(fixed) at levels ``l = 0 .. L-1`` (level ``l`` at ``1 / 2**l``). At every level a convolution of
``[F^m_l, F^f_l]`` gives the mean ``μ_l`` and log-variance ``log σ²_l`` of a latent displacement
``z_l`` (``D`` channels, in that level's voxels), as in probabilistic VoxelMorph (Dalca et al.
2018, the paper's backbone)::

    z_l = μ_l + σ_l ⊙ ε,  ε ~ N(0, I)      while training (reparameterisation)
    z_l = μ_l                              in eval mode (deterministic registration)
    u   = Σ_l  up_{2^l}(z_l)               (vectors scaled with the grid; the multilayer fusion)

Each level's distribution is pulled towards the prior ``N(0, s² I)`` (``s = prior_std``) by the
closed-form Kullback–Leibler divergence, averaged over voxels and channels::

    KL_l = ½ mean[ (σ²_l + μ²_l) / s² − 1 − log(σ²_l / s²) ]

which is 0 exactly when ``μ_l = 0`` and ``σ_l = s``. ``kl = Σ_l KL_l`` reaches the loss as the
named penalty ``kl`` (weight ``registration.penalties.kl``, default 0.01); the recipe's
smoothness prior applies to the fused displacement. The heads start at ``μ = 0``,
``σ = s``: the fresh network is the identity in eval mode and the KL term starts at 0. With
``diffeomorphic=True`` the fused field is integrated as a stationary velocity.

Extras: ``flows`` (the per-level means ``μ_l``, finest first), ``log_variances``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from jointreg.nets.blocks import ConvBlock, conv
from jointreg.nets.registration.base import RegistrationNet
from jointreg.nets.registration.integration import velocity_or_displacement
from jointreg.nets.registration.output import Prediction
from jointreg.nets.registration.registry import register
from jointreg.spatial.integrate import resize_flow


def gaussian_kl(mean: Tensor, log_variance: Tensor, prior_std: float) -> Tensor:
    """Mean KL divergence of ``N(mean, exp(log_variance))`` from ``N(0, prior_std²)`` per element."""
    prior_variance = prior_std**2
    ratio = torch.exp(log_variance) / prior_variance
    return 0.5 * (ratio + mean.pow(2) / prior_variance - 1.0 - torch.log(ratio)).mean()


class _Encoder(nn.Module):
    def __init__(self, dims: int, in_channels: int, features: Sequence[int]):
        super().__init__()
        self.levels = nn.ModuleList()
        previous = in_channels
        for k, f in enumerate(features):
            self.levels.append(nn.Sequential(
                ConvBlock(dims, previous, f, stride=1 if k == 0 else 2), ConvBlock(dims, f, f),
            ))
            previous = f

    def forward(self, x: Tensor) -> list[Tensor]:
        out = []
        for level in self.levels:
            x = level(x)
            out.append(x)
        return out


@register("pmrnet", preset={"diffeomorphic": False},
          description="PMRNet: probabilistic feature-level latent flows at every encoder level, fused")
@register("pmrnet-diff", preset={"diffeomorphic": True},
          description="PMRNet with the fused field integrated as a velocity")
class PMRNet(RegistrationNet):
    """PMRNet registration (2D or 3D).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of each image.
        features: channels per encoder level, full resolution first (one latent flow per level).
        prior_std: std of the latent prior, in each level's voxels.
        diffeomorphic: integrate the fused field as a stationary velocity.
        int_steps, int_downsize: scaling-and-squaring settings (diffeomorphic mode).
    """

    penalty_weights = {"kl": 0.01}

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        features: Sequence[int] = (16, 32, 32, 32),
        prior_std: float = 0.1,
        diffeomorphic: bool = False,
        int_steps: int = 7,
        int_downsize: int = 1,
    ):
        super().__init__(spatial_dims, in_channels, velocity_or_displacement(diffeomorphic, int_steps, int_downsize))
        features = [int(f) for f in features]
        if not features:
            raise ValueError("features needs at least one level")
        if prior_std <= 0:
            raise ValueError(f"prior_std must be > 0; got {prior_std}")
        dims = spatial_dims
        self.prior_std = float(prior_std)
        self.multiple = 2 ** (len(features) - 1)
        self.moving_encoder = _Encoder(dims, in_channels, features)
        self.fixed_encoder = _Encoder(dims, in_channels, features)
        self.means = nn.ModuleList(conv(dims, 2 * f, dims, kernel_size=3) for f in features)
        self.log_variances = nn.ModuleList(conv(dims, 2 * f, dims, kernel_size=3) for f in features)
        log_prior = 2.0 * math.log(self.prior_std)
        for mean, log_variance in zip(self.means, self.log_variances):
            nn.init.zeros_(mean.weight)
            nn.init.zeros_(mean.bias)
            nn.init.zeros_(log_variance.weight)
            nn.init.constant_(log_variance.bias, log_prior)

    @classmethod
    def tiny_arguments(cls) -> dict:
        return {"features": [4, 8]}

    def predict(self, moving: Tensor, fixed: Tensor) -> Prediction:
        size = moving.shape[2:]
        moving_features, fixed_features = self.moving_encoder(moving), self.fixed_encoder(fixed)
        means, log_variances, kl = [], [], []
        fused = None
        for level, (fm, ff) in enumerate(zip(moving_features, fixed_features)):
            pair = torch.cat([fm, ff], dim=1)
            # The clamp keeps exp() finite (σ between e^-5 and e^5 voxels of the level).
            mean, log_variance = self.means[level](pair), self.log_variances[level](pair).clamp(-10.0, 10.0)
            kl.append(gaussian_kl(mean, log_variance, self.prior_std))
            latent = mean
            if self.training:
                latent = mean + torch.exp(0.5 * log_variance) * torch.randn_like(mean)
            full = latent if level == 0 else resize_flow(latent, size)
            fused = full if fused is None else fused + full
            means.append(mean)
            log_variances.append(log_variance)
        return Prediction(fused, fields={"flows": tuple(means), "log_variances": tuple(log_variances)},
                          penalties={"kl": torch.stack(kl).sum()})
