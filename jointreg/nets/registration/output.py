"""What every registration network returns, and what its ``predict`` hands to the base class."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class Prediction:
    """The raw output of a network's ``predict`` on the padded grid.

    Attributes:
        field: ``(B, D, *P)`` the field the integration strategy turns into the displacement.
        fields: other spatial maps (a tensor or a tuple of tensors, each at ``P`` or at a
            coarser level ``P / 2**k``); the base class crops each back to the input size at its
            own resolution. E.g. ``flows`` (per-scale fields), ``attention``, ``regularized``.
        extras: non-spatial outputs passed through unchanged (e.g. an affine matrix).
        penalties: named scalar penalties the network adds to the registration loss; their
            weights come from the recipe (``registration.penalties``) or the network's defaults.
    """

    field: Tensor
    fields: dict[str, Tensor | tuple[Tensor, ...]] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    penalties: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class RegistrationOutput:
    """What a registration network returns, in every mode.

    Attributes:
        warped: ``(B, C, *S)`` the moving image warped onto the fixed one.
        flow: ``(B, D, *S)`` the final displacement in voxels (channel ``d`` along spatial axis
            ``d``), pull convention: ``warped(p) = moving(p + flow(p))``. Use it to warp labels
            (:func:`jointreg.spatial.warp_labels`) or other images of the moving space.
        extras: optional outputs by name, cropped to the input size: ``flows`` (per-scale
            fields before fusion, finest first, ``flows[k]`` of size ``ceil(S / 2**k)`` in its
            own voxels), ``velocity`` (the stationary velocity that was integrated into
            ``flow``), ``attention`` (FMIRNet's fusion weights in ``(0, 1)``), ``regularized``
            (the field the smoothness prior applies to, when it is not ``flow``), or anything
            a network adds (an affine matrix, velocities per time step, ...).
        penalties: named scalar penalties to add to the loss (see :class:`Prediction`).
    """

    warped: Tensor
    flow: Tensor
    extras: dict[str, Any] = field(default_factory=dict)
    penalties: dict[str, Tensor] = field(default_factory=dict)

    @property
    def flows(self) -> tuple[Tensor, ...]:
        """Per-scale fields, finest first (a 1-tuple ``(flow,)`` when the network has none)."""
        return tuple(self.extras.get("flows", (self.flow,)))

    @property
    def velocity(self) -> Tensor | None:
        return self.extras.get("velocity")

    @property
    def attention(self) -> Tensor | None:
        return self.extras.get("attention")

    @property
    def regularized(self) -> Tensor:
        """The field the smoothness prior applies to (``flow`` unless the network says otherwise)."""
        return self.extras.get("regularized", self.flow)

    def as_tuple(self) -> tuple[Tensor, Tensor]:
        """``(warped, flow)``: the tensors-only form ``torch.jit.trace`` and ONNX export need."""
        return self.warped, self.flow
