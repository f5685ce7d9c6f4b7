"""Known-answer tests for field composition, resizing and scaling-and-squaring."""

import math

import pytest
import torch

from jointreg.spatial import IntegrateVelocity, compose, integrate_velocity, jacobian_determinant, resize_flow, warp


def _smooth_field(dims, size, amplitude, seed=0):
    """A smooth random field: per channel, a sum of plane waves of 1 to 2 cycles per grid."""
    g = torch.Generator().manual_seed(seed)
    coords = torch.meshgrid(*[torch.linspace(0, 2 * math.pi, n) for n in size], indexing="ij")
    field = torch.zeros(1, dims, *size)
    for c in range(dims):
        for _ in range(4):
            freq = 1 + torch.rand(dims, generator=g)
            phase = float(torch.rand(1, generator=g)) * 2 * math.pi
            field[0, c] += torch.sin(phase + sum(freq[d] * coords[d] for d in range(dims)))
    return field * amplitude / field.abs().max()


@pytest.mark.parametrize("dims,size", [(2, (9, 7)), (3, (6, 5, 7))])
def test_compose_shift_with_its_inverse_is_identity(dims, size):
    shift = torch.zeros(1, dims, *size)
    for d in range(dims):
        shift[:, d] = 0.75 * (d + 1)
    assert torch.equal(compose(shift, -shift), torch.zeros_like(shift))
    assert torch.allclose(compose(shift, shift), 2 * shift)


def test_compose_smooth_field_with_its_numerical_inverse_is_near_identity_inside():
    size = (40, 36)
    a = _smooth_field(2, size, amplitude=2.0)
    inverse = -a
    for _ in range(30):  # fixed point of inv(p) = -a(p + inv(p))
        inverse = -warp(a, inverse)
    residual = compose(a, inverse)[..., 4:-4, 4:-4]
    assert residual.abs().max() < 0.02


def test_compose_order_matches_sequential_warping():
    size = (96, 80)
    x = _smooth_field(2, size, amplitude=1.0, seed=7)[:, :1]
    a = _smooth_field(2, size, amplitude=4.0, seed=1)
    b = _smooth_field(2, size, amplitude=4.0, seed=2)
    inside = (..., slice(8, -8), slice(8, -8))
    sequential = warp(warp(x, a), b)[inside]  # interpolates twice: differs by ~0.005
    assert (warp(x, compose(a, b))[inside] - sequential).abs().max() < 0.02
    assert (warp(x, compose(b, a))[inside] - sequential).abs().max() > 0.05  # the order matters


@pytest.mark.parametrize("dims,size", [(2, (8, 11)), (3, (5, 6, 4))])
def test_scaling_and_squaring_of_constant_velocity_is_that_translation(dims, size):
    velocity = torch.zeros(2, dims, *size)
    for d in range(dims):
        velocity[:, d] = 1.3 - d
    # Exact up to float rounding of interpolation weights that sum to 1.
    assert torch.allclose(integrate_velocity(velocity, steps=7), velocity, rtol=0, atol=1e-6)
    assert torch.allclose(IntegrateVelocity(7, downsize=2)(velocity), velocity, rtol=0, atol=1e-6)
    assert torch.equal(integrate_velocity(velocity, steps=0), velocity)


def test_integrated_smooth_velocity_has_no_folding_while_its_displacement_would_fold():
    velocity = _smooth_field(2, (64, 64), amplitude=8.0, seed=3)
    assert (jacobian_determinant(velocity) <= 0).any()  # used directly as a displacement: folds
    flow = integrate_velocity(velocity, steps=7)
    assert (jacobian_determinant(flow)[:, 1:-1, 1:-1] > 0).all()


def test_small_velocity_integrates_to_itself_to_first_order():
    velocity = _smooth_field(2, (32, 32), amplitude=0.01, seed=4)
    assert torch.allclose(integrate_velocity(velocity), velocity, atol=1e-4)


def test_resize_flow_scales_vectors_with_the_grid():
    flow = torch.zeros(1, 2, 8, 5)
    flow[:, 0], flow[:, 1] = 1.5, -2.0
    up = resize_flow(flow, (16, 10))
    assert up.shape == (1, 2, 16, 10)
    assert torch.allclose(up[:, 0], torch.full((1, 16, 10), 3.0))
    assert torch.allclose(up[:, 1], torch.full((1, 16, 10), -4.0))
    corners = resize_flow(flow, (15, 9), align_corners=True)
    assert torch.allclose(corners[:, 0], torch.full((1, 15, 9), 1.5 * 14 / 7))
    assert torch.allclose(corners[:, 1], torch.full((1, 15, 9), -2.0 * 8 / 4))
    assert resize_flow(flow, (8, 5)) is flow


def test_resize_flow_align_corners_keeps_a_linear_ramp_field():
    # u(p) = 0.1 p along axis 0 describes the same mapping on any grid that shares corner centres.
    coarse = torch.zeros(1, 2, 9, 4)
    coarse[:, 0] = 0.1 * torch.arange(9.0).view(9, 1)
    fine = resize_flow(coarse, (17, 7), align_corners=True)
    assert torch.allclose(fine[0, 0], 0.1 * torch.arange(17.0).view(17, 1).expand(17, 7), atol=1e-6)
    assert torch.equal(fine[0, 1], torch.zeros(17, 7))


def test_resize_flow_rejects_wrong_rank():
    with pytest.raises(ValueError, match="entries"):
        resize_flow(torch.zeros(1, 2, 4, 4), (8, 8, 8))
