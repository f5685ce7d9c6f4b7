"""The coupled affine + deformable network: integration of spatial gradients, the affine map and
its matrix, and recovery of a known rotation + scale."""

import math

import pytest
import torch

from jointreg.losses import mse
from jointreg.nets.registration import create_registration_net
from jointreg.nets.registration.affine_deformable import integrate_gradients
from jointreg.spatial import warp


def test_unit_spacing_is_the_identity_and_other_spacings_integrate_exactly():
    ones = torch.ones(1, 2, 4, 5)
    assert torch.equal(integrate_gradients(ones), torch.zeros(1, 2, 4, 5))
    half = ones.clone()
    half[:, 1] = 0.5  # sampling points 0.5 apart along axis 1, starting at -0.5
    flow = integrate_gradients(half)
    assert torch.allclose(flow[0, 1, 2], torch.tensor([-0.5, -1.0, -1.5, -2.0, -2.5]))
    assert torch.equal(flow[:, 0], torch.zeros(1, 4, 5))


@pytest.mark.parametrize("dims", [2, 3])
def test_sampling_coordinates_never_cross_along_an_axis(dims):
    torch.manual_seed(0)
    net = create_registration_net("deformable-gradients", spatial_dims=dims, features=[4, 8])
    with torch.no_grad():
        torch.nn.init.normal_(net.gradients.weight, std=3.0)  # wild, far-from-identity spacings
        size = (24, 20) if dims == 2 else (10, 12, 8)
        out = net(torch.rand(2, 1, *size), torch.rand(2, 1, *size))
    spacing = out.extras["spatial_gradients"]
    assert spacing.min() > 0 and spacing.max() < 2 and (spacing - 1).abs().max() > 0.5
    for d in range(dims):
        coordinate = out.flow[:, d] + torch.arange(size[d], dtype=torch.float32).view(*([-1] + [1] * (dims - 1 - d)))
        assert (coordinate.diff(dim=1 + d) > 0).all()
    assert torch.equal(out.extras["regularized"], out.flow)  # no affine part here


def test_the_affine_matrix_describes_the_flow():
    net = create_registration_net("affine", features=[4, 8])
    with torch.no_grad():
        net.theta.bias.copy_(torch.tensor([0.1, -0.05, 0.2, 0.05, 0.0, -0.1]))
        out = net(torch.rand(1, 1, 16, 24), torch.rand(1, 1, 16, 24))
    matrix = out.extras["affine"][0]
    m = torch.tensor([[1.1, -0.05], [0.05, 1.0]])
    assert torch.allclose(matrix[:, :2], m)
    p = torch.stack(torch.meshgrid(torch.arange(16.0), torch.arange(24.0), indexing="ij"))
    mapped = torch.einsum("ij,j...->i...", matrix[:, :2], p) + matrix[:, 2].view(2, 1, 1)
    assert torch.allclose(out.flow[0], mapped - p, atol=1e-4)
    # About the centre c = (7.5, 11.5) with a shift of 0.2 and -0.1 half-sizes: voxel 0 samples c + t - M c.
    c, t = torch.tensor([7.5, 11.5]), torch.tensor([0.2 * 7.5, -0.1 * 11.5])
    assert torch.allclose(out.flow[0, :, 0, 0], c + t - m @ c, atol=1e-4)
    assert torch.equal(out.extras["regularized"], torch.zeros_like(out.flow))
    assert out.penalties["affine_identity"] == pytest.approx(0.5 / 6)


def _texture(n=64):
    grid = torch.stack(torch.meshgrid(torch.arange(n * 1.0), torch.arange(n * 1.0), indexing="ij"))
    image = torch.zeros(n, n)
    for (y, x, r) in [(20, 22, 7), (40, 30, 9), (28, 46, 5), (47, 48, 6)]:
        image += torch.sigmoid((r - ((grid[0] - y) ** 2 + (grid[1] - x) ** 2).sqrt()) * 1.5)
    return image.view(1, 1, n, n)


def test_the_affine_branch_recovers_a_known_rotation_and_scale():
    n, angle, scale = 64, math.radians(8.0), 1.08
    truth = scale * torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    c = (n - 1) / 2
    p = torch.stack(torch.meshgrid(torch.arange(n * 1.0), torch.arange(n * 1.0), indexing="ij")) - c
    moving = _texture(n)
    fixed = warp(moving, (torch.einsum("ij,j...->i...", truth, p) - p).unsqueeze(0))
    torch.manual_seed(0)
    net = create_registration_net("affine", features=[8, 16, 16])
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(150):
        out = net(moving, fixed)
        loss = mse(out.warped, fixed)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        matrix = net(moving, fixed).extras["affine"][0, :, :2]
    assert torch.allclose(matrix, truth, atol=0.03), matrix


def test_the_deformable_part_is_applied_before_the_affine_part():
    from jointreg.spatial.integrate import compose

    torch.manual_seed(1)
    net = create_registration_net("affine-deformable", features=[4, 8]).eval()
    with torch.no_grad():
        torch.nn.init.normal_(net.gradients.weight, std=0.5)
        net.theta.bias.copy_(torch.tensor([0.05, -0.1, 0.1, 0.1, 0.0, -0.05]))
        out = net(torch.rand(1, 1, 16, 24), torch.rand(1, 1, 16, 24))
    matrix = out.extras["affine"][0]
    p = torch.stack(torch.meshgrid(torch.arange(16.0), torch.arange(24.0), indexing="ij"))
    affine_flow = (torch.einsum("ij,j...->i...", matrix[:, :2], p) + matrix[:, 2].view(2, 1, 1) - p).unsqueeze(0)
    deformable = out.extras["deformable"]
    assert deformable.abs().max() > 0.3 and affine_flow.abs().max() > 0.5
    assert torch.allclose(out.flow, compose(deformable, affine_flow), atol=1e-4)
    assert not torch.allclose(out.flow, compose(affine_flow, deformable), atol=1e-2)  # the order matters
    assert torch.equal(out.extras["regularized"], deformable)
