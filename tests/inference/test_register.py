"""jointreg.inference.register: known answers with networks whose displacement is known."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from jointreg.data.nifti import Volume, read_image, read_label
from jointreg.errors import ConfigError, InputError, JointregError
from jointreg.export.model_folder import LoadedModel
from jointreg.inference.register import register_files, register_volumes
from jointreg.inference.register_inputs import parse_slice_map
from jointreg.nets.registration.output import RegistrationOutput
from jointreg.spatial.warp import warp


class ConstantFlow(torch.nn.Module):
    """A stand-in registration network: the same displacement (model-grid voxels) everywhere."""

    def __init__(self, shift, value: float | None = None):
        super().__init__()
        self.shift = tuple(float(s) for s in shift)
        self.value = value  # e.g. NaN, to imitate a diverged network
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a device

    def forward(self, moving, fixed):
        flow = torch.zeros(moving.shape[0], len(self.shift), *moving.shape[2:])
        for d, s in enumerate(self.shift):
            flow[:, d] = s if self.value is None else self.value
        return RegistrationOutput(warp(moving, flow), flow)


def loaded(shift=(0.0, 0.0), *, size=(32, 32), axis=None, value=None, normalization="none") -> LoadedModel:
    dims = len(shift)
    preprocessing = {"axis": axis, "normalization": normalization}
    if size is not None:
        preprocessing["size"] = list(size)
    config = {"preprocessing": preprocessing, "modality": "CT", "spatial_dims": dims, "labels": {"background": 0, "organ": 1}}
    return LoadedModel(ConstantFlow(shift, value), "registration", "constant", config)


def ramp_volume(shape, affine, weights=(1.0, 10.0, 100.0)) -> Volume:
    """Intensity = a linear function of the voxel index (bilinear sampling reproduces it exactly)."""
    grid = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    return Volume(sum(w * g for w, g in zip(weights, grid)).astype(np.float32), np.asarray(affine, float))


def labels_like(shape, affine) -> Volume:
    rng = np.random.default_rng(0)
    return Volume(rng.integers(0, 3, size=shape).astype(np.int16), np.asarray(affine, float))


AFFINE = np.array([[-1.0, 0, 0, 10], [0, 1.0, 0, -5], [0, 0, 5.0, 2], [0, 0, 0, 1]])


# --------------------------------------------------------------------------------------------
# 2D models on volumes
# --------------------------------------------------------------------------------------------
def test_constant_shift_gives_known_warp_and_field():
    # 64 × 48 in-plane at 1 mm on a 32² grid: 2 mm per model pixel (24 columns + 4 padding).
    # A shift of (1.5, 0.5) model pixels is (3, 1) source voxels.
    moving = ramp_volume((64, 48, 6), AFFINE)
    labels = labels_like((64, 48, 6), AFFINE)
    result = register_volumes(loaded((1.5, 0.5)), moving, moving, moving_labels=labels)
    assert result.axis == 2 and result.registered.all() and len(result.pairs) == 6
    np.testing.assert_allclose(result.displacement_voxels, np.broadcast_to([3.0, 1.0, 0.0], (64, 48, 6, 3)), atol=1e-4)
    # The affine flips axis 0 (world R = -i): 3 voxels along i are -3 mm in RAS, +3 mm in LPS.
    np.testing.assert_allclose(result.displacement_mm[5, 7, 2], [-3.0, 1.0, 0.0], atol=1e-4)
    np.testing.assert_allclose(result.field_array("ants")[5, 7, 2, 0], [3.0, -1.0, 0.0], atol=1e-4)
    np.testing.assert_allclose(result.field_array("nifti")[5, 7, 2, 0], [-3.0, 1.0, 0.0], atol=1e-4)
    assert result.field_array("ants").shape == (64, 48, 6, 1, 3)
    assert result.field_array("voxel").shape == (64, 48, 6, 3)
    np.testing.assert_allclose(result.warped[:61, :47], moving.array[3:, 1:], atol=1e-3)
    np.testing.assert_array_equal(result.warped_labels[:61, :47], labels.array[3:, 1:])
    # Beyond the moving image's edge the edge is repeated.
    np.testing.assert_allclose(result.warped[62], moving.array[63, np.r_[1:48, 47]], atol=1e-3)
    assert [p["folding_percent"] for p in result.pairs] == [0.0] * 6
    assert all(p["sdlogj"] == pytest.approx(0.0, abs=1e-6) for p in result.pairs)


def test_slice_map_moves_between_slices_and_leaves_the_rest_zero():
    moving = ramp_volume((32, 32, 8), AFFINE)
    result = register_volumes(loaded((0.0, 0.0)), moving, moving, slice_map=[(3, 5), (3, 6)])
    assert [(p["moving"], p["fixed"]) for p in result.pairs] == [(3, 5), (3, 6)]
    np.testing.assert_allclose(result.warped[:, :, 5], moving.array[:, :, 3], atol=1e-3)
    np.testing.assert_allclose(result.warped[:, :, 6], moving.array[:, :, 3], atol=1e-3)
    assert not result.warped[:, :, [0, 1, 2, 3, 4, 7]].any()
    np.testing.assert_allclose(result.displacement_voxels[:, :, 5, 2], -2.0)
    np.testing.assert_allclose(result.displacement_mm[:, :, 6, 2], -15.0)  # 3 slices of 5 mm
    assert not result.displacement_mm[:, :, 7].any()
    assert result.registered[:, :, 5].all() and not result.registered[:, :, 4].any()


def test_moving_and_fixed_on_different_grids_meet_in_world_space():
    # Moving: 64² at 1 mm; fixed: 32² at 2 mm over the same field of view (the outer voxel
    # edges coincide). A zero flow on the model grid is then the identity in millimetres.
    moving_affine = np.diag([1.0, 1.0, 5.0, 1.0])
    fixed_affine = np.diag([2.0, 2.0, 5.0, 1.0])
    fixed_affine[:2, 3] = 0.5
    moving = ramp_volume((64, 64, 3), moving_affine, weights=(1.0, 0.0, 0.0))  # intensity = world x
    fixed = Volume(np.zeros((32, 32, 3), np.float32), fixed_affine)
    result = register_volumes(loaded((0.0, 0.0)), moving, fixed)
    np.testing.assert_allclose(result.displacement_mm, 0.0, atol=1e-4)
    world_x = 2.0 * np.arange(32) + 0.5
    np.testing.assert_allclose(result.warped[1:-1, 10, 1], world_x[1:-1], atol=1e-3)


@pytest.mark.parametrize("axis", [2, 0])
def test_a_2d_image_needs_an_axis(axis):
    image = Volume(np.random.default_rng(1).random((40, 30)).astype(np.float32), np.diag([1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(InputError, match="--axis 2"):
        register_volumes(loaded((0.0, 0.0)), image, image)
    # Either way the image is one slice; its in-plane axes keep their order.
    result = register_volumes(loaded((1.0, 0.0), size=(40, 40)), image, image, axis=axis)
    assert result.warped.shape == (40, 30)
    np.testing.assert_allclose(result.warped[:39], image.array[1:], atol=1e-4)
    assert result.field_array("ants").shape == (40, 30, 1, 1, 2)
    np.testing.assert_allclose(result.field_array("voxel")[3, 4], [1.0, 0.0], atol=1e-4)
    np.testing.assert_allclose(result.field_array("ants")[3, 4, 0, 0], [-1.0, 0.0], atol=1e-4)


# --------------------------------------------------------------------------------------------
# 3D models
# --------------------------------------------------------------------------------------------
def test_3d_model_resamples_whole_volumes():
    moving = ramp_volume((32, 32, 16), np.diag([1.0, 1.0, 2.0, 1.0]))
    # 16 × 16 × 8 working grid: one model voxel along axis 2 is two source voxels.
    result = register_volumes(loaded((0.0, 0.0, 1.0), size=(16, 16, 8)), moving, moving)
    assert result.axis is None and len(result.pairs) == 1
    np.testing.assert_allclose(result.displacement_voxels[4, 5, 6], [0.0, 0.0, 2.0], atol=1e-4)
    np.testing.assert_allclose(result.displacement_mm[4, 5, 6], [0.0, 0.0, 4.0], atol=1e-4)
    np.testing.assert_allclose(result.warped[:, :, :14], moving.array[:, :, 2:], atol=1e-3)
    native = register_volumes(loaded((0.0, 1.0, 0.0), size=None), moving, moving)
    np.testing.assert_allclose(native.displacement_voxels[..., 1], 1.0, atol=1e-5)
    with pytest.raises(ConfigError, match="2D models only"):
        register_volumes(loaded((0.0, 0.0, 1.0), size=(16, 16, 8)), moving, moving, slice_map=[(1, 1)])


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
def test_bad_inputs_are_clear_errors():
    volume = ramp_volume((32, 32, 6), AFFINE)
    other = ramp_volume((32, 32, 7), AFFINE)
    flat = Volume(np.zeros((32, 32), np.float32), AFFINE)
    model = loaded((0.0, 0.0))
    with pytest.raises(InputError, match="same number of dimensions"):
        register_volumes(model, volume, flat)
    with pytest.raises(InputError, match="6 slices and the fixed image 7"):
        register_volumes(model, volume, other)
    with pytest.raises(ConfigError, match="out of range"):
        register_volumes(model, volume, other, slice_map=[(6, 2)])
    with pytest.raises(InputError, match="label shape"):
        register_volumes(model, volume, volume, moving_labels=labels_like((32, 32, 5), AFFINE))
    with pytest.raises(InputError, match="3D model needs 3D volumes"):
        register_volumes(loaded((0.0, 0.0, 0.0), size=None), flat, flat, axis=2)
    with pytest.raises(ConfigError, match="label mode"):
        register_volumes(model, volume, volume, label_mode="cubic")
    segmentor = LoadedModel(model.model, "segmentor", "fcn", model.config)
    with pytest.raises(InputError, match="expected a registration model"):
        register_volumes(segmentor, volume, volume)


def test_nan_displacements_are_reported_not_written():
    volume = ramp_volume((32, 32, 4), AFFINE)
    with pytest.raises(JointregError, match=r"NaN or infinite displacements for slice pair\(s\) 0->0, 1->1, 2->2 \(and 1 more\)"):
        register_volumes(loaded((0.0, 0.0), value=float("nan")), volume, volume)


# --------------------------------------------------------------------------------------------
# files (a real, barely trained FMIRNet from the shared tiny run)
# --------------------------------------------------------------------------------------------
def test_register_files_writes_outputs_on_the_fixed_grid(trained_run, tmp_path):
    model = trained_run["run"] / "export" / "registration"
    images = sorted((trained_run["full"] / "imagesTr").glob("*.nii.gz"))
    labels = sorted((trained_run["full"] / "labelsTr").glob("*.nii.gz"))
    out = tmp_path / "reg"
    summary = register_files(model, images[0], images[1], out, labels=labels[0], field_format="voxel", device="cpu")
    fixed = read_image(images[1])
    assert sorted(p.name for p in out.iterdir()) == ["displacement.nii.gz", "register.json", "warped.nii.gz", "warped_labels.nii.gz"]
    for name in ("warped.nii.gz", "warped_labels.nii.gz", "displacement.nii.gz"):
        image = nib.load(str(out / name))
        np.testing.assert_allclose(image.affine, fixed.affine)
        assert image.shape[:3] == fixed.shape
    assert json.loads((out / "register.json").read_text()) == summary
    assert summary["slice_axis"] == 2 and summary["metrics_on_model_grid"]["pairs"] == fixed.shape[2]
    # The written field reproduces the warped image and labels exactly (same grid here).
    field = np.moveaxis(nib.load(str(out / "displacement.nii.gz")).get_fdata(dtype=np.float32), -1, 0)
    moving = read_image(images[0])
    again = warp(torch.from_numpy(moving.array)[None, None], torch.from_numpy(np.ascontiguousarray(field))[None])
    np.testing.assert_allclose(again[0, 0].numpy(), read_image(out / "warped.nii.gz").array, atol=1e-3)
    warped_labels = read_label(out / "warped_labels.nii.gz").array
    assert set(np.unique(warped_labels)) <= set(np.unique(read_label(labels[0]).array))
    with pytest.raises(InputError, match="already exists"):
        register_files(model, images[0], images[1], out)
    register_files(model, images[0], images[1], out, overwrite=True, device="cpu", slice_map=[(3, 4)])
    header = nib.load(str(out / "displacement.nii.gz")).header
    assert int(header["intent_code"]) == 1007 and nib.load(str(out / "displacement.nii.gz")).shape[3:] == (1, 3)
    assert not (out / "warped_labels.nii.gz").exists()


# --------------------------------------------------------------------------------------------
# real data: a tiny FMIRNet trained on two CHAOS T2 volumes, then a cross-volume pair
# --------------------------------------------------------------------------------------------
@pytest.mark.realdata
@pytest.mark.slow
def test_register_a_real_chaos_pair(shared_data, tmp_path):
    from scipy.ndimage import map_coordinates

    from data_tools._common import LabelMap
    from data_tools.paired_nifti import convert_paired_nifti
    from jointreg.training.config import recipe_from_dict
    from jointreg.training.loop import train

    source = tmp_path / "source"
    source.mkdir()
    for n in (1, 2):
        for kind in ("image", "label"):
            (source / f"{kind}_{n}.nii.gz").symlink_to(shared_data / "chaos_t2" / f"{kind}_{n}.nii.gz")
    dataset = convert_paired_nifti(
        str(source / "image_*.nii.gz"), tmp_path / "chaos", modality="T2", labels=str(source / "label_*.nii.gz"),
        label_map=LabelMap.parse(["1=liver:1"]), unmapped="background",
    )
    recipe = recipe_from_dict({
        "name": "chaos_tiny", "output": str(tmp_path / "runs"),
        "data": {"dataset": str(dataset), "size": [64, 64]},
        "registration": {"batch_size": 2, "arguments": {"features": [4, 8, 8]}},
        "segmentation": {"enabled": False},
        "schedule": {"registration_warmup": 4, "rounds": 0},
        "logging": {"tensorboard": False, "image_every": 0, "log_every": 0, "progress": False},
        "evaluation": {"enabled": False},
    })
    model = Path(train(recipe, progress=False)["exported"]["registration"])

    moving_path, fixed_path = shared_data / "chaos_t2" / "image_1.nii.gz", shared_data / "chaos_t2" / "image_2.nii.gz"
    out = tmp_path / "reg"
    summary = register_files(
        model, moving_path, fixed_path, out, labels=shared_data / "chaos_t2" / "label_1.nii.gz",
        slice_map=parse_slice_map("15:12-18"), device="cpu",
    )
    assert summary["unregistered_fixed_slices"] == [k for k in range(read_image(fixed_path).shape[2]) if not 12 <= k <= 18]
    assert all(np.isfinite(p["ncc"]) for p in summary["pairs"])
    moving, fixed = read_image(moving_path), read_image(fixed_path)
    warped = nib.load(str(out / "warped.nii.gz"))
    np.testing.assert_allclose(warped.affine, fixed.affine)
    # Follow the written field (ANTs: mm in LPS) back into the moving image by hand: the moving
    # intensities found there are the warped image.
    d_lps = nib.load(str(out / "displacement.nii.gz")).get_fdata(dtype=np.float32)[:, :, 12:19, 0]
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in fixed.shape[:2]], np.arange(12, 19), indexing="ij"), -1)
    world = grid @ fixed.affine[:3, :3].T + fixed.affine[:3, 3] + d_lps * np.array([-1.0, -1.0, 1.0])
    index = (world - moving.affine[:3, 3]) @ np.linalg.inv(moving.affine[:3, :3]).T
    np.testing.assert_allclose(index[..., 2], 15.0, atol=1e-3)
    expected = map_coordinates(moving.array, np.moveaxis(index, -1, 0), order=1, mode="nearest")
    np.testing.assert_allclose(warped.get_fdata()[:, :, 12:19], expected, rtol=1e-4, atol=1e-2)
    warped_labels = read_label(out / "warped_labels.nii.gz").array
    assert set(np.unique(warped_labels)) <= {0, 1, 2, 3, 4} and (warped_labels[:, :, 12:19] == 1).any()


def test_the_identity_model_registers_nothing(tmp_path):
    """``registration.architecture: identity`` exports a model folder that `register` can use:
    zero displacement, the moving image resampled onto the fixed grid unchanged."""
    from jointreg.data.nifti import write_volume
    from jointreg.export.model_folder import save_model_folder
    from jointreg.nets.registration import create_registration_net

    shape = (24, 20, 6)
    volume = ramp_volume(shape, AFFINE)
    path = tmp_path / "image.nii.gz"
    write_volume(path, volume.array, affine=volume.affine)
    model = save_model_folder(
        tmp_path / "identity", create_registration_net("identity"), kind="registration", architecture="identity",
        preprocessing={"axis": 2, "size": [24, 20], "normalization": "none"}, labels={"background": 0, "organ": 1},
        modality="CT",
    )
    summary = register_files(model, path, path, tmp_path / "out", field_format="voxel", device="cpu")
    field = nib.load(str(tmp_path / "out" / "displacement.nii.gz")).get_fdata()
    assert np.abs(field).max() == 0.0
    np.testing.assert_allclose(read_image(tmp_path / "out" / "warped.nii.gz").array, volume.array, atol=1e-4)
    assert summary["metrics_on_model_grid"]["pairs"] == shape[2]


@pytest.mark.parametrize("name", ["tvf", "tvf-lddmm", "affine-deformable", "deformable-gradients", "affine",
                                  "pmrnet", "identity"])
@pytest.mark.parametrize("dims", [2, 3])
def test_register_runs_every_registration_system_from_its_model_folder(name, dims, tmp_path):
    """Every registry network, exported as a model folder, registers files (2D slice by slice, 3D
    whole volumes) and writes a finite displacement on the fixed grid."""
    from jointreg.data.nifti import write_volume
    from jointreg.export.model_folder import save_model_folder
    from jointreg.nets.registration import REGISTRATION_NETS, create_registration_net

    torch.manual_seed(0)
    net = create_registration_net(name, spatial_dims=dims, **REGISTRATION_NETS[name].tiny_arguments()).eval()
    shape = (20, 16, 8)
    preprocessing = {"axis": 2, "size": [20, 16], "normalization": "none"} if dims == 2 else \
        {"axis": None, "size": list(shape), "normalization": "none"}
    model = save_model_folder(tmp_path / "model", net, kind="registration", architecture=name, preprocessing=preprocessing,
                              labels={"background": 0, "organ": 1}, modality="CT")
    for role, weights in (("moving", (1.0, 2.0, 3.0)), ("fixed", (1.5, 2.0, 2.5))):
        volume = ramp_volume(shape, AFFINE, weights)
        write_volume(tmp_path / f"{role}.nii.gz", volume.array, affine=volume.affine)
    register_files(model, tmp_path / "moving.nii.gz", tmp_path / "fixed.nii.gz", tmp_path / "out", device="cpu")
    field = nib.load(str(tmp_path / "out" / "displacement.nii.gz"))
    assert field.shape[:3] == shape and np.isfinite(field.get_fdata()).all()
    assert read_image(tmp_path / "out" / "warped.nii.gz").shape == shape
