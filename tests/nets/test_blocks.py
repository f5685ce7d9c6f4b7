"""Dimension-agnostic building blocks."""

import pytest
import torch
from torch import nn

from jointreg.nets.blocks import (
    ConvBlock,
    ResidualBlock,
    Upsample,
    activation,
    conv,
    crop_to,
    flow_head,
    norm,
    pad_to_multiple,
    pool,
)


@pytest.mark.parametrize("dims", [2, 3])
def test_factories_pick_the_layer_of_the_dimension_and_keep_or_halve_the_size(dims):
    size = (7, 10, 5)[:dims]
    x = torch.randn(2, 3, *size)
    layer = conv(dims, 3, 4)
    assert isinstance(layer, (nn.Conv2d, nn.Conv3d)[dims - 2])
    assert layer(x).shape == (2, 4, *size)
    assert conv(dims, 3, 4, stride=2)(x).shape == (2, 4, *[(n + 1) // 2 for n in size])
    assert isinstance(pool(dims), (nn.MaxPool2d, nn.MaxPool3d)[dims - 2])
    assert isinstance(norm(dims, "batch", 4), (nn.BatchNorm2d, nn.BatchNorm3d)[dims - 2])
    assert isinstance(norm(dims, None, 4), nn.Identity)
    assert Upsample(dims)(x).shape == (2, 3, *[2 * n for n in size])
    assert Upsample(dims, mode="linear")(x).shape == (2, 3, *[2 * n for n in size])


@pytest.mark.parametrize("dims", [2, 3])
def test_residual_block_shapes_and_identity_shortcut(dims):
    x = torch.randn(1, 8, *(6,) * dims)
    same = ResidualBlock(dims, 8, 8)
    assert isinstance(same.shortcut, nn.Identity)
    assert same(x).shape == x.shape
    wider = ResidualBlock(dims, 8, 12, stride=2, norm="instance")
    assert wider(x).shape == (1, 12, *(3,) * dims)
    # With the residual branch's last conv zeroed, the block is act(x): LeakyReLU of the input.
    nn.init.zeros_(same.conv2.weight)
    nn.init.zeros_(same.conv2.bias)
    assert torch.allclose(same(x), nn.functional.leaky_relu(x, 0.2))


def test_conv_block_and_activation_names():
    block = ConvBlock(2, 2, 4, norm="group", act="relu")
    assert [type(m) for m in block] == [nn.Conv2d, nn.GroupNorm, nn.ReLU]
    assert block[0].bias is None  # a norm follows
    assert isinstance(activation("leakyrelu"), nn.LeakyReLU) and activation("leakyrelu").negative_slope == 0.2
    with pytest.raises(ValueError, match="leakyrelu"):
        activation("swish")
    with pytest.raises(ValueError, match="spatial_dims"):
        conv(4, 1, 1)


def test_flow_head_starts_near_zero():
    head = flow_head(3, 16, init_std=1e-5)
    assert head.out_channels == 3
    assert torch.equal(head.bias, torch.zeros(3))
    assert head.weight.abs().max() < 1e-4


def test_pad_to_multiple_and_crop_round_trip():
    x = torch.arange(2 * 5 * 7, dtype=torch.float32).reshape(1, 2, 5, 7)
    padded = pad_to_multiple(x, 4)
    assert padded.shape == (1, 2, 8, 8)
    assert torch.equal(padded[..., :5, :7], x)
    assert torch.equal(padded[..., 7, :7], x[..., 4, :])  # replicated edge at the end only
    assert torch.equal(crop_to(padded, (5, 7)), x)
    assert pad_to_multiple(x, 1) is x

