"""VoxelMorph (Balakrishnan et al. 2019; diffeomorphic variant Dalca et al. 2019) with the
original channel layout.

UNet with one 3×3 convolution + LeakyReLU(0.2) per level, max pooling, nearest upsampling and
skip concatenation (the layout of voxelmorph's PyTorch ``Unet``)::

    encoder (enc = 16, 32, 32, 32):   conv → skip → maxpool          at 1, 1/2, 1/4, 1/8
    decoder (dec[:4] = 32, 32, 32, 32): conv → up×2 → concat skip   from 1/16 up to full res
    remaining (dec[4:] = 32, 16, 16):   conv at full resolution
    flow head: 3×3 conv to D channels, weights N(0, 1e-5), bias 0

Displacement mode predicts the field directly. Diffeomorphic mode treats it as a stationary
velocity, integrated by scaling and squaring (``int_steps`` = 7) on a grid ``int_downsize``
(= 2) times coarser, as VoxelMorph does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from jointreg.nets.blocks import ConvBlock, Upsample, flow_head, pool
from jointreg.nets.registration.base import RegistrationNet
from jointreg.nets.registration.integration import velocity_or_displacement
from jointreg.nets.registration.output import Prediction
from jointreg.nets.registration.registry import register


@register("voxelmorph", preset={"diffeomorphic": False}, description="VoxelMorph, displacement field")
@register(
    "voxelmorph-diff", preset={"diffeomorphic": True},
    description="VoxelMorph, diffeomorphic (SVF + scaling and squaring)",
)
class VoxelMorph(RegistrationNet):
    """VoxelMorph UNet registration (2D or 3D).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of each image.
        enc: encoder channels, one convolution per level (full resolution first).
        dec: decoder channels: the first ``len(enc)`` convolutions run on the way up, the rest
            at full resolution.
        diffeomorphic: integrate the predicted field as a stationary velocity field.
        int_steps: scaling-and-squaring steps.
        int_downsize: integration grid coarsening factor.
        flow_init_std: std of the flow head's initial weights.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        enc: Sequence[int] = (16, 32, 32, 32),
        dec: Sequence[int] = (32, 32, 32, 32, 32, 16, 16),
        diffeomorphic: bool = False,
        int_steps: int = 7,
        int_downsize: int = 2,
        flow_init_std: float = 1e-5,
    ):
        super().__init__(spatial_dims, in_channels, velocity_or_displacement(diffeomorphic, int_steps, int_downsize))
        enc, dec = [int(c) for c in enc], [int(c) for c in dec]
        if not enc or len(dec) < len(enc):
            raise ValueError(f"need at least one encoder level and len(dec) >= len(enc); got enc={enc}, dec={dec}")
        dims = spatial_dims
        self.multiple = 2 ** len(enc)
        self.encoder = nn.ModuleList()
        previous = 2 * in_channels
        for channels in enc:
            self.encoder.append(ConvBlock(dims, previous, channels))
            previous = channels
        self.pool = pool(dims, "max", 2)
        self.up = Upsample(dims, 2, "nearest")
        self.decoder = nn.ModuleList()
        for level, channels in enumerate(dec[: len(enc)]):
            self.decoder.append(ConvBlock(dims, previous, channels))
            previous = channels + enc[len(enc) - 1 - level]
        self.remaining = nn.Sequential()
        for channels in dec[len(enc):]:
            self.remaining.append(ConvBlock(dims, previous, channels))
            previous = channels
        self.head = flow_head(dims, previous, flow_init_std)

    @classmethod
    def tiny_arguments(cls) -> dict:
        return {"enc": [4, 8, 8], "dec": [8, 8, 8, 4]}

    def predict(self, moving: Tensor, fixed: Tensor) -> Prediction:
        x = torch.cat([moving, fixed], dim=1)
        skips = []
        for conv in self.encoder:
            x = conv(x)
            skips.append(x)
            x = self.pool(x)
        for conv in self.decoder:
            x = torch.cat([self.up(conv(x)), skips.pop()], dim=1)
        field = self.head(self.remaining(x))
        return Prediction(field, fields={"flows": (field,)})
