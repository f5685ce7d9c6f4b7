"""Volume segmentation: known answers with hand-made segmentors, geometry, inputs, outputs."""

import json
import logging

import nibabel as nib
import numpy as np
import pytest
import torch

from jointreg.data.nifti import Volume, read_image, read_label
from jointreg.errors import InputError
from jointreg.export.model_folder import LoadedModel
from jointreg.inference.segment import describe_training_geometry, orientation_codes, segment_inputs, segment_volume

NO_NORM = {"axis": 2, "size": [12, 10], "normalization": "none", "ct_window": [-160.0, 240.0], "mr_percentiles": [0.5, 99.5]}


class Threshold(torch.nn.Module):
    """Class 1 where the normalised intensity exceeds ``level``."""

    def __init__(self, level=0.5):
        super().__init__()
        self.level = torch.nn.Parameter(torch.tensor(level), requires_grad=False)

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), 50.0 * (x - self.level)], dim=1)


class RightHalf(torch.nn.Module):
    """Class 1 on the second half of the last (W) axis, whatever the image: not mirror-symmetric."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(()), requires_grad=False)

    def forward(self, x):
        ramp = torch.linspace(-1.0, 1.0, x.shape[-1]) + 1e-3
        return torch.stack([torch.zeros_like(x[:, 0]), ramp.expand_as(x[:, 0]) + self.bias], dim=1)


def _loaded(module, preprocessing=NO_NORM, modality="CT", extra=None):
    config = {"preprocessing": preprocessing, "labels": {"background": 0, "organ": 1}, "modality": modality,
              "spatial_dims": 2, "extra": extra or {}}
    return LoadedModel(module, "segmentor", "test", config)


def _box_volume(value=1.0, spacing=(1.0, 1.0, 3.0), affine=None):
    array = np.zeros((12, 10, 4), np.float32)
    array[3:8, 2:6, 1:3] = value
    if affine is None:
        affine = np.diag([*spacing, 1.0])
        affine[:3, 3] = (-5.0, 7.0, 2.0)
    return Volume(array, affine)


def test_segment_volume_known_answer_on_an_identity_grid():
    image = _box_volume()
    result = segment_volume(_loaded(Threshold()), image)
    assert result.labels.shape == image.shape and result.labels.dtype == np.int16
    assert np.array_equal(result.labels, (image.array > 0.5).astype(np.int16))
    assert result.probabilities is None and result.warnings == []


def test_probabilities_are_in_the_source_geometry():
    image = _box_volume()
    result = segment_volume(_loaded(Threshold()), image, probabilities=True)
    assert result.probabilities.shape == (2, *image.shape)
    assert np.allclose(result.probabilities.sum(0), 1.0, atol=1e-5)
    assert np.array_equal(result.probabilities.argmax(0), result.labels)


def test_normalisation_follows_the_given_modality():
    image = _box_volume(value=50.0)
    ct = {**NO_NORM, "normalization": "auto"}
    model = _loaded(Threshold(0.7), preprocessing=ct, modality="CT")
    # CT window [-160, 240]: 50 HU -> 0.525 < 0.7, nothing; MR percentiles: the box -> 1.0
    assert segment_volume(model, image).labels.sum() == 0
    assert np.array_equal(segment_volume(model, image, modality="T2").labels, (image.array > 0).astype(np.int16))


def _flipped_copy(image: Volume, axis: int) -> Volume:
    """The same voxels in world space, stored with ``axis`` reversed (another orientation)."""
    flip = np.eye(4)
    flip[axis, axis] = -1.0
    flip[axis, 3] = image.shape[axis] - 1
    return Volume(np.ascontiguousarray(np.flip(image.array, axis)), image.affine @ flip)


def test_another_orientation_is_segmented_in_the_training_orientation(caplog):
    image = _box_volume()
    flipped = _flipped_copy(image, 1)
    assert orientation_codes(image.affine) == "RAS" and orientation_codes(flipped.affine) == "RPS"
    training = {"orientations": {"RAS": 3}, "in_plane_spacing": [1.0, 1.0], "pixel_spacing": [1.0, 1.0]}
    model = _loaded(RightHalf(), extra={"training_geometry": training})
    reference = segment_volume(model, image).labels
    with caplog.at_level(logging.WARNING):
        result = segment_volume(model, flipped, case="flipped")
    assert result.reoriented == "RAS"
    assert "orientation RPS differs from the training data's RAS" in caplog.text
    # the same anatomy gets the same labels: the output is the reference, stored flipped like its input
    assert np.array_equal(result.labels, np.flip(reference, 1))
    assert not np.array_equal(result.labels, reference)
    # without a recorded training orientation the array is segmented as it is
    plain = segment_volume(_loaded(RightHalf()), flipped).labels
    assert np.array_equal(plain, reference)


def test_a_very_different_spacing_is_resampled_with_a_warning(caplog):
    training = {"orientations": {"RAS": 2}, "in_plane_spacing": [1.0, 1.0], "pixel_spacing": [1.0, 1.0]}
    model = _loaded(Threshold(), extra={"training_geometry": training})
    assert segment_volume(model, _box_volume(spacing=(1.2, 1.1, 3.0))).warnings == []
    with caplog.at_level(logging.WARNING):
        result = segment_volume(model, _box_volume(spacing=(2.5, 2.5, 3.0)), case="coarse")
    assert len(result.warnings) == 2
    assert "in-plane spacing 2.5 × 2.5 mm differs by 150% from the training data's 1 × 1 mm" in result.warnings[0]
    assert "resampled to the training grid" in result.warnings[0]
    assert "2.5 mm per training pixel against 1 mm in training" in result.warnings[1]
    assert "coarse" in caplog.text
    assert result.labels.sum() > 0


def test_describe_training_geometry(trained_run):
    from jointreg.data.dataset import Dataset
    from jointreg.data.slices import SliceSpec, load_sliced_dataset

    volumes = load_sliced_dataset(Dataset.open(trained_run["sparse"]), SliceSpec(size=(32, 32)), progress=False)
    geometry = describe_training_geometry(volumes)
    spacing = volumes[0].geometry.source_spacing
    assert geometry["orientations"] == {orientation_codes(volumes[0].reference.affine): 3}
    assert geometry["in_plane_spacing"] == pytest.approx(list(spacing), abs=1e-4)
    assert geometry["pixel_spacing"] == pytest.approx([64 * spacing[0] / 32] * 2, abs=1e-3)
    assert geometry["axes"] == [2] and geometry["volumes"] == 3
    config = json.loads((trained_run["run"] / "export" / "segmentor" / "config.json").read_text())
    assert config["extra"]["training_geometry"]["orientations"] == geometry["orientations"]


def test_segment_inputs_keeps_the_input_geometry(trained_run, tmp_path):
    sparse = trained_run["sparse"]
    out = tmp_path / "pred"
    manifest = segment_inputs(trained_run["run"], [sparse], out, probabilities=True, progress=False, device="cpu")
    assert sorted(manifest["cases"]) == ["liver_ct_000", "liver_ct_001", "liver_ct_002", "liver_ct_003"]
    assert manifest["labels"]["liver"] == 1
    for case in manifest["cases"]:
        split = "Ts" if case == "liver_ct_003" else "Tr"
        source = nib.load(str(sparse / f"images{split}" / f"{case}_0000.nii.gz"))
        label = nib.load(str(out / f"{case}.nii.gz"))
        assert label.shape == source.shape
        assert np.array_equal(label.affine, source.affine)
        assert label.header.get_zooms() == source.header.get_zooms()
        assert label.get_data_dtype() == np.uint8
        probs = read_image(out / "probabilities" / f"{case}.nii.gz", ndim=4)
        assert probs.shape == (*source.shape, 5)
        assert np.allclose(probs.array.sum(-1), 1.0, atol=1e-4)
        assert np.array_equal(probs.array.argmax(-1), read_label(out / f"{case}.nii.gz").array)
    assert json.loads((out / "segmentation.json").read_text())["cases"].keys() == manifest["cases"].keys()


def test_existing_outputs_need_overwrite(trained_run, tmp_path):
    image = trained_run["sparse"] / "imagesTr" / "liver_ct_000_0000.nii.gz"
    out = tmp_path / "pred"
    first = segment_inputs(trained_run["run"], [image], out, progress=False)
    assert first["complete"] is True and first["already_done"] == []
    before = (out / "liver_ct_000.nii.gz").stat().st_mtime_ns
    manifest = (out / "segmentation.json").read_bytes()
    # The same job again: the case is done (same model, settings and input bytes), nothing is rewritten.
    again = segment_inputs(trained_run["run"], [image], out, progress=False)
    assert again["already_done"] == ["liver_ct_000"]
    assert (out / "liver_ct_000.nii.gz").stat().st_mtime_ns == before and (out / "segmentation.json").read_bytes() == manifest
    # Another job (other settings) would replace a finished result: refused without overwrite.
    with pytest.raises(InputError, match=r"already exists \(1 output file\(s\) would be replaced; pass --overwrite\)"):
        segment_inputs(trained_run["run"], [image], out, progress=False, probabilities=True)
    assert (out / "liver_ct_000.nii.gz").stat().st_mtime_ns == before
    segment_inputs(trained_run["run"], [image], out, progress=False, overwrite=True, probabilities=True)
    assert (out / "probabilities" / "liver_ct_000.nii.gz").is_file()


def test_the_manifest_lists_inputs_and_model_by_digest(trained_run, tmp_path):
    import hashlib

    image = trained_run["sparse"] / "imagesTr" / "liver_ct_000_0000.nii.gz"
    manifest = segment_inputs(trained_run["run"], [image], tmp_path / "pred", progress=False)
    weights = trained_run["run"] / "export" / "segmentor" / "model.safetensors"
    assert manifest["model_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert manifest["cases"]["liver_ct_000"]["input_sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
    assert "planned" not in json.loads((tmp_path / "pred" / "segmentation.json").read_text())


def test_output_folder_cannot_be_an_input_folder(trained_run, tmp_path):
    images = trained_run["sparse"] / "imagesTr"
    before = sorted(p.name for p in images.iterdir())
    with pytest.raises(InputError, match="the output folder is an input folder"):
        segment_inputs(trained_run["run"], [images / "liver_ct_000_0000.nii.gz"], images, progress=False)
    with pytest.raises(InputError, match="the output folder is an input folder"):
        segment_inputs(trained_run["run"], [trained_run["sparse"]], trained_run["sparse"], progress=False)
    with pytest.raises(InputError, match="lies inside the input dataset"):
        segment_inputs(trained_run["run"], [trained_run["sparse"]], trained_run["sparse"] / "pred", progress=False)
    assert sorted(p.name for p in images.iterdir()) == before
