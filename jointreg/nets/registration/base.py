"""What every registration network shares: input checks, padding to the size the network needs,
the integration strategy, warping, and the :class:`RegistrationOutput`.

A network subclasses :class:`RegistrationNet`, builds its layers, implements :meth:`predict` and
registers itself with :func:`jointreg.nets.registration.registry.register` in its own file; its
constructor arguments are captured as ``net.config`` without any code in the network.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor, nn

from jointreg.nets.blocks import crop_to, pad_to_multiple
from jointreg.nets.registration.integration import Displacement, FieldIntegration
from jointreg.nets.registration.output import Prediction, RegistrationOutput
from jointreg.spatial.warp import Warp


def _plain(value: Any) -> Any:
    """JSON-friendly form of a constructor argument (tuples become lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


class RegistrationNet(nn.Module):
    """Base class of every registration network.

    ``forward(moving, fixed)`` accepts any spatial size: inputs are padded at the end of each
    axis (edge values repeated) to a multiple of :attr:`multiple`, :meth:`predict` runs on the
    padded pair, the integration strategy turns its field into the displacement (on the padded
    grid, so that integration sees the same context as the network), every spatial output is
    cropped back, and the ORIGINAL moving image is warped.

    Subclasses call ``super().__init__(spatial_dims, in_channels, integration)`` and may set:

    Attributes:
        config: the constructor's keyword arguments, captured automatically (JSON-serialisable);
            ``type(m)(**m.config)`` rebuilds the architecture.
        spatial_dims: 2 or 3.
        in_channels: channels of each of the moving and fixed images.
        multiple: every padded spatial size is a multiple of this.
        penalty_weights: class attribute, the default weight of each named penalty the network
            emits (the recipe's ``registration.penalties`` overrides them).
        trainable: class attribute; ``False`` for a network that is not trained (the identity):
            training then plans no registration phases.
    """

    config: dict
    multiple: int = 1
    penalty_weights: ClassVar[Mapping[str, float]] = {}
    trainable: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:
            return
        init = cls.__init__
        signature = inspect.signature(init)

        @functools.wraps(init)
        def capturing_init(self, *args: Any, **kw: Any) -> None:
            outermost = not getattr(self, "_capturing", False)
            if outermost:
                object.__setattr__(self, "_capturing", True)
            try:
                init(self, *args, **kw)
            finally:
                if outermost:
                    object.__delattr__(self, "_capturing")
            if outermost:
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                self.config = {k: _plain(v) for k, v in list(bound.arguments.items())[1:]}

        cls.__init__ = capturing_init

    @classmethod
    def tiny_arguments(cls) -> dict[str, Any]:
        """Constructor arguments of a narrow version for tests of behaviour (not accuracy)."""
        return {}

    def __init__(self, spatial_dims: int, in_channels: int, integration: FieldIntegration | None = None):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3; got {spatial_dims!r}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1; got {in_channels!r}")
        self.spatial_dims = int(spatial_dims)
        self.in_channels = int(in_channels)
        self.integration = integration if integration is not None else Displacement()
        self.transformer = Warp(mode="bilinear", padding_mode="border")

    def predict(self, moving: Tensor, fixed: Tensor) -> Prediction:
        """The network proper, on padded inputs.

        Args:
            moving, fixed: ``(B, C, *P)`` with every size a multiple of :attr:`multiple`.

        Returns:
            :class:`Prediction`: the field ``(B, D, *P)`` for the integration strategy, plus
            optional spatial maps, extras and penalties.
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
            voxels, and the network's extras and penalties.
        """
        self._check(moving, fixed)
        size = [int(n) for n in moving.shape[2:]]
        padded = pad_to_multiple(moving, self.multiple), pad_to_multiple(fixed, self.multiple)
        prediction = self.predict(*padded)
        grid = [int(n) for n in prediction.field.shape[2:]]
        extras: dict[str, Any] = {name: _crop_like(value, grid, size) for name, value in prediction.fields.items()}
        extras.update(prediction.extras)
        if self.integration.keeps is not None:
            extras[self.integration.keeps] = crop_to(prediction.field, size)
        flow = crop_to(self.integration(prediction.field), size)
        warped = self.transformer(moving, flow)
        return RegistrationOutput(warped=warped, flow=flow, extras=extras, penalties=dict(prediction.penalties))

    def extra_repr(self) -> str:
        return f"spatial_dims={self.spatial_dims}, in_channels={self.in_channels}"


def _crop_like(value: Tensor | tuple[Tensor, ...], grid: list[int], size: list[int]) -> Tensor | tuple[Tensor, ...]:
    """Crop a spatial map on the padded grid (or a coarser level of it) back to the input size."""
    if isinstance(value, (tuple, list)):
        return tuple(_crop_like(v, grid, size) for v in value)
    shape = [int(n) for n in value.shape[2:]]
    factors = [g // s for g, s in zip(grid, shape)]
    return crop_to(value, [math.ceil(n / f) for n, f in zip(size, factors)])
