import pytest
import torch

from jointreg.errors import ConfigError
from jointreg.nets.segmentation import create_segmentor


@pytest.mark.parametrize("name, kwargs", [("fcn", {}), ("unet", {"encoder_name": "resnet18"})])
@pytest.mark.parametrize("size", [(64, 64), (97, 130)])
def test_any_input_size_gives_logits_of_the_same_size(name, kwargs, size):
    net = create_segmentor(name, in_channels=1, classes=4, **kwargs).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, *size))
    assert out.shape == (2, 4, *size)
    assert out.dtype == torch.float32


def test_config_rebuilds_the_same_architecture():
    for name, kwargs in [("fcn", {"features": [8, 16, 16, 32, 32]}), ("fpn", {"encoder_name": "resnet18"})]:
        net = create_segmentor(name, in_channels=1, classes=3, **kwargs)
        again = create_segmentor(name, **net.config)
        assert type(again) is type(net)
        assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}


def test_unknown_segmentor_lists_valid_names():
    with pytest.raises(ConfigError, match="unknown segmentor 'unett'; valid names: fcn, unet"):
        create_segmentor("unett")


def test_unknown_encoder_is_a_config_error():
    with pytest.raises(ConfigError, match="segmentor unet/resnet9000"):
        create_segmentor("unet", encoder_name="resnet9000", classes=2)


def test_fcn_learns_to_segment_bright_squares():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = create_segmentor("fcn", in_channels=1, classes=2, features=[8, 16, 16, 32, 32], head_channels=32, dropout=0.0)
    x = torch.rand(8, 1, 64, 64, generator=g) * 0.2
    for i in range(8):
        r, c = torch.randint(8, 40, (2,), generator=g).tolist()
        x[i, :, r:r + 16, c:c + 16] += 0.8
    y = (x[:, 0] > 0.5).long()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(80):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        pred = net(x).argmax(1)
    dice = 2 * ((pred == 1) & (y == 1)).sum() / ((pred == 1).sum() + (y == 1).sum())
    assert dice.item() > 0.8


@pytest.mark.parametrize("name, kwargs", [("fcn", {}), ("unet", {"encoder_depth": 3, "decoder_channels": [16, 8, 8]})])
def test_odd_sizes_are_padded_by_repeating_the_edge(name, kwargs):
    """The segmentors follow the networks' one padding rule (nets.blocks.pad_to_multiple)."""
    from jointreg.nets.blocks import pad_to_multiple

    torch.manual_seed(0)
    net = create_segmentor(name, in_channels=1, classes=2, **kwargs).eval()
    x = torch.rand(1, 1, 37, 45)
    h, w = (-(-n // net.stride) * net.stride for n in (37, 45))
    edge = torch.nn.functional.pad(x, (0, w - 45, 0, h - 37), mode="replicate")
    assert edge[0, 0, -1, -1] == x[0, 0, -1, -1]
    assert torch.equal(pad_to_multiple(x, net.stride), edge)
    with torch.no_grad():
        assert torch.allclose(net(x), net(edge)[..., :37, :45], atol=1e-6)
