"""Time-dependent velocity fields integrated inside the network (the source paper 001,
TransMorph-TVF), with a convolutional backbone.

LDDMM writes the transformation as the flow of a time-dependent velocity, ``dφ/dt = v_t(φ_t)``,
``φ_0 = Id``. Here the network produces ``N`` velocity fields (8 in the paper), each from the
moving image warped so far, and integrates them as the paper does (forward Euler in ``N`` steps)::

    u_0 = 0,   w_t = moving ∘ (Id + u_t)
    v_t = head([features, w_t, fixed]) / N                 (t = 0 .. N-1, one shared head)
    u_{t+1} = u_t + v_t ∘ (Id + u_t)                       so  φ_1 ≈ Id + Σ_t v_t ∘ φ_t
    inverse:  φ_{-1} ≈ Id − Σ_t v_t ∘ φ_t                  (extras["inverse"] = −u_N)

``features`` come from one encoder-decoder pass over ``[moving, fixed]``; only the small head runs
per step. The inverse is the paper's first-order one: ``compose`` of the forward and inverse
fields leaves a residual of the order of the displacement's gradient times its size (measured in
the tests and in docs/registration.md); use it for small to moderate deformations.

Two variants:

* ``tvf``: the smoothness prior of the recipe (diffusion) on the end-point velocity only
  (``regularized = v_{N-1}``): smoother than a single displacement, without a guarantee;
* ``tvf-lddmm``: the velocity gradients of every time step are penalised
  (``velocity_smoothness = mean_t diffusion(v_t)``, a named penalty), the LDDMM energy that keeps
  each small step, and so their composition, diffeomorphic.

The paper's Swin-transformer backbone is not used (a convolutional UNet of this package's blocks
instead); the integration and the regularisers follow the paper. Extras: ``velocities`` (the
``N`` fields, voxels per step), ``inverse``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from jointreg.losses.regularization import diffusion
from jointreg.nets.blocks import ConvBlock, EncoderDecoder, flow_head
from jointreg.nets.registration.base import RegistrationNet
from jointreg.nets.registration.output import Prediction
from jointreg.nets.registration.registry import register
from jointreg.spatial.integrate import compose
from jointreg.spatial.warp import Warp


@register("tvf", preset={"lddmm": False},
          description="time-dependent velocity fields integrated in the network (smoothness on the end-point velocity)")
@register("tvf-lddmm", preset={"lddmm": True},
          description="time-dependent velocity fields, every step's velocity gradient penalised (diffeomorphic)")
class TimeDependentVelocity(RegistrationNet):
    """TVF registration (2D or 3D).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of each image.
        features: channels per level of the backbone, full resolution first.
        steps: number of time steps ``N``.
        head_channels: channels of the per-step velocity head.
        lddmm: penalise the velocity gradients of every step (``tvf-lddmm``).
        flow_init_std: std of the velocity head's initial weights (near-identity start).
    """

    penalty_weights = {"velocity_smoothness": 0.02}

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        features: Sequence[int] = (16, 32, 32, 32),
        steps: int = 8,
        head_channels: int = 16,
        lddmm: bool = False,
        flow_init_std: float = 1e-5,
    ):
        super().__init__(spatial_dims, in_channels)
        features = [int(f) for f in features]
        if len(features) < 2:
            raise ValueError(f"features needs at least 2 levels; got {features}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1; got {steps}")
        dims = spatial_dims
        self.steps, self.lddmm = int(steps), bool(lddmm)
        self.multiple = 2 ** (len(features) - 1)
        self.trunk = EncoderDecoder(dims, 2 * in_channels, features)
        self.head = nn.Sequential(
            ConvBlock(dims, features[0] + 2 * in_channels, head_channels),
            flow_head(dims, head_channels, flow_init_std),
        )
        self.sampler = Warp(mode="bilinear", padding_mode="border")

    @classmethod
    def tiny_arguments(cls) -> dict:
        return {"features": [4, 8], "steps": 3, "head_channels": 4}

    def predict(self, moving: Tensor, fixed: Tensor) -> Prediction:
        x, _ = self.trunk(torch.cat([moving, fixed], dim=1))
        flow = moving.new_zeros(moving.shape[0], self.spatial_dims, *moving.shape[2:])
        warped, velocities = moving, []
        for _ in range(self.steps):
            velocity = self.head(torch.cat([x, warped, fixed], dim=1)) / self.steps
            flow = compose(velocity, flow)  # u + v ∘ (Id + u)
            warped = self.sampler(moving, flow)
            velocities.append(velocity)
        penalties = {}
        if self.lddmm:
            penalties["velocity_smoothness"] = torch.stack([diffusion(v) for v in velocities]).mean()
        # The smoothness prior sees the end-point velocity per unit time, on the scale of a displacement.
        fields = {"velocities": tuple(velocities), "inverse": -flow, "regularized": velocities[-1] * self.steps}
        return Prediction(flow, fields=fields, penalties=penalties)
