"""The registration objective: a list of weighted terms plus the network's named penalties."""

import pytest
import torch

from jointreg.data.batches import RegistrationBatch
from jointreg.errors import ConfigError
from jointreg.nets.registration import RegistrationOutput
from jointreg.training.config import RegistrationConfig
from jointreg.training.objectives import RegistrationObjective


def _batch():
    moving = torch.zeros(1, 1, 8, 8)
    fixed = torch.full((1, 1, 8, 8), 0.5)
    labels = torch.zeros(1, 1, 8, 8, dtype=torch.int64)
    return RegistrationBatch(moving, fixed, labels, labels.clone(), torch.tensor([1.0]), [None])


def test_terms_are_weighted_and_summed_with_the_networks_penalties():
    flow = torch.zeros(1, 2, 8, 8)
    flow[:, 0, :, 4:] = 1.0  # a step along axis 1: diffusion = mean of squared differences
    out = RegistrationOutput(warped=torch.zeros(1, 1, 8, 8), flow=flow, penalties={"affine_identity": torch.tensor(2.0)})
    config = RegistrationConfig(similarity_weight=2.0, ssim_weight=0.0, smoothness_weight=0.5, penalties={"affine_identity": 3.0})
    objective = RegistrationObjective(config, num_classes=2, ignore_index=2, penalty_weights={"affine_identity": 0.1})
    total, terms = objective(out, _batch())
    assert terms["similarity"] == pytest.approx(0.25)  # MSE of 0 vs 0.5
    assert "ssim" not in terms
    assert terms["affine_identity"] == 2.0
    assert float(total) == pytest.approx(2.0 * 0.25 + 0.5 * terms["smoothness"] + 3.0 * 2.0)
    assert terms["smoothness"] > 0
    # Without a recipe weight the network's default applies.
    default = RegistrationObjective(RegistrationConfig(ssim_weight=0.0), num_classes=2, ignore_index=2,
                                    penalty_weights={"affine_identity": 0.1})
    total, terms = default(out, _batch())
    assert float(total) == pytest.approx(0.25 + 0.02 * terms["smoothness"] + 0.1 * 2.0)


def test_smoothness_applies_to_the_field_the_network_names():
    flow = torch.zeros(1, 2, 8, 8)
    velocity = torch.zeros(1, 2, 8, 8)
    velocity[:, 1, 4:] = 2.0
    out = RegistrationOutput(warped=torch.zeros(1, 1, 8, 8), flow=flow, extras={"regularized": velocity})
    objective = RegistrationObjective(RegistrationConfig(ssim_weight=0.0), num_classes=2, ignore_index=2)
    _, terms = objective(out, _batch())
    assert terms["smoothness"] > 0  # the flow itself is constant


def test_unknown_penalty_weights_and_undeclared_penalties_are_errors():
    with pytest.raises(ConfigError, match="registration.penalties: fmirnet has no penalty 'jacobian' \\(it has: none\\)"):
        RegistrationObjective(RegistrationConfig(penalties={"jacobian": 1.0}), num_classes=2, ignore_index=2)
    with pytest.raises(ConfigError, match="registration.penalties.jacobian: must be >= 0"):
        RegistrationConfig(penalties={"jacobian": -1.0})
    out = RegistrationOutput(warped=torch.zeros(1, 1, 8, 8), flow=torch.zeros(1, 2, 8, 8), penalties={"x": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="penalty 'x' without declaring"):
        RegistrationObjective(RegistrationConfig(ssim_weight=0.0), num_classes=2, ignore_index=2)(out, _batch())
