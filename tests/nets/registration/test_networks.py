"""What the shipped networks do beyond the shared battery (test_battery.py): FMIRNet's scales and
attention, velocity integration, the registry's errors, and a short optimisation that must
improve a synthetic registration."""

import math

import pytest
import torch

from jointreg.errors import ConfigError
from jointreg.losses import diffusion, mse
from jointreg.metrics.registration import folding_percent
from jointreg.nets.registration import REGISTRATION_NETS, Prediction, RegistrationOutput, create_registration_net
from jointreg.spatial import warp, warp_labels

NAMES = sorted(n for n in REGISTRATION_NETS if n.startswith(("fmirnet", "voxelmorph")))
ODD_SIZES = {2: (97, 130), 3: (20, 24, 18)}
SMALL = {"fmirnet": {"features": [4, 8, 8]}, "voxelmorph": {"enc": [4, 8, 8], "dec": [8, 8, 8, 4]}}


def _visible_field(net, std=0.5):
    """Scale up the flow heads' near-zero initial weights so that the field is not ~0."""
    heads = net.heads if hasattr(net, "heads") else [net.head]
    for head in heads:
        torch.nn.init.normal_(head.weight, std=std)


def _small(name, dims=2):
    """A narrow version of the registry entry, for quick tests of behaviour (not speed)."""
    family = "fmirnet" if name.startswith("fmirnet") else "voxelmorph"
    small = {k: v for k, v in SMALL[family].items() if k not in REGISTRATION_NETS[name].preset}  # fmirnet-fast's width
    return create_registration_net(name, spatial_dims=dims, **small)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dims", [2, 3])
def test_extras_of_the_shipped_networks(name, dims):
    torch.manual_seed(0)
    net = _small(name, dims) if dims == 3 else create_registration_net(name, spatial_dims=2)
    size = ODD_SIZES[dims]
    moving, fixed = torch.rand(2, 1, *size), torch.rand(2, 1, *size)
    with torch.no_grad():
        out = net(moving, fixed)
    assert isinstance(out, RegistrationOutput)
    scales = net.config.get("scales", 1)
    assert [tuple(f.shape) for f in out.flows] == [
        (2, dims, *[math.ceil(n / 2**k) for n in size]) for k in range(scales)
    ]
    assert (out.velocity is not None) == net.config["diffeomorphic"]
    if out.velocity is not None:
        assert out.velocity.shape == out.flow.shape
    assert (out.attention is not None) == name.startswith("fmirnet")
    if out.attention is not None:
        assert out.attention.shape == out.flow.shape
        assert ((out.attention > 0) & (out.attention < 1)).all()


def test_scales_change_the_number_of_flows_and_parameters():
    moving = torch.rand(1, 1, 32, 32)
    counts = {}
    for scales, name in [(1, "fmirnet-1"), (2, "fmirnet-2"), (3, "fmirnet")]:
        net = _small(name)
        with torch.no_grad():
            assert len(net(moving, moving).flows) == scales
        counts[scales] = sum(p.numel() for p in net.parameters())
    assert counts[1] < counts[2] < counts[3]  # one more flow head each


@pytest.mark.parametrize("name", ["fmirnet", "voxelmorph-diff"])
def test_batch_items_are_registered_independently(name):
    torch.manual_seed(1)
    net = _small(name).eval()
    _visible_field(net)
    moving, fixed = torch.rand(3, 1, 20, 24), torch.rand(3, 1, 20, 24)
    with torch.no_grad():
        together = net(moving, fixed)
        alone = net(moving[1:2], fixed[1:2])
    assert together.flow.abs().max() > 0.1
    assert torch.allclose(together.flow[1:2], alone.flow, atol=1e-5, rtol=1e-4)
    assert torch.allclose(together.warped[1:2], alone.warped, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["fmirnet-diff", "voxelmorph-diff"])
def test_diffeomorphic_mode_integrates_a_smooth_velocity_without_folding(name, monkeypatch):
    size = (64, 64)
    coords = torch.meshgrid(*[torch.linspace(0, 2 * math.pi, n) for n in size], indexing="ij")
    velocity = torch.stack([12 * torch.sin(coords[0] + 0.3), 12 * torch.cos(coords[1] * 1.5)]).unsqueeze(0)
    assert folding_percent(velocity) > 40  # as a displacement it folds almost half the grid
    net = _small(name)
    monkeypatch.setattr(net, "predict", lambda m, f: Prediction(velocity))
    with torch.no_grad():
        out = net(torch.rand(1, 1, *size), torch.rand(1, 1, *size))
    assert torch.equal(out.velocity, velocity)
    assert float(folding_percent(out.flow)) == 0.0
    assert (out.flow - velocity).abs().max() > 0.5  # integration changed the field


def test_registry_errors_are_helpful():
    with pytest.raises(ConfigError, match="fmirnet, fmirnet-1.*voxelmorph-diff"):
        create_registration_net("transmorph")
    with pytest.raises(ConfigError, match="fixes scales=1"):
        create_registration_net("fmirnet-1", scales=3)
    assert create_registration_net("fmirnet-1", scales=1).scales == 1
    with pytest.raises(ConfigError, match="unknown argument.*depth"):
        create_registration_net("fmirnet", depth=4)
    with pytest.raises(ConfigError, match="at least 3 levels"):
        create_registration_net("fmirnet", features=[8, 16])
    with pytest.raises(ConfigError, match="spatial_dims"):
        create_registration_net("voxelmorph", spatial_dims=4)


def test_bad_inputs_are_clear_errors():
    net = _small("fmirnet")
    with pytest.raises(ValueError, match="2 spatial dims"):
        net(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match="same shape"):
        net(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9))
    with pytest.raises(ValueError, match="channels"):
        net(torch.rand(1, 2, 8, 8), torch.rand(1, 2, 8, 8))


def _blob_pair(n=64):
    """A blurred ellipse and its copy under a smooth known deformation (2D, n × n)."""
    grid = torch.stack(torch.meshgrid(torch.arange(n * 1.0), torch.arange(n * 1.0), indexing="ij"))
    radius = ((grid[0] - 30) ** 2 / 13**2 + (grid[1] - 33) ** 2 / 10**2).sqrt()
    moving = torch.sigmoid((1 - radius) * 8).view(1, 1, n, n)
    truth = torch.stack([
        3.0 + 1.5 * torch.sin(grid[1] / n * 2 * math.pi),
        -2.5 + 1.5 * torch.cos(grid[0] / n * 2 * math.pi),
    ]).unsqueeze(0)
    mask = (moving > 0.5).long()
    return moving, warp(moving, truth), mask, warp_labels(mask, truth, 2)


def _dice(a, b):
    return float(2 * ((a == 1) & (b == 1)).sum() / ((a == 1).sum() + (b == 1).sum()))


@pytest.mark.parametrize(
    "name",
    ["fmirnet", "fmirnet-1", "voxelmorph",
     pytest.param("fmirnet-diff", marks=pytest.mark.slow), pytest.param("voxelmorph-diff", marks=pytest.mark.slow),
     pytest.param("tvf", marks=pytest.mark.slow), pytest.param("tvf-lddmm", marks=pytest.mark.slow),
     pytest.param("affine-deformable", marks=pytest.mark.slow), pytest.param("pmrnet", marks=pytest.mark.slow)],
)
def test_short_optimisation_improves_a_synthetic_registration(name):
    moving, fixed, mask, fixed_mask = _blob_pair()
    torch.manual_seed(0)
    net = create_registration_net(name)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    with torch.no_grad():
        before = float(mse(net(moving, fixed).warped, fixed))
    for _ in range(60):
        out = net(moving, fixed)
        loss = mse(out.warped, fixed) + 0.01 * diffusion(out.flow)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        out = net(moving, fixed)
    after = float(mse(out.warped, fixed))
    identity_dice = _dice(mask, fixed_mask)
    registered_dice = _dice(warp_labels(mask, out.flow, 2), fixed_mask)
    assert after < before / 5
    assert registered_dice > identity_dice + 0.15  # 0.72 → ~0.95


def test_a_name_cannot_be_claimed_by_two_networks():
    from jointreg.nets.registration import register
    from jointreg.nets.registration.fmirnet import FMIRNet

    class Other(FMIRNet):
        pass

    with pytest.raises(ValueError, match="already taken by FMIRNet"):
        register("fmirnet")(Other)
    assert REGISTRATION_NETS["fmirnet"].cls is FMIRNet


def test_constructor_arguments_are_captured_without_code_in_the_network():
    net = create_registration_net("voxelmorph-diff", enc=(4, 8), dec=(8, 8, 4))
    assert net.config == {
        "spatial_dims": 2, "in_channels": 1, "enc": [4, 8], "dec": [8, 8, 4], "diffeomorphic": True,
        "int_steps": 7, "int_downsize": 2, "flow_init_std": 1e-5,
    }


def test_fmirnet_fast_is_fmirnet_narrowed_where_the_work_is():
    from torch.utils.flop_counter import FlopCounterMode

    moving = torch.rand(1, 1, 64, 64)
    flops, params = {}, {}
    for name in ("fmirnet", "fmirnet-fast"):
        net = create_registration_net(name, spatial_dims=2)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            out = net(moving, moving)
        assert out.flow.shape == (1, 2, 64, 64) and len(out.flows) == 3
        flops[name], params[name] = counter.get_total_flops(), sum(p.numel() for p in net.parameters())
    assert create_registration_net("fmirnet-fast").config["features"] == [8, 16, 32, 48, 64]
    assert 0.4 < flops["fmirnet-fast"] / flops["fmirnet"] < 0.5  # 0.39 / 0.84 GFLOP per 128² pair
    assert params["fmirnet-fast"] > 0.85 * params["fmirnet"]  # the coarse levels, most parameters, kept
