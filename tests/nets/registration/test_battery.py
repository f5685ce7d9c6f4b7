"""One battery for every registered registration network (and an example network that is not
shipped, to show that a new network is one class plus one parametrisation).

Each network provides a tiny configuration (``tiny_arguments``); every test here runs over the
whole registry: output shapes for odd 2D/3D sizes, the all-zero network is the identity, every
parameter gets a gradient, the captured config rebuilds it, a model folder round trip gives the
same outputs, and ``torch.jit.trace`` matches eager execution. Outputs are compared in eval mode
(a probabilistic network samples its latent flows while training).
"""

import json
import math
import warnings

import pytest
import torch
from torch import nn

from jointreg.losses import mse
from jointreg.nets.registration import (
    REGISTRATION_NETS,
    Prediction,
    RegistrationNet,
    RegistrationOutput,
    create_registration_net,
    register,
)
from jointreg.nets.registration.registry import unregister
from jointreg.spatial import warp

ODD_SIZES = {2: (37, 50), 3: (13, 18, 11)}
EXAMPLE = "example-affine"


class AffineOnly(RegistrationNet):
    """An example network: a global affine transform from a small encoder.

    The matrix ``A = I + Δ`` and translation ``t`` (voxels) act about the grid centre; the dense
    displacement is ``(A − I)(p − c) + t``. ``Δ, t`` come from a zero-initialised linear layer,
    so the fresh network is the identity. The matrix travels in the output's extras and an L1
    pull towards the identity is a named penalty.
    """

    penalty_weights = {"affine_identity": 0.1}

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, features: int = 8):
        super().__init__(spatial_dims, in_channels)
        dims = spatial_dims
        conv = getattr(nn, f"Conv{dims}d")
        self.encode = nn.Sequential(
            conv(2 * in_channels, features, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            conv(features, features, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        )
        self.theta = nn.Linear(features, dims * (dims + 1))
        nn.init.zeros_(self.theta.weight)
        nn.init.zeros_(self.theta.bias)

    @classmethod
    def tiny_arguments(cls):
        return {"features": 4}

    def predict(self, moving, fixed):
        dims = self.spatial_dims
        code = self.encode(torch.cat([moving, fixed], 1)).flatten(2).mean(2)
        theta = self.theta(code).view(-1, dims, dims + 1)
        delta, shift = theta[:, :, :dims], theta[:, :, dims]
        size = moving.shape[2:]
        axes = [torch.arange(n, dtype=moving.dtype, device=moving.device) - (n - 1) / 2 for n in size]
        points = torch.stack(torch.meshgrid(*axes, indexing="ij"))  # (D, *S), centred voxels
        field = torch.einsum("bij,j...->bi...", delta, points) + shift.view(-1, dims, *([1] * dims))
        matrix = torch.eye(dims, dtype=theta.dtype, device=theta.device) + delta
        return Prediction(field, extras={"affine": matrix, "translation": shift},
                          penalties={"affine_identity": theta.abs().mean()})


@pytest.fixture(autouse=True)
def example_network():
    register(EXAMPLE, description="example: affine only (tests)")(AffineOnly)
    yield
    unregister(EXAMPLE)


NAMES = sorted({*REGISTRATION_NETS, EXAMPLE})


def tiny(name, dims=2):
    entry = REGISTRATION_NETS[name]
    return create_registration_net(name, spatial_dims=dims, **entry.tiny_arguments())


def _visible(net, std=0.3):
    """Make every parameter non-trivial, so that fields are far from zero."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    return net


def test_the_shipped_networks_and_the_example_are_in_the_battery():
    assert {"fmirnet", "fmirnet-1", "fmirnet-2", "fmirnet-diff", "voxelmorph", "voxelmorph-diff", "identity",
            "tvf", "tvf-lddmm", "affine-deformable", "deformable-gradients", "affine", "pmrnet", "pmrnet-diff",
            EXAMPLE} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dims", [2, 3])
def test_output_shapes_for_odd_sizes(name, dims):
    torch.manual_seed(0)
    net = tiny(name, dims)
    size = ODD_SIZES[dims]
    moving, fixed = torch.rand(2, 1, *size), torch.rand(2, 1, *size)
    with torch.no_grad():
        out = net(moving, fixed)
    assert isinstance(out, RegistrationOutput)
    assert out.warped.shape == (2, 1, *size) and out.warped.dtype == torch.float32
    assert out.flow.shape == (2, dims, *size) and out.flow.dtype == torch.float32
    for k, f in enumerate(out.flows):
        assert tuple(f.shape) == (2, dims, *[math.ceil(n / 2**k) for n in size])
    for name_, value in out.extras.items():
        if name_ in ("velocity", "attention", "regularized", "deformable", "spatial_gradients", "inverse"):
            assert value.shape == out.flow.shape, name_
        for tensor in (value if isinstance(value, tuple) else (value,)):
            if isinstance(tensor, torch.Tensor) and tensor.dim() == dims + 2:  # a spatial map: cropped
                factor = 2 ** round(math.log2(size[0] / tensor.shape[2])) if tensor.shape[2] else 1
                assert tuple(tensor.shape[2:]) == tuple(math.ceil(n / factor) for n in size), name_
    for penalty in out.penalties.values():
        assert penalty.dim() == 0 and torch.isfinite(penalty)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dims", [2, 3])
def test_a_network_with_all_parameters_zero_is_the_identity(name, dims):
    net = tiny(name, dims).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        moving = torch.rand(1, 1, *ODD_SIZES[dims])
        out = net(moving, torch.rand_like(moving))
    assert torch.equal(out.flow, torch.zeros_like(out.flow))
    assert torch.allclose(out.warped, moving, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_a_fresh_network_starts_near_the_identity(name):
    torch.manual_seed(0)
    net = create_registration_net(name, **REGISTRATION_NETS[name].tiny_arguments()).eval()
    moving = torch.rand(1, 1, 24, 20)
    with torch.no_grad():
        out = net(moving, torch.rand_like(moving))
    assert out.flow.abs().max() < 1e-2
    assert torch.equal(warp(moving, out.flow), out.warped)


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_gradient(name):
    net = tiny(name)
    out = net(torch.rand(2, 1, 16, 20), torch.rand(2, 1, 16, 20))
    if not any(True for _ in net.parameters()):  # the identity: nothing to train, nothing to track
        assert not out.flow.requires_grad and not type(net).trainable
        return
    loss = mse(out.warped, torch.rand(2, 1, 16, 20)) + out.flow.abs().mean() + sum(out.penalties.values())
    loss.backward()
    assert not [n for n, p in net.named_parameters() if p.grad is None]


@pytest.mark.parametrize("name", NAMES)
def test_captured_config_rebuilds_the_same_network(name):
    net = _visible(tiny(name)).eval()
    config = json.loads(json.dumps(net.config))  # JSON-serialisable
    rebuilt = create_registration_net(name, **config).eval()
    rebuilt.load_state_dict(net.state_dict())
    assert type(rebuilt) is type(net) and rebuilt.config == net.config
    assert not any("grid" in k for k in net.state_dict())  # the warp grid is never saved
    moving, fixed = torch.rand(1, 1, 20, 24), torch.rand(1, 1, 20, 24)
    with torch.no_grad():
        assert torch.equal(net(moving, fixed).flow, rebuilt(moving, fixed).flow)


@pytest.mark.parametrize("name", NAMES)
def test_model_folder_round_trip_gives_the_same_outputs(name, tmp_path):
    from jointreg.export.model_folder import load_model_folder, save_model_folder

    net = _visible(tiny(name)).eval()
    save_model_folder(tmp_path / "model", net, kind="registration", architecture=name)
    loaded = load_model_folder(tmp_path / "model", kind="registration").model
    moving, fixed = torch.rand(2, 1, 20, 24), torch.rand(2, 1, 20, 24)
    with torch.no_grad():
        a, b = net(moving, fixed), loaded(moving, fixed)
    assert torch.equal(a.flow, b.flow) and torch.equal(a.warped, b.warped)


class _Tensors(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, moving, fixed):
        return self.net(moving, fixed).as_tuple()


@pytest.mark.parametrize("name", NAMES)
def test_torch_jit_trace_matches_eager(name):
    net = _visible(tiny(name), std=0.1).eval()
    module = _Tensors(net)
    moving, fixed = torch.rand(2, 1, 37, 50), torch.rand(2, 1, 37, 50)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, (moving, fixed))
        expected, got = module(moving, fixed), traced(moving, fixed)
    if sum(p.numel() for p in net.parameters()):
        assert expected[1].abs().max() > 0.05  # a real field, not the identity
    for a, b in zip(expected, got):
        assert torch.allclose(a, b, atol=1e-5)


def test_the_example_affine_network_reports_its_matrix_and_penalty():
    net = tiny(EXAMPLE)
    with torch.no_grad():
        net.theta.bias.copy_(torch.tensor([0.1, 0.0, 2.0, 0.0, 0.0, -1.0]))
        out = net(torch.rand(1, 1, 21, 31), torch.rand(1, 1, 21, 31))
    assert torch.allclose(out.extras["affine"], torch.tensor([[[1.1, 0.0], [0.0, 1.0]]]))
    assert torch.allclose(out.extras["translation"], torch.tensor([[2.0, -1.0]]))
    # rows: 0.1·(row − 10) + 2 along axis 0 (centre 10), −1 along axis 1
    assert torch.allclose(out.flow[0, 0, :, 0], 0.1 * (torch.arange(21.0) - 10) + 2, atol=1e-5)
    assert torch.allclose(out.flow[0, 1], torch.full((21, 31), -1.0))
    assert torch.isclose(out.penalties["affine_identity"], torch.tensor(3.1 / 6))
