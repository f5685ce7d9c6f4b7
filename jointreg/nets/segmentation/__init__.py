"""Segmentors: a light FCN-8s and any segmentation-models-pytorch architecture, by name.

>>> net = create_segmentor("unet", encoder_name="resnet18", in_channels=1, classes=3)  # doctest: +SKIP
>>> net = create_segmentor("fcn", in_channels=1, classes=3)                             # doctest: +SKIP

Every segmentor maps ``(B, in_channels, H, W)`` to logits ``(B, classes, H, W)`` for any H, W
(inputs are padded internally to what the architecture needs and cropped back), and has a
``config`` dict that rebuilds it. Encoders start from scratch (no downloaded weights).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jointreg.errors import ConfigError

# smp architecture names (smp.create_model accepts them case-insensitively).
SMP_ARCHITECTURES = (
    "unet", "unetplusplus", "manet", "linknet", "fpn", "pspnet", "deeplabv3", "deeplabv3plus",
    "pan", "upernet", "segformer",
)
SEGMENTORS = ("fcn", *SMP_ARCHITECTURES)


def segmentor_arguments(name: str, arguments: Mapping[str, Any], where: str | None = None) -> str:
    """Check the constructor arguments of segmentor ``name`` without building it (a recipe is
    checked with this when it is loaded); returns the canonical name (``fcn`` or the smp one).

    Valid names: :class:`~jointreg.nets.segmentation.fcn.FCN`'s parameters, or for smp models
    :class:`~jointreg.nets.segmentation.smp_models.SMPSegmentor`'s and the smp model class's
    (``decoder_channels``, ``decoder_attention_type``, ...; not ``encoder_weights``: encoders
    start from scratch). smp passes any other keyword to the encoder, which ignores what it
    does not know, so without this check a typo would be dropped silently.

    Raises:
        ConfigError: unknown name or argument (listing the valid ones), a value no setting could
            have (NaN, infinite, absurdly large).
    """
    from jointreg.nets.arguments import check_names, check_values

    key = str(name).lower().replace("_", "").replace("-", "")
    if key not in SEGMENTORS:
        raise ConfigError(f"unknown segmentor '{name}'; valid names: {', '.join(SEGMENTORS)}")
    label = where or f"segmentor {name}"
    check_names(arguments, _valid_arguments(key), label)
    check_values(arguments, label)
    return key


def _valid_arguments(key: str) -> list[str]:
    from jointreg.nets.arguments import named_parameters

    if key == "fcn":
        from jointreg.nets.segmentation.fcn import FCN

        return named_parameters(FCN)
    from jointreg._compat import import_smp
    from jointreg.nets.segmentation.smp_models import SMPSegmentor

    model_class = import_smp().MODEL_ARCHITECTURES_MAPPING[key]
    names = named_parameters(SMPSegmentor) + named_parameters(model_class, exclude=("encoder_weights",))
    return list(dict.fromkeys(names))


def create_segmentor(name: str, **kwargs: Any):
    """Build a segmentor by registry name.

    Args:
        name: ``fcn`` or an smp architecture (``unet``, ``unetplusplus``, ``fpn``, ...).
        **kwargs: constructor arguments: ``in_channels``, ``classes`` and, for smp models,
            ``encoder_name`` (any smp/timm encoder, default ``resnet18``) and smp options.

    Raises:
        ConfigError: as :func:`segmentor_arguments`, unusable arguments, or arguments that would
            build more than :data:`jointreg.nets.arguments.MAX_PARAMETERS` parameters (counted
            before anything is allocated).
    """
    from jointreg.nets.arguments import build_bounded

    key = segmentor_arguments(name, kwargs)
    if key == "fcn":
        from jointreg.nets.segmentation.fcn import FCN

        def build():
            return FCN(**kwargs)
    else:
        from jointreg.nets.segmentation.smp_models import SMPSegmentor

        given = kwargs.pop("architecture", key)
        if str(given).lower() != key:
            raise ConfigError(f"segmentor '{name}' was given architecture={given!r}")

        def build():
            return SMPSegmentor(architecture=key, **kwargs)
    try:
        return build_bounded(build, kwargs, f"segmentor {name}")
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"segmentor {name}: {exc}") from None


__all__ = ["SEGMENTORS", "SMP_ARCHITECTURES", "create_segmentor", "segmentor_arguments"]
