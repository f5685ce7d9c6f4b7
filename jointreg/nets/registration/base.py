"""What every registration network shares: input checks, padding to the size the network
needs, optional velocity integration, warping, and the :class:`RegistrationOutput`."""

from __future__ import annotations

import math

from torch import Tensor, nn

from jointreg.nets.blocks import crop_to, pad_to_multiple
from jointreg.nets.registration.output import RegistrationOutput
from jointreg.spatial.integrate import IntegrateVelocity
from jointreg.spatial.warp import Warp


class RegistrationNet(nn.Module):
    """Base class: subclasses build their layers and implement :meth:`predict`.

    ``forward(moving, fixed)`` accepts any spatial size: inputs are padded at the end of each
    axis (edge values repeated) to a multiple of :attr:`multiple`, the fields are cropped back,
    and the ORIGINAL moving image is warped. In diffeomorphic mode the full-resolution field is a
    stationary velocity, integrated by scaling and squaring (on the padded grid, so that the
    integration sees the same context as the network).

    Attributes:
        config: constructor keyword arguments (JSON-serialisable); ``type(m)(**m.config)``
            rebuilds the architecture.
        spatial_dims: 2 or 3.
        in_channels: channels of each of the moving and fixed images.
        multiple: every padded spatial size is a multiple of this.
    """

    config: dict
    multiple: int = 1

    def __init__(self, spatial_dims: int, in_channels: int, diffeomorphic: bool, int_steps: int, int_downsize: int):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3; got {spatial_dims!r}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1; got {in_channels!r}")
        self.spatial_dims = int(spatial_dims)
        self.in_channels = int(in_channels)
        self.diffeomorphic = bool(diffeomorphic)
        self.integrate = IntegrateVelocity(int_steps, int_downsize) if diffeomorphic else None
        self.transformer = Warp(mode="bilinear", padding_mode="border")

    def predict(self, moving: Tensor, fixed: Tensor) -> tuple[Tensor, tuple[Tensor, ...], Tensor | None]:
        """The network proper, on padded inputs.

        Args:
            moving, fixed: ``(B, C, *S)`` with every size a multiple of :attr:`multiple`.

        Returns:
            ``(field, per_scale, attention)``: the full-resolution field ``(B, D, *S)``
            (displacement, or velocity in diffeomorphic mode), the per-scale fields finest first
            (``per_scale[k]`` at ``S / 2**k``), and attention weights ``(B, D, *S)`` or ``None``.
        """
        raise NotImplementedError

    def _check(self, moving: Tensor, fixed: Tensor) -> None:
        want = self.spatial_dims + 2
        for name, x in (("moving", moving), ("fixed", fixed)):
            if x.dim() != want:
                raise ValueError(
                    f"{name} must be (B, C, *S) with {self.spatial_dims} spatial dims for this "
                    f"{self.spatial_dims}D network; got shape {tuple(x.shape)}"
                )
            if x.shape[1] != self.in_channels:
                raise ValueError(f"{name} has {x.shape[1]} channels; the network expects {self.in_channels}")
        if moving.shape != fixed.shape:
            raise ValueError(f"moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} must have the same shape")

    def forward(self, moving: Tensor, fixed: Tensor) -> RegistrationOutput:
        """Register ``moving`` onto ``fixed``.

        Args:
            moving, fixed: ``(B, C, *S)`` images (same shape; any spatial size).

        Returns:
            :class:`RegistrationOutput` with ``warped`` ``(B, C, *S)``, ``flow`` ``(B, D, *S)`` in
            voxels, per-scale ``flows``, ``velocity`` (diffeomorphic mode) and ``attention``.
        """
        self._check(moving, fixed)
        size = [int(n) for n in moving.shape[2:]]
        field, per_scale, attention = self.predict(
            pad_to_multiple(moving, self.multiple), pad_to_multiple(fixed, self.multiple)
        )
        velocity = None
        if self.integrate is not None:
            velocity = crop_to(field, size)
            field = self.integrate(field)
        flow = crop_to(field, size)
        flows = tuple(
            crop_to(f, [math.ceil(n / 2**k) for n in size]) for k, f in enumerate(per_scale)
        )
        if attention is not None:
            attention = crop_to(attention, size)
        warped = self.transformer(moving, flow)
        return RegistrationOutput(warped=warped, flow=flow, flows=flows, velocity=velocity, attention=attention)

    def extra_repr(self) -> str:
        return f"spatial_dims={self.spatial_dims}, in_channels={self.in_channels}, diffeomorphic={self.diffeomorphic}"
