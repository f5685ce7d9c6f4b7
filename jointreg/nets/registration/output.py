"""The one return type of every registration network."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class RegistrationOutput:
    """What a registration network returns, in every mode.

    Attributes:
        warped: ``(B, C, *S)`` the moving image warped onto the fixed one.
        flow: ``(B, D, *S)`` the final displacement in voxels (channel ``d`` along spatial axis
            ``d``), pull convention: ``warped(p) = moving(p + flow(p))``. Use it to warp labels
            (:func:`jointreg.spatial.warp_labels`) or other images of the moving space.
        flows: per-scale fields before fusion, finest first, each at its own resolution and in
            its own voxels (``flows[k]`` has spatial size ``ceil(S / 2**k)``); a 1-tuple for
            single-scale networks. In diffeomorphic mode these are velocity components.
        velocity: ``(B, D, *S)`` the stationary velocity field that was integrated into
            ``flow`` (diffeomorphic mode), else ``None``.
        attention: ``(B, D, *S)`` spatial attention weights in ``(0, 1)`` applied to the fused
            field (FMIRNet), else ``None``.
    """

    warped: Tensor
    flow: Tensor
    flows: tuple[Tensor, ...]
    velocity: Tensor | None = None
    attention: Tensor | None = None

    def as_tuple(self) -> tuple[Tensor, Tensor]:
        """``(warped, flow)``: the tensors-only form ``torch.jit.trace`` and ONNX export need."""
        return self.warped, self.flow
