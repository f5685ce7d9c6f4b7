"""jointreg.inference.onnx_runtime: the ONNX Runtime backend gives PyTorch's answers."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from jointreg.errors import ConfigError
from jointreg.nets.registration import RegistrationOutput, create_registration_net
from jointreg.spatial.warp import warp

pytest.importorskip("onnxruntime")

from jointreg.inference.onnx_runtime import OnnxRuntimeRegistration, check_backend, registration_backend  # noqa: E402


class Shift(torch.nn.Module):
    """A traceable stand-in network: the same displacement (voxels) everywhere."""

    spatial_dims = 2

    def __init__(self, shift):
        super().__init__()
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32))
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a parameter, so the backend is used

    def forward(self, moving, fixed):
        flow = self.shift.view(1, -1, 1, 1).expand(moving.shape[0], -1, *moving.shape[2:]).contiguous()
        return RegistrationOutput(warp(moving, flow), flow)


def _moving_weights(net: torch.nn.Module) -> None:
    """Random weights that give a field of about a voxel (the flow heads start at zero)."""
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.1)


def test_a_known_shift_is_a_known_warp():
    # A ramp is reproduced exactly by bilinear sampling: warped(i, j) = ramp(i + 1.5, j - 0.5)
    # away from the borders.
    net = OnnxRuntimeRegistration(Shift([1.5, -0.5]))
    i, j = np.meshgrid(np.arange(16.0), np.arange(12.0), indexing="ij")
    ramp = torch.from_numpy((i + 10 * j).astype(np.float32))[None, None].repeat(3, 1, 1, 1)
    out = net(ramp, ramp)
    assert out.flow.shape == (3, 2, 16, 12)
    np.testing.assert_allclose(out.flow[:, 0].numpy(), 1.5)
    np.testing.assert_allclose(out.flow[:, 1].numpy(), -0.5)
    expected = (i + 1.5) + 10 * (j - 0.5)
    np.testing.assert_allclose(out.warped[0, 0, :-2, 1:].numpy(), expected[:-2, 1:], atol=1e-4)
    assert not any(True for _ in net.parameters())  # reports the CPU, trains nothing


@pytest.mark.parametrize("dims,size", [(2, (32, 24)), (3, (16, 16, 8))])
def test_fmirnet_through_onnxruntime_equals_torch(dims, size):
    torch.manual_seed(0)
    net = create_registration_net("fmirnet", spatial_dims=dims, features=[8, 16, 16]).eval()
    _moving_weights(net)
    backend = OnnxRuntimeRegistration(net)
    g = torch.Generator().manual_seed(1)
    moving, fixed = torch.rand((5, 1, *size), generator=g), torch.rand((5, 1, *size), generator=g)
    out = backend(moving, fixed)
    with torch.no_grad():
        ref = net(moving, fixed)
    assert float(ref.flow.abs().max()) > 0.3
    np.testing.assert_allclose(out.flow.numpy(), ref.flow.numpy(), atol=1e-4 * max(1.0, float(ref.flow.abs().max())))
    np.testing.assert_allclose(out.warped.numpy(), ref.warped.numpy(), atol=1e-4)
    assert len(backend._sessions) == 1
    backend(moving[:2], fixed[:2])  # another batch size: the same session
    assert len(backend._sessions) == 1


def test_backend_choices_and_errors():
    assert isinstance(registration_backend(Shift([0.0, 0.0]), "onnxruntime"), OnnxRuntimeRegistration)
    identity = create_registration_net("identity", spatial_dims=2)
    assert registration_backend(identity, "onnxruntime") is identity  # nothing to run
    check_backend("torch", "cuda")
    check_backend("onnxruntime", "auto")
    with pytest.raises(ConfigError, match="unknown backend 'tensorrt'"):
        check_backend("tensorrt")
    with pytest.raises(ConfigError, match="runs on the CPU"):
        check_backend("onnxruntime", "cuda:0")


def test_pseudolabel_settings_take_the_backend():
    from jointreg.inference.pseudolabel_case import PseudolabelSettings

    settings = PseudolabelSettings(mode="registration", backend="onnxruntime")
    assert "backend" not in settings.result_settings()  # the same labels to rounding
    with pytest.raises(ConfigError, match="runs on the CPU"):
        PseudolabelSettings(mode="registration", backend="onnxruntime", device="cuda")


def test_register_files_with_onnxruntime_matches_torch(tmp_path):
    from jointreg.data.nifti import write_volume
    from jointreg.export.model_folder import save_model_folder
    from jointreg.inference.register import register_files

    torch.manual_seed(0)
    net = create_registration_net("fmirnet", spatial_dims=2, features=[8, 16, 16]).eval()
    _moving_weights(net)
    model = save_model_folder(tmp_path / "model", net, kind="registration", architecture="fmirnet",
                              preprocessing={"axis": 2, "size": [24, 20], "normalization": "none"},
                              labels={"background": 0, "organ": 1}, modality="CT")
    rng = np.random.default_rng(0)
    affine = np.diag([1.5, 1.5, 4.0, 1.0])
    for role in ("moving", "fixed"):
        write_volume(tmp_path / f"{role}.nii.gz", rng.random((24, 20, 5)).astype(np.float32), affine=affine)
    labels = np.zeros((24, 20, 5), np.int16)
    labels[6:18, 5:15] = 1
    write_volume(tmp_path / "labels.nii.gz", labels, affine=affine, is_label=True)
    outputs = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / backend
        summary = register_files(model, tmp_path / "moving.nii.gz", tmp_path / "fixed.nii.gz", out,
                                 labels=tmp_path / "labels.nii.gz", device="cpu", backend=backend)
        assert json.loads((out / "register.json").read_text())["backend"] == backend == summary["backend"]
        outputs[backend] = {name: nib.load(str(out / name)).get_fdata()
                            for name in ("warped.nii.gz", "displacement.nii.gz", "warped_labels.nii.gz")}
    field = outputs["torch"]["displacement.nii.gz"]
    assert np.abs(field).max() > 0.3  # mm: the network moves things
    np.testing.assert_allclose(outputs["onnxruntime"]["displacement.nii.gz"], field, atol=1e-3)
    np.testing.assert_allclose(outputs["onnxruntime"]["warped.nii.gz"], outputs["torch"]["warped.nii.gz"], atol=1e-3)
    differ = np.mean(outputs["onnxruntime"]["warped_labels.nii.gz"] != outputs["torch"]["warped_labels.nii.gz"])
    assert differ < 1e-3  # a tie at most


def test_pseudolabel_with_onnxruntime_gives_torch_labels(trained_run, tmp_path):
    from jointreg.data.nifti import read_label
    from jointreg.inference.pseudolabel import PseudolabelSettings, pseudolabel_dataset

    labels = {}
    for backend in ("torch", "onnxruntime"):
        settings = PseudolabelSettings(mode="registration", refine=0, backend=backend)
        out = tmp_path / backend
        summary = pseudolabel_dataset(trained_run["run"], trained_run["sparse"], out, settings=settings, progress=False)
        assert summary["labelled"] == 3 and summary["settings"]["backend"] == backend
        labels[backend] = {p.name: read_label(p).array for p in sorted((out / "labelsTr").glob("*.nii.gz"))}
    assert labels["torch"].keys() == labels["onnxruntime"].keys() and len(labels["torch"]) == 3
    for name, expected in labels["torch"].items():
        assert np.mean(labels["onnxruntime"][name] != expected) < 1e-3, name


def test_segment_with_onnxruntime_gives_torch_labels(trained_run, tmp_path):
    from jointreg.data.nifti import read_label
    from jointreg.inference.segment import segment_inputs

    images = sorted((trained_run["full"] / "imagesTr").glob("*.nii.gz"))[:2]
    labels = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / backend
        manifest = segment_inputs(trained_run["run"], images, out, device="cpu", progress=False, backend=backend)
        assert len(manifest["cases"]) == 2
        labels[backend] = {p.name: read_label(p).array for p in sorted(out.glob("*.nii.gz"))}
    assert labels["torch"].keys() == labels["onnxruntime"].keys()
    for name, expected in labels["torch"].items():
        assert expected.any()  # the segmentor finds the organ
        assert np.mean(labels["onnxruntime"][name] != expected) < 1e-3, name
    with pytest.raises(ConfigError, match="runs on the CPU"):
        segment_inputs(trained_run["run"], images, tmp_path / "gpu", device="cuda", backend="onnxruntime")
