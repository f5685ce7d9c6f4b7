"""jointreg.inference.autocast: bfloat16 inference gives float32 outputs close to float32's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jointreg.errors import ConfigError
from jointreg.inference.autocast import Bfloat16Inference, _as_float32, check_bfloat16
from jointreg.inference.onnx_runtime import check_backend, registration_backend, segmentor_backend
from jointreg.nets.registration import RegistrationOutput, create_registration_net


@pytest.fixture
def bfloat16_hardware(monkeypatch):
    """Pretend the device computes bfloat16 in hardware (the values are the same where it is
    emulated; only the speed differs)."""
    import jointreg.utils.device as device

    monkeypatch.setattr(device, "bfloat16_in_hardware", lambda _device: True)


def _moving_fmirnet(seed: int = 0):
    torch.manual_seed(seed)
    net = create_registration_net("fmirnet", spatial_dims=2, features=[8, 16, 16]).eval()
    with torch.no_grad():
        for p in net.parameters():  # a field of about a voxel (the flow heads start at zero)
            p.copy_(torch.randn_like(p) * 0.1)
    return net


def test_outputs_come_back_in_float32_whatever_holds_them():
    half = torch.ones(2, dtype=torch.bfloat16)
    out = _as_float32(RegistrationOutput(half, half * 2, extras={"flows": (half, half)}, penalties={}))
    assert out.warped.dtype == out.flow.dtype == out.extras["flows"][1].dtype == torch.float32
    assert out.flow.tolist() == [2.0, 2.0]
    mixed = _as_float32((half, torch.arange(3), [half], {"a": half}, "text"))
    assert mixed[0].dtype == torch.float32 and mixed[1].dtype == torch.int64  # integers stay integers
    assert mixed[2][0].dtype == mixed[3]["a"].dtype == torch.float32 and mixed[4] == "text"


def test_fmirnet_in_bfloat16_is_float32_to_bfloat16_rounding():
    net = _moving_fmirnet()
    g = torch.Generator().manual_seed(1)
    moving, fixed = torch.rand((3, 1, 32, 24), generator=g), torch.rand((3, 1, 32, 24), generator=g)
    with torch.no_grad():
        ref = net(moving, fixed)
    wrapped = Bfloat16Inference(net)
    with torch.no_grad():
        out = wrapped(moving, fixed)
    assert out.flow.dtype == out.warped.dtype == torch.float32 and out.flow.shape == ref.flow.shape
    scale = float(ref.flow.abs().max())
    assert scale > 0.3  # the network moves things
    error = float((out.flow - ref.flow).abs().max())
    # bfloat16 keeps 8 mantissa bits (~0.4 %); a few layers of it stay within a few percent of the field
    assert 0 < error < 0.05 * scale
    np.testing.assert_allclose(out.warped.numpy(), ref.warped.numpy(), atol=0.05)
    assert next(wrapped.net.parameters()).is_contiguous(memory_format=torch.channels_last) or \
        next(wrapped.net.parameters()).dim() != 4
    assert wrapped.spatial_dims == 2 and list(wrapped.parameters())  # a drop-in: the device is the net's


def test_the_backend_is_refused_where_bfloat16_is_emulated(monkeypatch):
    import jointreg.utils.device as device

    monkeypatch.setattr(device, "bfloat16_in_hardware", lambda _device: False)
    with pytest.raises(ConfigError, match="no bfloat16 matrix units .* use --backend torch"):
        check_bfloat16("cpu")
    with pytest.raises(ConfigError, match="torch-bfloat16"):
        check_backend("torch-bfloat16", "cpu")


def test_backend_wrappers(bfloat16_hardware):
    check_backend("torch-bfloat16", "cpu")
    net = _moving_fmirnet()
    assert isinstance(registration_backend(net, "torch-bfloat16"), Bfloat16Inference)
    identity = create_registration_net("identity", spatial_dims=2)
    assert registration_backend(identity, "torch-bfloat16") is identity  # nothing to run
    segmentor = torch.nn.Conv2d(1, 2, 3, padding=1)
    logits = segmentor_backend(segmentor, "torch-bfloat16")(torch.rand(2, 1, 8, 8))
    assert logits.dtype == torch.float32 and logits.shape == (2, 2, 8, 8)


def test_pseudolabel_settings_record_bfloat16(bfloat16_hardware):
    from jointreg.inference.pseudolabel_case import PseudolabelSettings

    assert PseudolabelSettings(mode="registration", backend="torch-bfloat16").result_settings()["precision"] == "bfloat16"
    assert "precision" not in PseudolabelSettings(mode="registration").result_settings()  # float32: as before
    assert "precision" not in PseudolabelSettings(mode="segmentor", backend="torch-bfloat16").result_settings()


def test_pseudolabel_and_segment_in_bfloat16_are_close_to_float32(trained_run, tmp_path, bfloat16_hardware):
    from jointreg.data.nifti import read_label
    from jointreg.inference.pseudolabel import PseudolabelSettings, pseudolabel_dataset
    from jointreg.inference.segment import segment_inputs

    labels = {}
    for backend in ("torch", "torch-bfloat16"):
        settings = PseudolabelSettings(mode="registration", refine=0, backend=backend)
        out = tmp_path / backend
        summary = pseudolabel_dataset(trained_run["run"], trained_run["sparse"], out, settings=settings, progress=False)
        assert summary["labelled"] == 3
        labels[backend] = {p.name: read_label(p).array for p in sorted((out / "labelsTr").glob("*.nii.gz"))}
    for name, expected in labels["torch"].items():
        assert expected.any() and np.mean(labels["torch-bfloat16"][name] != expected) < 0.01, name
    # A resumed job with the other precision is another job: refused, not mixed.
    with pytest.raises(Exception, match="(?i)settings|other"):
        pseudolabel_dataset(trained_run["run"], trained_run["sparse"], tmp_path / "torch",
                            settings=PseudolabelSettings(mode="registration", refine=0, backend="torch-bfloat16"),
                            progress=False)
    images = sorted((trained_run["full"] / "imagesTr").glob("*.nii.gz"))[:2]
    segmented = {}
    for backend in ("torch", "torch-bfloat16"):
        manifest = segment_inputs(trained_run["run"], images, tmp_path / f"seg-{backend}", device="cpu",
                                  progress=False, backend=backend)
        assert manifest["precision"] == ("float32" if backend == "torch" else "bfloat16")
        segmented[backend] = {p.name: read_label(p).array for p in sorted((tmp_path / f"seg-{backend}").glob("*.nii.gz"))}
    for name, expected in segmented["torch"].items():
        assert expected.any() and np.mean(segmented["torch-bfloat16"][name] != expected) < 0.01, name
    # The float32 folder is not resumed by a bfloat16 call (nor the other way round), and a
    # manifest of an earlier version, which recorded no precision, counts as float32.
    from jointreg.inference.segment_job import _same

    float32 = {k: v for k, v in manifest.items() if k != "precision"}
    assert _same(float32, {"precision": "float32"}) and not _same(float32, {"precision": "bfloat16"})
    assert not _same(manifest, {"precision": "float32"})
