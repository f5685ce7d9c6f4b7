"""Mixed precision (the recipe's ``precision``): autocast dtypes, the float16 loss scaler and
its place in the resume checkpoint."""

from __future__ import annotations

import pytest
import torch

from jointreg.errors import ConfigError
from jointreg.training.precision import MixedPrecision


def test_float32_is_plain_training():
    amp = MixedPrecision("float32", torch.device("cpu"))
    net = torch.nn.Linear(4, 2)
    with amp.autocast():
        assert net(torch.ones(1, 4)).dtype == torch.float32
    assert amp.scaler is None and amp.state_dict() == {}


def test_bfloat16_autocasts_the_forward_pass_and_keeps_float32_weights():
    amp = MixedPrecision("bfloat16", torch.device("cpu"))
    net = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    with amp.autocast():
        out = net(torch.ones(1, 4))
    assert out.dtype == torch.bfloat16 and amp.scaler is None
    before = net.weight.detach().clone()
    amp.step(out.float().sum(), optimizer)
    assert net.weight.dtype == torch.float32
    assert torch.allclose(net.weight, before - 0.1, atol=1e-2)  # d(sum)/dW = 1 for every weight


def test_float16_scales_the_loss_and_skips_an_overflowing_step():
    amp = MixedPrecision("float16", torch.device("cpu"))
    net = torch.nn.Linear(1, 1, bias=False)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scale = amp.scaler.get_scale()
    before = net.weight.detach().clone()
    amp.step((net(torch.ones(1, 1)) * float("inf")).sum(), optimizer)  # inf gradient
    assert torch.equal(net.weight, before)  # step skipped
    assert amp.scaler.get_scale() == scale / 2  # and the scale halved
    optimizer.zero_grad()
    amp.step(net(torch.ones(1, 1)).sum(), optimizer)
    assert torch.allclose(net.weight, before - 0.1)  # unscaled before the step
    state = amp.state_dict()
    other = MixedPrecision("float16", torch.device("cpu"))
    other.load_state_dict(state)
    assert other.scaler.get_scale() == scale / 2


def test_precision_is_checked_with_the_recipe(tiny_recipe):
    with pytest.raises(ConfigError, match="precision"):
        tiny_recipe("precision=half")


@pytest.mark.slow
def test_float16_run_resumes_exactly_with_its_loss_scale(tiny_recipe):
    """The loss scale after the skipped overflow steps is in the checkpoint: a resumed float16
    run ends with the weights of an uninterrupted one."""
    from jointreg.training.checkpoint import load_checkpoint
    from jointreg.training.loop import train

    from .test_loop import assert_same_exported_weights

    straight = train(tiny_recipe("precision=float16", name="straight"))
    stopped = train(tiny_recipe("precision=float16", name="resumed"), stop_after=8)
    scale = load_checkpoint(f"{stopped['run']}/checkpoints/last")["segmentor"]["scaler"]["scale"]
    assert scale < 65536.0  # the default initial scale: some float16 steps overflowed and halved it
    resumed = train(tiny_recipe("precision=float16", name="resumed"), run_dir=stopped["run"], resume=True)
    assert_same_exported_weights(straight["run"], resumed["run"])
