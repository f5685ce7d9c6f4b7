"""Mixed precision (the recipe's ``precision``): autocast dtypes, the float16 loss scaler and
its place in the resume checkpoint."""

from __future__ import annotations

import math
import os

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


def test_native_bfloat16_reads_the_cpu_flags(tmp_path):
    from jointreg.training.precision import native_bfloat16

    with_amx, without = tmp_path / "amx", tmp_path / "plain"
    with_amx.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f amx_bf16 amx_tile\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert native_bfloat16(str(with_amx)) is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert native_bfloat16(str(without)) is False
    assert native_bfloat16(str(tmp_path / "missing")) is False


def test_bfloat16_on_a_cpu_without_bfloat16_units_warns(monkeypatch, caplog):
    import jointreg.training.precision as precision

    monkeypatch.setattr(precision, "native_bfloat16", lambda: False)
    # The warning is given once per process: an earlier bfloat16 test on a CPU without bfloat16
    # units may have given it already.
    precision._warn_emulated.cache_clear()
    with caplog.at_level("WARNING", logger="jointreg.training.precision"):
        MixedPrecision("bfloat16", torch.device("cpu"))
        MixedPrecision("bfloat16", torch.device("cpu"))
    assert caplog.text.count("emulated and slower than float32") == 1
    caplog.clear()
    monkeypatch.setattr(precision, "native_bfloat16", lambda: True)
    with caplog.at_level("WARNING", logger="jointreg.training.precision"):
        MixedPrecision("bfloat16", torch.device("cpu"))
        MixedPrecision("float32", torch.device("cpu"))
    assert caplog.text == ""


def test_a_bfloat16_registration_step_computes_its_objective_in_float32():
    from jointreg.data.batches import RegistrationBatch
    from jointreg.nets.registration.registry import create_registration_net
    from jointreg.training.config import RegistrationConfig
    from jointreg.training.objectives import RegistrationObjective
    from jointreg.training.steps import registration_step

    torch.manual_seed(0)
    net = create_registration_net("fmirnet", spatial_dims=2)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    objective = RegistrationObjective(RegistrationConfig(similarity="ncc", ssim_weight=1.0), num_classes=2, ignore_index=2)
    fixed = torch.rand(2, 1, 32, 32)
    labels = torch.zeros(2, 1, 32, 32, dtype=torch.int64)
    batch = RegistrationBatch(moving=torch.roll(fixed, 2, dims=2), fixed=fixed, moving_label=labels, fixed_label=labels,
                              distance=torch.ones(2), pairs=[])
    seen = {}

    def spy(out, b, **kwargs):
        seen["field"] = out.flow.dtype
        seen["warped"] = out.warped.dtype
        seen["autocast"] = torch.is_autocast_enabled("cpu")
        loss, terms = objective(out, b, **kwargs)
        seen["loss"] = loss.dtype
        return loss, terms

    spy.config = objective.config
    amp = MixedPrecision("bfloat16", torch.device("cpu"))
    with amp.autocast():
        assert net(batch.moving, batch.fixed).flow.dtype == torch.bfloat16  # what the network gives
    terms = registration_step(net, optimizer, batch, spy, precision=amp)
    assert seen == {"field": torch.float32, "warped": torch.float32, "autocast": False, "loss": torch.float32}
    assert all(math.isfinite(v) for v in terms.values())
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_auto_precision_is_bfloat16_only_where_the_hardware_computes_it(monkeypatch):
    import jointreg.training.precision as precision

    cpu = torch.device("cpu")
    for name in ("float32", "bfloat16", "float16"):
        assert precision.resolve_precision(name, cpu) == name
    monkeypatch.setattr(precision, "native_bfloat16", lambda: True)
    assert precision.resolve_precision("auto", cpu) == "bfloat16"
    monkeypatch.setattr(precision, "native_bfloat16", lambda: False)
    assert precision.resolve_precision("auto", cpu) == "float32"
    import contextlib

    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert precision.resolve_precision("auto", torch.device("cuda")) == "float32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert precision.resolve_precision("auto", torch.device("cuda")) == "bfloat16"
    assert precision.resolve_precision("auto", torch.device("mps")) == "float32"


@pytest.mark.slow
def test_auto_precision_run_names_its_choice_and_resumes_exactly(tiny_recipe, monkeypatch, caplog):
    """``auto`` resolves to this machine's choice (bfloat16 with AMX / AVX512-BF16) and says so
    in train.log. A run stopped and resumed ends with an uninterrupted run's weights, even where
    ``auto`` would decide otherwise on the resuming machine: it goes on in the precision it began in."""
    from pathlib import Path

    import jointreg.training.precision as precision
    from jointreg.training.checkpoint import load_checkpoint
    from jointreg.training.loop import train

    from .test_loop import assert_same_exported_weights

    native = precision.native_bfloat16()
    straight = train(tiny_recipe("precision=auto", name="straight"))
    expected = "bfloat16" if native else "float32"
    assert f"precision: auto → {expected} on cpu" in (Path(straight["run"]) / "train.log").read_text()
    recipe = tiny_recipe("precision=auto", name="straight")
    assert straight["precision"] == expected
    assert straight["dataset_path"] == os.path.realpath(recipe.data.dataset)
    stopped = train(tiny_recipe("precision=auto", name="resumed"), stop_after=8)
    assert load_checkpoint(f"{stopped['run']}/checkpoints/last")["state"]["precision"] == expected
    monkeypatch.setattr(precision, "native_bfloat16", lambda: not native)  # another machine
    with caplog.at_level("WARNING", logger="jointreg.training.loop"):
        resumed = train(tiny_recipe("precision=auto", name="resumed"), run_dir=stopped["run"], resume=True)
    assert f"resuming in {expected}, the precision the run started in" in caplog.text
    assert_same_exported_weights(straight["run"], resumed["run"])


def test_mixed_precision_puts_2d_networks_in_channels_last_only():
    from jointreg.training.precision import use_channels_last

    net2d = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3))
    assert not use_channels_last(net2d, "float32")
    assert net2d[0].weight.is_contiguous()
    assert use_channels_last(net2d, "bfloat16")
    assert net2d[2].weight.is_contiguous(memory_format=torch.channels_last)
    assert not net2d[2].weight.is_contiguous()  # 4 channels in: NHWC differs from NCHW
    net3d = torch.nn.Conv3d(1, 4, 3)
    assert not use_channels_last(net3d, "bfloat16") and net3d.weight.is_contiguous()
    assert not use_channels_last(torch.nn.Linear(3, 2), "float16")  # nothing to reorder


def _adamw_weights(layout_after_first_step, align: bool) -> torch.Tensor:
    """A channels-last conv trained 3 fused-AdamW steps; after step 1 its moments go through a
    state_dict round trip in ``layout_after_first_step`` (what a checkpoint does)."""
    from jointreg.training.networks import align_optimizer_state

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(conv.parameters(), lr=1e-2, fused=True)
    x = torch.rand(2, 3, 8, 8)
    for step in range(3):
        optimizer.zero_grad()
        conv(x).square().mean().backward()
        optimizer.step()
        if step == 0 and layout_after_first_step is not None:
            state = optimizer.state_dict()
            for moments in state["state"].values():
                for key, value in moments.items():
                    if value.dim() == 4:
                        moments[key] = value.contiguous(memory_format=layout_after_first_step)
            optimizer.load_state_dict(state)
            if align:
                align_optimizer_state(optimizer)
    return conv.weight.detach().clone()


def test_resumed_moments_take_their_weights_layout():
    """Checkpoints store tensors contiguous; without realigning, the fused kernel would pair a
    channels-last weight with NCHW moments element by element in memory order (wrong, silently)."""
    straight = _adamw_weights(None, align=False)
    assert not torch.equal(_adamw_weights(torch.contiguous_format, align=False), straight)  # the hazard is real
    assert torch.equal(_adamw_weights(torch.contiguous_format, align=True), straight)


@pytest.mark.slow
def test_bfloat16_channels_last_run_resumes_exactly(tiny_recipe, caplog):
    from jointreg.training.loop import train

    from .test_loop import assert_same_exported_weights

    with caplog.at_level("INFO", logger="jointreg.training.loop"):
        straight = train(tiny_recipe("precision=bfloat16", name="straight"))
    assert "segmentation: channels-last weights (mixed precision)" in caplog.text
    stopped = train(tiny_recipe("precision=bfloat16", name="resumed"), stop_after=8)
    resumed = train(tiny_recipe("precision=bfloat16", name="resumed"), run_dir=stopped["run"], resume=True)
    assert_same_exported_weights(straight["run"], resumed["run"])
