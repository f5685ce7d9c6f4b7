"""segmentation-models-pytorch architectures behind jointreg's segmentor interface."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from jointreg._compat import import_smp
from jointreg.errors import ConfigError
from jointreg.nets.blocks import crop_to, pad_to_multiple


class SMPSegmentor(nn.Module):
    """An smp model (``encoder_weights=None``) that accepts any input size.

    Args:
        architecture: smp architecture name (``unet``, ``fpn``, ...).
        encoder_name: smp/timm encoder (``resnet18``, ``resnet34``, ``efficientnet-b0``, ...).
        in_channels: image channels.
        classes: output classes (background included).
        encoder_depth: encoder stages; inputs are padded to a multiple of ``2**encoder_depth``.
        **options: further smp keyword arguments (e.g. ``decoder_channels``), saved in ``config``.

    Shapes:
        ``(B, in_channels, H, W)`` → logits ``(B, classes, H, W)``.
    """

    def __init__(
        self,
        architecture: str = "unet",
        encoder_name: str = "resnet18",
        in_channels: int = 1,
        classes: int = 2,
        encoder_depth: int = 5,
        **options: Any,
    ):
        super().__init__()
        smp = import_smp()
        self.config = {
            "architecture": architecture, "encoder_name": encoder_name, "in_channels": in_channels,
            "classes": classes, "encoder_depth": encoder_depth, **options,
        }
        self.spatial_dims = 2
        kwargs = dict(options)
        if "decoder_channels" in kwargs:
            kwargs["decoder_channels"] = tuple(kwargs["decoder_channels"])
        if architecture in ("unet", "unetplusplus", "manet", "linknet", "fpn", "deeplabv3", "deeplabv3plus", "pan", "upernet", "pspnet", "segformer"):
            kwargs["encoder_depth"] = encoder_depth
        try:
            self.net = smp.create_model(
                architecture, encoder_name=encoder_name, encoder_weights=None,
                in_channels=in_channels, classes=classes, **kwargs,
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ConfigError(f"segmentor {architecture}/{encoder_name}: {exc}") from None
        self.stride = 2**encoder_depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        x = pad_to_multiple(x, self.stride)
        return crop_to(self.net(x), size)
