"""Dimension-agnostic building blocks: one code path for 2D and 3D networks.

Every factory takes ``spatial_dims`` (2 or 3) and picks ``Conv2d``/``Conv3d``,
``MaxPool2d``/``MaxPool3d``, ``bilinear``/``trilinear`` and so on, so that a network is written
once. Tensors are ``(B, C, *spatial)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = ("leakyrelu", "relu", "prelu", "elu", "gelu", "identity")
NORMS = (None, "batch", "instance", "group")


def _check_dims(spatial_dims: int) -> None:
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f"spatial_dims must be 1, 2 or 3; got {spatial_dims!r}")


def conv(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    bias: bool = True,
) -> nn.Module:
    """``ConvNd`` with "same" padding (``kernel_size // 2``); stride 2 halves each spatial size
    (rounding up)."""
    _check_dims(spatial_dims)
    cls = getattr(nn, f"Conv{spatial_dims}d")
    return cls(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias)


def pool(spatial_dims: int, kind: str = "max", kernel_size: int = 2) -> nn.Module:
    """``MaxPoolNd`` / ``AvgPoolNd`` with stride = kernel size."""
    _check_dims(spatial_dims)
    if kind not in ("max", "avg"):
        raise ValueError(f"pool kind must be 'max' or 'avg'; got {kind!r}")
    cls = getattr(nn, f"{'Max' if kind == 'max' else 'Avg'}Pool{spatial_dims}d")
    return cls(kernel_size)


def norm(spatial_dims: int, kind: str | None, channels: int) -> nn.Module:
    """Normalisation layer: ``None`` (identity), ``"batch"``, ``"instance"`` (affine) or
    ``"group"`` (8 groups, or fewer when ``channels`` is not divisible)."""
    _check_dims(spatial_dims)
    if kind is None:
        return nn.Identity()
    if kind == "batch":
        return getattr(nn, f"BatchNorm{spatial_dims}d")(channels)
    if kind == "instance":
        return getattr(nn, f"InstanceNorm{spatial_dims}d")(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    raise ValueError(f"norm must be one of {NORMS}; got {kind!r}")


def activation(kind: str = "leakyrelu") -> nn.Module:
    """``"leakyrelu"`` (slope 0.2, as VoxelMorph), ``"relu"``, ``"prelu"``, ``"elu"``, ``"gelu"``
    or ``"identity"``."""
    factories = {
        "leakyrelu": lambda: nn.LeakyReLU(0.2),
        "relu": nn.ReLU,
        "prelu": nn.PReLU,
        "elu": nn.ELU,
        "gelu": nn.GELU,
        "identity": nn.Identity,
    }
    if kind not in factories:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {kind!r}")
    return factories[kind]()


class ConvBlock(nn.Sequential):
    """conv → norm → activation."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int = 3,
        stride: int = 1,
        norm: str | None = None,
        act: str = "leakyrelu",
    ):
        super().__init__(
            conv(spatial_dims, in_channels, out_channels, kernel_size, stride, bias=norm is None),
            _norm(spatial_dims, norm, out_channels),
            activation(act),
        )


_norm = norm  # ConvBlock's keyword argument shadows the factory's name


class ResidualBlock(nn.Module):
    """Two 3×3 convolutions with an identity (or 1×1 projection) shortcut, He et al. style:
    ``act(norm(conv(act(norm(conv(x))))) + shortcut(x))``. With ``stride=2`` the first
    convolution and the projection downsample."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        norm: str | None = None,
        act: str = "leakyrelu",
    ):
        super().__init__()
        self.conv1 = ConvBlock(spatial_dims, in_channels, out_channels, stride=stride, norm=norm, act=act)
        self.conv2 = conv(spatial_dims, out_channels, out_channels, bias=norm is None)
        self.norm2 = _norm(spatial_dims, norm, out_channels)
        if in_channels == out_channels and stride == 1:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = conv(spatial_dims, in_channels, out_channels, kernel_size=1, stride=stride)
        self.act = activation(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm2(self.conv2(self.conv1(x))) + self.shortcut(x))


class Upsample(nn.Module):
    """Upsampling by an integer factor: ``"nearest"`` or ``"linear"`` (bi/trilinear,
    ``align_corners=False``)."""

    def __init__(self, spatial_dims: int, scale_factor: int = 2, mode: str = "nearest"):
        super().__init__()
        _check_dims(spatial_dims)
        if mode not in ("nearest", "linear"):
            raise ValueError(f"upsample mode must be 'nearest' or 'linear'; got {mode!r}")
        self.scale_factor = scale_factor
        self.mode = mode if mode == "nearest" else ("linear", "bilinear", "trilinear")[spatial_dims - 1]

    def forward(self, x: Tensor) -> Tensor:
        align = None if self.mode == "nearest" else False
        return F.interpolate(x, scale_factor=self.scale_factor, mode=self.mode, align_corners=align)

    def extra_repr(self) -> str:
        return f"scale_factor={self.scale_factor}, mode={self.mode!r}"


def flow_head(spatial_dims: int, in_channels: int, init_std: float = 1e-5) -> nn.Module:
    """3×3 convolution to a ``spatial_dims``-channel displacement field, initialised
    ``N(0, init_std)`` with zero bias so that a fresh network predicts (nearly) the identity."""
    layer = conv(spatial_dims, in_channels, spatial_dims, kernel_size=3)
    nn.init.normal_(layer.weight, mean=0.0, std=init_std)
    nn.init.zeros_(layer.bias)
    return layer


class EncoderDecoder(nn.Module):
    """A plain UNet trunk: one conv block per level (max pooling between levels), then back up
    with nearest upsampling and skip concatenation, one conv block per level.

    ``forward(x)`` returns ``(full, deepest)``: the full-resolution features (``features[0]``
    channels; ``None`` with ``decode=False``) and the deepest level's (``features[-1]``).
    Every spatial size must be a multiple of ``2 ** (len(features) - 1)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, features: Sequence[int], *,
                 norm: str | None = None, decode: bool = True):
        super().__init__()
        features = [int(f) for f in features]
        self.encode = nn.ModuleList()
        previous = in_channels
        for f in features:
            self.encode.append(ConvBlock(spatial_dims, previous, f, norm=norm))
            previous = f
        self.down = pool(spatial_dims, "max", 2)
        self.up = Upsample(spatial_dims, 2, "nearest")
        self.decode = nn.ModuleList(
            ConvBlock(spatial_dims, features[k + 1] + features[k], features[k], norm=norm)
            for k in range(len(features) - 1)
        ) if decode else None

    def forward(self, x: Tensor) -> tuple[Tensor | None, Tensor]:
        skips = []
        for k, block in enumerate(self.encode):
            x = block(x if k == 0 else self.down(x))
            skips.append(x)
        deepest = x
        if self.decode is None:
            return None, deepest
        for k in range(len(self.decode) - 1, -1, -1):
            x = self.decode[k](torch.cat([self.up(x), skips[k]], dim=1))
        return x, deepest


def pad_to_multiple(x: Tensor, multiple: int, mode: str = "replicate") -> Tensor:
    """Pad the END of every spatial axis so that its size is a multiple of ``multiple``.

    The one padding rule of every network (registration and segmentation): padding only at the
    end keeps voxel ``0`` at the origin at every pyramid level, so a crop ``[:n]``
    (``[:ceil(n / 2**k)]`` at level ``k``) undoes it exactly; and the edge values are repeated,
    because a zero border is an edge the image does not have (after normalisation 0 is the
    darkest tissue, or air) that convolutions near the border would respond to. The segmentors
    used to zero-pad; both rules give the same result wherever no padding is needed, which is
    the case for every training size that is a multiple of the network's stride.

    Args:
        x: ``(B, C, *S)``.
        multiple: e.g. ``2 ** number_of_downsamplings``.
        mode: ``F.pad`` mode (``"replicate"`` avoids artificial edges; ``"constant"`` pads 0).

    Returns:
        ``(B, C, *S')`` with ``S'_d = ceil(S_d / multiple) * multiple`` (``x`` itself when no
        padding is needed).
    """
    size = [int(n) for n in x.shape[2:]]
    extra = [(-n) % multiple for n in size]
    if not any(extra):
        return x
    pads: list[int] = []
    for e in reversed(extra):  # F.pad lists the last axis first
        pads += [0, e]
    return F.pad(x, pads, mode=mode)


def crop_to(x: Tensor, size: tuple[int, ...] | list[int]) -> Tensor:
    """Keep the first ``size[d]`` voxels of every spatial axis (undoes :func:`pad_to_multiple`)."""
    if [int(n) for n in x.shape[2:]] == [int(n) for n in size]:
        return x
    return x[(slice(None), slice(None), *(slice(0, int(n)) for n in size))]
