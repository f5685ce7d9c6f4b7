"""PMRNet: the KL term, sampling while training, and the multilayer fusion."""

import math

import pytest
import torch

from jointreg.nets.registration import create_registration_net
from jointreg.nets.registration.pmrnet import gaussian_kl


def test_the_kl_term_is_zero_exactly_at_the_prior_and_known_elsewhere():
    s = 0.1
    zero, log_prior = torch.zeros(2, 2, 4, 4), torch.full((2, 2, 4, 4), 2 * math.log(s))
    assert float(gaussian_kl(zero, log_prior, s)) == pytest.approx(0.0, abs=1e-7)
    assert float(gaussian_kl(zero + s, log_prior, s)) == pytest.approx(0.5)       # mean one prior std away
    assert float(gaussian_kl(zero, log_prior + math.log(4.0), s)) == pytest.approx(0.5 * (4 - 1 - math.log(4)))
    net = create_registration_net("pmrnet", features=[4, 8])
    with torch.no_grad():
        out = net(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16))
    assert float(out.penalties["kl"]) == pytest.approx(0.0, abs=1e-6)  # fresh heads: the prior


def test_latent_flows_are_sampled_while_training_and_the_mean_is_used_in_eval():
    torch.manual_seed(0)
    net = create_registration_net("pmrnet", features=[4, 8], prior_std=0.5)
    moving, fixed = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        first, second = net(moving, fixed).flow, net(moving, fixed).flow
    assert not torch.equal(first, second)
    # two levels of independent N(0, 0.5²) noise, the coarse one doubled by upsampling (and
    # smoothed by the linear interpolation): std between √(0.25 + 0.25) and √(0.25 + 1)
    assert 0.7 < float(first.std()) < 1.12
    net.eval()
    assert torch.equal(net(moving, fixed).flow, torch.zeros(1, 2, 32, 32))


def test_the_levels_are_fused_with_their_vectors_scaled_to_full_resolution():
    net = create_registration_net("pmrnet", features=[4, 8, 8]).eval()
    with torch.no_grad():
        net.means[0].bias.copy_(torch.tensor([0.5, 0.0]))
        net.means[2].bias.copy_(torch.tensor([0.0, -0.25]))  # 1/4 resolution: ×4 at full resolution
        out = net(torch.rand(1, 1, 24, 20), torch.rand(1, 1, 24, 20))
    assert torch.allclose(out.flow[0, 0], torch.full((24, 20), 0.5), atol=1e-5)
    assert torch.allclose(out.flow[0, 1], torch.full((24, 20), -1.0), atol=1e-5)
    assert [tuple(f.shape[2:]) for f in out.flows] == [(24, 20), (12, 10), (6, 5)]
