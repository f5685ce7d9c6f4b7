"""FMIRNet: fast multiscale unsupervised deformable registration (residual UNet, three scales,
spatial-attention fusion).

Architecture (``features = (f0, f1, ..., f_{L-1})``, level ``k`` at ``1 / 2**k`` resolution)::

    pyramid:  x0 = [moving, fixed],  x1 = avgpool(x0),  x2 = avgpool(x1)
    encoder:  e0 = conv(x0)                                    (full resolution, f0)
              e1 = res([strided_conv(e0), x1])                 (1/2, f1; pyramid input injected)
              e2 = res([strided_conv(e1), x2])                 (1/4, f2; pyramid input injected)
              ek = res(strided_conv(e_{k-1}))                  (k >= 3)
    decoder:  d_{L-1} = e_{L-1};  dk = res([up(d_{k+1}), ek])  (k = L-2 .. 1)
              d0 = conv([up(conv1x1(d1)), e0])                  (d1 narrowed to f0 before upsampling)
    heads:    Φ1 = head(d0) (full),  Φ2 = head(d1) (1/2),  Φ3 = head(d2) (1/4)
    fusion:   Φp = Φ1 + up×2(Φ2) + up×4(Φ3)      (vectors scaled with the grid)
              W = sigmoid(conv(Φp)),   Φ = W ⊗ Φp
    output:   warped = moving ∘ (id + Φ)        (Φ integrated as a velocity if diffeomorphic)

``scales=1`` / ``2`` keep only Φ1 / Φ1 and Φ2 (FMIRNet-1 / -2 of the paper's ablation). Only the
stem and one decoder convolution (plus the flow head and the attention conv) run at full
resolution, and the half-resolution features are narrowed by a 1×1 conv before they are upsampled
(it saves ~10 % of the inference time against upsampling all of them), which keeps inference fast
on a CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from jointreg.nets.blocks import ConvBlock, ResidualBlock, Upsample, conv, flow_head, pool
from jointreg.nets.registration.base import RegistrationNet
from jointreg.nets.registration.integration import velocity_or_displacement
from jointreg.nets.registration.output import Prediction
from jointreg.nets.registration.registry import register
from jointreg.spatial.integrate import resize_flow

DEFAULT_FEATURES = (16, 32, 32, 48, 64)
# ``fmirnet-fast``: the full- and half-resolution levels narrowed, where almost all of the work
# is (0.39 of FMIRNet's 0.84 GFLOP per 128² pair; the coarse levels, most of the parameters, kept).
FAST_FEATURES = [8, 16, 32, 48, 64]


@register("fmirnet", preset={"scales": 3}, description="FMIRNet, three scales fused with spatial attention")
@register("fmirnet-3", preset={"scales": 3}, description="same as fmirnet")
@register("fmirnet-2", preset={"scales": 2}, description="FMIRNet ablation: full and 1/2 scales")
@register("fmirnet-1", preset={"scales": 1}, description="FMIRNet ablation: full scale only")
@register("fmirnet-fast", preset={"scales": 3, "features": FAST_FEATURES},
          description="FMIRNet with 8 / 16 channels at full / half resolution (46 % of the FLOPs)")
@register(
    "fmirnet-diff", preset={"scales": 3, "diffeomorphic": True},
    description="FMIRNet, fused field integrated as a velocity",
)
class FMIRNet(RegistrationNet):
    """FMIRNet registration network (2D or 3D).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of each image (the pair is concatenated: ``2 * in_channels``).
        features: channels per level, full resolution first; at least 3 levels (1/4 is needed).
        scales: 1, 2 or 3 displacement fields fused (FMIRNet-1/-2/-3).
        diffeomorphic: integrate the fused field as a stationary velocity field.
        int_steps: scaling-and-squaring steps (diffeomorphic mode).
        int_downsize: integrate on a grid this many times coarser (diffeomorphic mode).
        attention: apply the spatial-attention weights (``False`` fuses by plain summation).
        norm: ``None``, ``"batch"``, ``"instance"`` or ``"group"`` in the residual blocks.
        act: activation name (see :func:`jointreg.nets.blocks.activation`).
        flow_init_std: std of the flow heads' initial weights (near-identity start).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        features: Sequence[int] = DEFAULT_FEATURES,
        scales: int = 3,
        diffeomorphic: bool = False,
        int_steps: int = 7,
        int_downsize: int = 1,
        attention: bool = True,
        norm: str | None = None,
        act: str = "leakyrelu",
        flow_init_std: float = 1e-5,
    ):
        super().__init__(spatial_dims, in_channels, velocity_or_displacement(diffeomorphic, int_steps, int_downsize))
        features = [int(f) for f in features]
        if len(features) < 3:
            raise ValueError(f"features needs at least 3 levels (full, 1/2, 1/4); got {features}")
        if scales not in (1, 2, 3):
            raise ValueError(f"scales must be 1, 2 or 3; got {scales!r}")
        self.scales = scales
        self.multiple = 2 ** (len(features) - 1)
        dims, pair = spatial_dims, 2 * in_channels
        block = dict(norm=norm, act=act)

        self.downscale = pool(dims, "avg", 2)  # image pyramid
        self.stem = ConvBlock(dims, pair, features[0], **block)
        self.down = nn.ModuleList()
        self.encode = nn.ModuleList()
        for k in range(1, len(features)):
            self.down.append(ConvBlock(dims, features[k - 1], features[k], stride=2, **block))
            injected = pair if k <= 2 else 0  # pyramid inputs at 1/2 and 1/4
            self.encode.append(ResidualBlock(dims, features[k] + injected, features[k], **block))
        self.up = Upsample(dims, 2, "nearest")
        self.decode = nn.ModuleList(
            ResidualBlock(dims, features[k + 1] + features[k], features[k], **block)
            for k in range(1, len(features) - 1)
        )  # decode[k - 1] produces level k
        self.narrow = conv(dims, features[1], features[0], kernel_size=1)
        self.last = ConvBlock(dims, 2 * features[0], features[0], **block)
        self.heads = nn.ModuleList(flow_head(dims, features[k], flow_init_std) for k in range(scales))
        self.attend = conv(dims, dims, dims, kernel_size=3) if attention else None

    @classmethod
    def tiny_arguments(cls) -> dict:
        return {"features": [4, 8, 8]}

    def predict(self, moving: Tensor, fixed: Tensor) -> Prediction:
        pyramid = [torch.cat([moving, fixed], dim=1)]
        for _ in range(2):
            pyramid.append(self.downscale(pyramid[-1]))
        skips = [self.stem(pyramid[0])]
        for k, (down, encode) in enumerate(zip(self.down, self.encode), start=1):
            x = down(skips[-1])
            if k <= 2:
                x = torch.cat([x, pyramid[k]], dim=1)
            skips.append(encode(x))
        decoded: list[Tensor] = [skips[-1]]  # deepest first
        for k in range(len(skips) - 2, 0, -1):
            decoded.append(self.decode[k - 1](torch.cat([self.up(decoded[-1]), skips[k]], dim=1)))
        decoded.append(self.last(torch.cat([self.up(self.narrow(decoded[-1])), skips[0]], dim=1)))
        by_level = decoded[::-1]  # by_level[k] at 1 / 2**k
        per_scale = tuple(head(by_level[k]) for k, head in enumerate(self.heads))
        size = per_scale[0].shape[2:]
        fused = per_scale[0]
        for field in per_scale[1:]:
            fused = fused + resize_flow(field, size)
        fields: dict = {"flows": per_scale}
        if self.attend is not None:
            weights = torch.sigmoid(self.attend(fused))
            fused = weights * fused
            fields["attention"] = weights
        return Prediction(fused, fields=fields)
