"""Known-answer tests for Jacobian determinants of φ(p) = p + u(p)."""

import math

import pytest
import torch

from jointreg.spatial import identity_grid, jacobian_determinant, jacobian_matrix

SIZES = {2: (6, 9), 3: (5, 4, 6)}


def _linear_field(dims, matrix):
    """u(p) = (A - I)(p - c): the displacement of the linear map A about the centre c."""
    grid = identity_grid(SIZES[dims], dtype=torch.float64)[0]
    centre = torch.tensor([(n - 1) / 2 for n in SIZES[dims]], dtype=torch.float64).view(dims, *([1] * dims))
    a = torch.as_tensor(matrix, dtype=torch.float64) - torch.eye(dims, dtype=torch.float64)
    return torch.einsum("ij,j...->i...", a, grid - centre).unsqueeze(0)


@pytest.mark.parametrize("dims", [2, 3])
def test_identity_has_determinant_one(dims):
    det = jacobian_determinant(torch.zeros(2, dims, *SIZES[dims]))
    assert det.shape == (2, *SIZES[dims])
    assert torch.equal(det, torch.ones_like(det))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("s", [0.5, 1.7])
def test_uniform_scaling_has_determinant_s_to_the_d(dims, s):
    det = jacobian_determinant(_linear_field(dims, s * torch.eye(dims)))
    assert torch.allclose(det, torch.full_like(det, s**dims))


@pytest.mark.parametrize("dims", [2, 3])
def test_flipped_field_is_detected_as_folding(dims):
    flip = torch.eye(dims)
    flip[0, 0] = -1
    det = jacobian_determinant(_linear_field(dims, flip))
    assert torch.allclose(det, torch.full_like(det, -1.0))


def test_rotation_and_shear_preserve_volume_and_matrix_is_known():
    c, s = math.cos(0.3), math.sin(0.3)
    rotation = [[c, -s], [s, c]]
    assert torch.allclose(jacobian_determinant(_linear_field(2, rotation)), torch.ones(1, *SIZES[2], dtype=torch.float64))
    shear = [[1, 0, 0.4], [0, 1, 0], [0, 0, 1]]
    jac = jacobian_matrix(_linear_field(3, shear))
    assert torch.allclose(jac, torch.tensor(shear, dtype=torch.float64).expand_as(jac))
    assert torch.allclose(torch.linalg.det(jac), torch.ones(1, *SIZES[3], dtype=torch.float64))


def test_local_fold_only_where_it_is():
    # u_0 = -1.5 p_0 on rows 2..4 only: φ_0 = -0.5 p_0 there (det < 0), identity elsewhere.
    flow = torch.zeros(1, 2, 10, 4)
    flow[0, 0, 2:5] = -1.5 * torch.arange(2.0, 5.0).view(3, 1)
    det = jacobian_determinant(flow)[0]
    assert (det[3] < 0).all()
    assert (det[:1] == 1).all() and (det[7:] == 1).all()


def test_2d_and_3d_agree_on_an_in_plane_field():
    g = torch.Generator().manual_seed(0)
    flow2 = torch.randn(1, 2, 6, 7, generator=g) * 0.3
    flow3 = torch.zeros(1, 3, 6, 7, 3)
    flow3[:, :2] = flow2.unsqueeze(-1)
    assert torch.allclose(jacobian_determinant(flow3)[..., 1], jacobian_determinant(flow2), atol=1e-6)


def test_too_small_grid_is_rejected():
    with pytest.raises(ValueError, match=">= 2"):
        jacobian_determinant(torch.zeros(1, 2, 1, 5))
