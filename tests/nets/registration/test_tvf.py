"""Time-dependent velocity fields: integration in the network, its inverse, the two variants."""

import math

import pytest
import torch

from jointreg.losses import diffusion
from jointreg.metrics.registration import folding_percent
from jointreg.nets.registration import create_registration_net
from jointreg.spatial.integrate import compose


class FixedVelocity(torch.nn.Module):
    """Stands in for the velocity head: the same field at every step (times ``steps``, since the
    network divides by it), whatever the input."""

    def __init__(self, field):
        super().__init__()
        self.field = field

    def forward(self, x):
        return self.field.expand(x.shape[0], *self.field.shape[1:])


def _net(name, field, steps=8):
    net = create_registration_net(name, features=[4, 8], steps=steps, head_channels=4)
    net.head = FixedVelocity(field)
    return net


def test_a_constant_velocity_integrates_to_that_translation():
    field = torch.tensor([1.5, -2.0]).view(1, 2, 1, 1).expand(1, 2, 24, 24).clone()
    net = _net("tvf", field, steps=4)
    with torch.no_grad():
        out = net(torch.rand(1, 1, 24, 24), torch.rand(1, 1, 24, 24))
    assert torch.allclose(out.flow, field, atol=1e-5)
    assert len(out.extras["velocities"]) == 4
    assert torch.allclose(out.extras["velocities"][0], field / 4)
    assert torch.allclose(out.extras["inverse"], -field, atol=1e-5)


def _smooth(size=(64, 64), amplitude=10.0):
    coords = torch.meshgrid(*[torch.linspace(0, 2 * math.pi, n) for n in size], indexing="ij")
    return torch.stack([amplitude * torch.sin(coords[0] + 0.3), amplitude * torch.cos(coords[1] * 1.5)]).unsqueeze(0)


def test_integrating_in_steps_unfolds_a_field_that_folds_as_a_displacement():
    velocity = _smooth(amplitude=12.0)
    assert folding_percent(velocity) > 40
    with torch.no_grad():
        out = _net("tvf", velocity)(torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 64))
    assert float(folding_percent(out.flow)) == 0.0
    assert (out.flow - velocity).abs().max() > 0.5


def test_the_first_order_inverse_is_accurate_to_gradient_times_size():
    """compose(forward, inverse) should be the identity; the paper's inverse Id − Σ v_t ∘ φ_t
    leaves a residual of about |∇u|·|u| (second order in the displacement). Measured: 0.02 voxels
    for a 0.5-voxel field, 0.08 for 1 voxel, 0.37 for 2, 0.92 for 3 (64², smooth fields), i.e.
    0.53–0.56·max|∇u|·max|u| each time."""
    for amplitude in (0.5, 1.0, 2.0, 3.0):
        with torch.no_grad():
            out = _net("tvf", _smooth(amplitude=amplitude))(torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 64))
        u = out.flow
        residual = compose(u, out.extras["inverse"])[..., 8:-8, 8:-8].abs().max()
        gradient = max(u.diff(dim=2).abs().max(), u.diff(dim=3).abs().max())
        assert u.abs().max() > 0.9 * amplitude
        assert residual < 0.6 * gradient * u.abs().max(), (amplitude, float(residual))
        assert residual > 0.3 * gradient * u.abs().max()  # the bound is tight: a first-order inverse


def test_lddmm_penalises_every_step_and_tvf_only_the_end_point():
    velocity = _smooth(amplitude=2.0)
    with torch.no_grad():
        lddmm = _net("tvf-lddmm", velocity, steps=4)(torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 64))
        plain = _net("tvf", velocity, steps=4)(torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 64))
    assert lddmm.penalties["velocity_smoothness"] == pytest.approx(float(diffusion(velocity / 4)), rel=1e-5)
    assert plain.penalties == {}
    assert torch.allclose(plain.regularized, velocity)  # the end-point velocity per unit time
