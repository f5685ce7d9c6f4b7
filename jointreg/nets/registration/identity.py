"""The identity "registration": no parameters, the zero field.

The baseline every registration result is read against: with ``registration.architecture:
identity`` a recipe keeps every labelling rule of the warped and propagated groups but moves
nothing (IUNet / IFCN in the studies), and it trains no registration (no warm-up, no
registration steps), so it costs what the segmentor alone costs plus the labelling.
"""

from __future__ import annotations

from torch import Tensor

from jointreg.nets.registration.base import RegistrationNet
from jointreg.nets.registration.output import Prediction
from jointreg.nets.registration.registry import register


@register("identity", description="no registration: the zero field (the baseline to read every result against)")
class Identity(RegistrationNet):
    """Returns the moving image unchanged and a zero displacement (2D or 3D).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of each image.
    """

    trainable = False

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1):
        super().__init__(spatial_dims, in_channels)

    def predict(self, moving: Tensor, fixed: Tensor) -> Prediction:
        return Prediction(moving.new_zeros(moving.shape[0], self.spatial_dims, *moving.shape[2:]))
