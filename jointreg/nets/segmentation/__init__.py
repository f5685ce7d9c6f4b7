"""Segmentors: a light FCN-8s and any segmentation-models-pytorch architecture, by name.

>>> net = create_segmentor("unet", encoder_name="resnet18", in_channels=1, classes=3)  # doctest: +SKIP
>>> net = create_segmentor("fcn", in_channels=1, classes=3)                             # doctest: +SKIP

Every segmentor maps ``(B, in_channels, H, W)`` to logits ``(B, classes, H, W)`` for any H, W
(inputs are padded internally to what the architecture needs and cropped back), and has a
``config`` dict that rebuilds it. Encoders start from scratch (no downloaded weights).
"""

from __future__ import annotations

from typing import Any

from jointreg.errors import ConfigError

# smp architecture names (smp.create_model accepts them case-insensitively).
SMP_ARCHITECTURES = (
    "unet", "unetplusplus", "manet", "linknet", "fpn", "pspnet", "deeplabv3", "deeplabv3plus",
    "pan", "upernet", "segformer",
)
SEGMENTORS = ("fcn", *SMP_ARCHITECTURES)


def create_segmentor(name: str, **kwargs: Any):
    """Build a segmentor by registry name.

    Args:
        name: ``fcn`` or an smp architecture (``unet``, ``unetplusplus``, ``fpn``, ...).
        **kwargs: constructor arguments: ``in_channels``, ``classes`` and, for smp models,
            ``encoder_name`` (any smp/timm encoder, default ``resnet18``) and smp options.

    Raises:
        ConfigError: unknown name (listing the valid ones) or unusable arguments.
    """
    key = str(name).lower().replace("_", "").replace("-", "")
    if key == "fcn":
        from jointreg.nets.segmentation.fcn import FCN

        return FCN(**kwargs)
    if key in SMP_ARCHITECTURES:
        from jointreg.nets.segmentation.smp_models import SMPSegmentor

        given = kwargs.pop("architecture", key)
        if str(given).lower() != key:
            raise ConfigError(f"segmentor '{name}' was given architecture={given!r}")
        return SMPSegmentor(architecture=key, **kwargs)
    raise ConfigError(f"unknown segmentor '{name}'; valid names: {', '.join(SEGMENTORS)}")


__all__ = ["SEGMENTORS", "SMP_ARCHITECTURES", "create_segmentor"]
