"""Known answers for the registration metrics (image agreement, folding, SDlogJ)."""

import math

import pytest
import torch

from jointreg.metrics.registration import folding_percent, mse, ncc, nmi, registration_metrics, sdlogj, ssim


def _smooth_field(dims, size, amplitude, seed=0):
    g = torch.Generator().manual_seed(seed)
    coords = torch.meshgrid(*[torch.linspace(0, 2 * math.pi, n) for n in size], indexing="ij")
    field = torch.zeros(1, dims, *size)
    for c in range(dims):
        phase = torch.rand(dims, generator=g) * 2 * math.pi
        field[0, c] = sum(torch.sin(phase[d] + coords[d]) for d in range(dims))
    return field * amplitude / field.abs().max()


@pytest.mark.parametrize("dims,size", [(2, (16, 12)), (3, (8, 9, 7))])
def test_identity_field_has_no_folding_and_zero_sdlogj(dims, size):
    flow = torch.zeros(3, dims, *size)
    assert torch.equal(folding_percent(flow), torch.zeros(3))
    assert torch.equal(sdlogj(flow), torch.zeros(3))


def test_known_folding_field_gives_known_percentage():
    # u_0 = -1.5 p_0 on rows 2..4 of a 10-row grid: central differences give det J < 0 exactly on
    # rows 1, 2, 3 (dets -0.5, -1.25, -0.5) and > 0 elsewhere: 3 of 10 rows = 30 %.
    flow = torch.zeros(2, 2, 10, 4)
    flow[0, 0, 2:5] = -1.5 * torch.arange(2.0, 5.0).view(3, 1)
    assert torch.allclose(folding_percent(flow), torch.tensor([30.0, 0.0]))


def test_3d_fold_percentage():
    flow = torch.zeros(1, 3, 4, 5, 10)
    flow[0, 2, ..., 2:5] = -1.5 * torch.arange(2.0, 5.0)
    assert torch.allclose(folding_percent(flow), torch.tensor([30.0]))


def test_uniform_scaling_has_constant_determinant_so_zero_sdlogj():
    grid = torch.stack(torch.meshgrid(torch.arange(9.0), torch.arange(7.0), indexing="ij")).unsqueeze(0)
    flow = 0.3 * (grid - 4.0)  # φ = 1.3 p about a centre: det = 1.69
    assert float(sdlogj(flow)) == pytest.approx(0.0, abs=1e-6)
    assert float(folding_percent(flow)) == 0.0


@pytest.mark.parametrize("dims,size", [(2, (48, 40)), (3, (20, 18, 16))])
def test_smooth_field_has_small_sdlogj_growing_with_amplitude(dims, size):
    small = float(sdlogj(_smooth_field(dims, size, 0.3)))
    large = float(sdlogj(_smooth_field(dims, size, 2.0)))
    assert 0 < small < 0.1
    assert large > 3 * small


def test_image_metrics_per_pair_known_values_and_no_gradient():
    g = torch.Generator().manual_seed(0)
    fixed = torch.rand(3, 1, 20, 18, generator=g)
    warped = fixed.clone().requires_grad_(True)
    assert torch.allclose(ncc(warped, fixed), torch.ones(3), atol=1e-5)
    assert torch.allclose(nmi(warped, fixed), torch.ones(3), atol=1e-5)
    assert torch.allclose(ssim(warped, fixed), torch.ones(3), atol=1e-5)
    assert torch.equal(mse(warped, fixed), torch.zeros(3))
    other = torch.rand(3, 1, 20, 18, generator=g)
    scores = registration_metrics(other, fixed, torch.zeros(3, 2, 20, 18))
    assert set(scores) == {"ncc", "nmi", "ssim", "mse", "folding_percent", "sdlogj"}
    assert all(v.shape == (3,) and not v.requires_grad for v in scores.values())
    assert (scores["ncc"] < 0.3).all() and (scores["nmi"] < 0.5).all() and (scores["mse"] > 0.1).all()
    assert not ncc(warped, fixed).requires_grad
