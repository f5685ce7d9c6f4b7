"""Known answers for the smoothness penalties."""

import pytest
import torch
from monai.losses import BendingEnergyLoss, DiffusionLoss, deform

from jointreg.errors import ConfigError
from jointreg.losses.regularization import bending_energy, create_regularizer, diffusion


def _ramp(dims, size, slope, axis=0, dtype=torch.float64):
    flow = torch.zeros(1, dims, *size, dtype=dtype)
    shape = [1] * dims
    shape[axis] = size[axis]
    flow[0, axis] = slope * torch.arange(size[axis], dtype=dtype).view(shape)
    return flow


@pytest.mark.parametrize("dims,size", [(2, (6, 7)), (3, (5, 4, 6))])
def test_diffusion_zero_for_constant_and_known_for_ramp(dims, size):
    constant = torch.full((2, dims, *size), 3.7)
    assert float(diffusion(constant)) == 0.0
    assert float(diffusion(_ramp(dims, size, 0.3))) == pytest.approx(0.09)
    # A ramp in every channel along every axis: D² gradient entries of s².
    flow = sum(_ramp(dims, size, 0.5, axis=a) for a in range(dims))
    flow = flow.sum(1, keepdim=True).expand(1, dims, *size)
    assert float(diffusion(flow)) == pytest.approx(dims * dims * 0.25)


def test_diffusion_known_value_of_a_step():
    flow = torch.zeros(1, 2, 3, 4)
    flow[0, 1, :, 2:] = 2.0  # one jump of 2 along axis 1 in each of 3 rows
    # axis 1: 3 rows × 3 differences, one of 2² per row → mean 4/3; axis 0: 0.
    assert float(diffusion(flow)) == pytest.approx(4 / 3)


@pytest.mark.parametrize("dims,size", [(2, (6, 7)), (3, (5, 4, 6))])
def test_bending_energy_zero_for_affine_fields(dims, size):
    g = torch.Generator().manual_seed(0)
    matrix = torch.randn(dims, dims, generator=g, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in size], indexing="ij"))
    affine = torch.einsum("ij,j...->i...", matrix, grid).unsqueeze(0) + 1.5
    assert float(bending_energy(affine)) == pytest.approx(0.0, abs=1e-20)


def test_bending_energy_known_value_of_a_quadratic():
    # u_0 = p_0²: ∂²u_0/∂p_0² = 2 everywhere → energy 4; a mixed term u_1 = p_0 p_1 → 2·1² = 2.
    size = (6, 5)
    p0 = torch.arange(6.0, dtype=torch.float64).view(6, 1).expand(size)
    p1 = torch.arange(5.0, dtype=torch.float64).view(1, 5).expand(size)
    flow = torch.stack([p0**2, torch.zeros(size, dtype=torch.float64)]).unsqueeze(0)
    assert float(bending_energy(flow)) == pytest.approx(4.0)
    flow = torch.stack([torch.zeros(size, dtype=torch.float64), p0 * p1]).unsqueeze(0)
    assert float(bending_energy(flow)) == pytest.approx(2.0)


def test_gradcheck_and_reduction():
    g = torch.Generator().manual_seed(1)
    flow = torch.randn(2, 2, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(diffusion, (flow,))
    assert torch.autograd.gradcheck(bending_energy, (flow,))
    per_pair = diffusion(flow, reduction="none")
    assert per_pair.shape == (2,)
    assert torch.allclose(diffusion(flow), per_pair.mean())


def test_registry():
    flow = torch.zeros(1, 2, 4, 4)
    flow[0, 0, :, 2:] = 1.0
    assert float(create_regularizer("diffusion")(flow)) == pytest.approx(diffusion(flow).item())
    assert float(create_regularizer("bending")(flow)) == pytest.approx(bending_energy(flow).item())
    with pytest.raises(ConfigError, match="diffusion, bending"):
        create_regularizer("tv")


def _affine(dims, size, seed):
    g = torch.Generator().manual_seed(seed)
    matrix = torch.randn(dims, dims, generator=g, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in size], indexing="ij"))
    return (torch.einsum("ij,j...->i...", matrix, grid) + torch.randn(dims, *([1] * dims), generator=g)).unsqueeze(0)


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")
@pytest.mark.parametrize("dims,size", [(2, (9, 11)), (3, (6, 7, 5))])
def test_factor_to_monai_is_the_dimension(dims, size):
    # Bending energy: the same stencils and voxels, MONAI also averages over the D channels.
    if not hasattr(deform, "spatial_gradient_squared"):
        pytest.skip("this MONAI's bending energy uses the wider twice-central-difference stencil")
    flow = torch.randn(2, dims, *size, generator=torch.Generator().manual_seed(dims), dtype=torch.float64)
    assert float(bending_energy(flow)) == pytest.approx(dims * float(BendingEnergyLoss()(flow)), rel=1e-12)
    # Diffusion: exactly D times MONAI's on affine fields (constant gradient)...
    affine = _affine(dims, size, seed=dims)
    assert float(DiffusionLoss()(affine)) > 0.1
    assert float(diffusion(affine)) == pytest.approx(dims * float(DiffusionLoss()(affine)), rel=1e-12)
    # ... but no fixed factor elsewhere: MONAI's central difference does not see a checkerboard.
    checker = (torch.stack(torch.meshgrid(*[torch.arange(n) for n in size], indexing="ij")).sum(0) % 2).double()
    checker = checker.expand(1, dims, *size)
    assert float(DiffusionLoss()(checker)) == 0.0
    assert float(diffusion(checker)) == pytest.approx(dims * dims)  # D axes × D channels × 1² per difference
