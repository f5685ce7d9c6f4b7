"""3D mode (volumes.enabled): pairs of whole volumes, atlas labels registered onto targets, and
a run from `sparsify --volumes` data to a 3D registration model that `register` reads."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from jointreg.data.nifti import Volume
from jointreg.data.slices import SliceSpec, slice_volume
from jointreg.inference.volume_box import VolumeBox, label_box
from jointreg.errors import ConfigError, InputError
from jointreg.nets.registration.output import RegistrationOutput
from jointreg.inference.atlases import BoxedVolumes, fuse, propagate_atlases, register_onto_stack
from jointreg.training.volume_mode import VolumePairs, score_propagation

IGNORE = 2


def _volume(case, shift=0, annotated=True, shape=(32, 32, 12)):
    """A block phantom: a bright box (class 1) on a dark background, moved ``shift`` voxels
    along axis 0; annotated everywhere or nowhere (its complete labels kept as full labels)."""
    image = np.zeros(shape, np.float32)
    full = np.zeros(shape, np.int16)
    image[8 + shift:20 + shift, 10:22, 3:9] = 1.0
    full[8 + shift:20 + shift, 10:22, 3:9] = 1
    label = full if annotated else np.full(shape, IGNORE, np.int16)
    affine = np.diag([2.0, 2.0, 5.0, 1.0])
    spec = SliceSpec(size=(32, 32), normalization="none")
    return slice_volume(Volume(image, affine), Volume(label, affine), spec, modality="CT", ignore_label=IGNORE,
                        case=case, full_label=Volume(full, affine))


def _pair(shift):
    """An annotated atlas and an unannotated target whose block lies ``shift`` voxels further along axis 0."""
    return _volume("atlas"), _volume("target", shift, annotated=False)


class ConstantFlow(torch.nn.Module):
    """A "registration network" that moves every voxel by the same displacement (box voxels)."""

    spatial_dims = 3

    def __init__(self, shift):
        super().__init__()
        self.shift = torch.tensor(shift, dtype=torch.float32).view(1, 3, 1, 1, 1)

    def forward(self, moving, fixed):
        flow = self.shift.expand(moving.shape[0], 3, *moving.shape[2:]).clone()
        return RegistrationOutput(warped=moving, flow=flow)


def test_known_shift_carries_the_atlas_label_onto_the_target_exactly():
    atlas, target = _pair(shift=3)
    box = VolumeBox((2.0, 2.0, 5.0), (32, 32, 16))
    boxed = BoxedVolumes([atlas], box, ignore_index=IGNORE)
    # Pull convention: target(p) = atlas(p - 3), so the field is -3 voxels along axis 0.
    result = propagate_atlases(ConstantFlow([-3.0, 0.0, 0.0]), boxed, target, num_classes=2, device=torch.device("cpu"))
    labels = fuse(result, IGNORE)
    known = labels != IGNORE
    # Everything but the 3 slices the atlas cannot reach (beyond its extent) is known, and right.
    assert known[:, 3:, :].all() and not known[:, :3, :].any()
    np.testing.assert_array_equal(labels[known], target.full_labels[known])
    # The identity misses the shift: the block's first 3 rows become background.
    identity = fuse(propagate_atlases(None, boxed, target, num_classes=2, device=torch.device("cpu")), IGNORE)
    assert (identity[target.full_labels == 1] == 0).sum() == 3 * 12 * 6


def test_scores_name_the_registration_and_the_identity():
    atlas, target = _pair(shift=3)
    boxed = BoxedVolumes([atlas], VolumeBox((2.0, 2.0, 5.0), (32, 32, 16)), ignore_index=IGNORE)
    scores = score_propagation(ConstantFlow([-3.0, 0.0, 0.0]), boxed, [atlas, target], num_classes=2,
                               ignore_index=IGNORE, device=torch.device("cpu"))
    assert scores["volumes"] == 1.0  # the atlas itself is skipped
    assert scores["label_dice"] == pytest.approx(1.0)
    # 12 rows against 12 moved by 3: Dice 2·9/24 on the known voxels (the identity reaches all).
    assert scores["identity_dice"] == pytest.approx(18 / 24, abs=1e-6)


def test_two_atlases_are_averaged_and_disagreement_goes_to_the_higher_probability():
    atlas = _volume("atlas")
    boxed = BoxedVolumes([atlas, atlas], VolumeBox((2.0, 2.0, 5.0), (32, 32, 16)), ignore_index=IGNORE)
    image = np.zeros((32, 32, 16), np.float32)
    same = register_onto_stack(None, boxed, 0, atlas, image, num_classes=2, device=torch.device("cpu"))
    np.testing.assert_array_equal(fuse([same, same], IGNORE), atlas.labels)
    np.testing.assert_allclose(same.warped, atlas.images, atol=1e-5)


def test_volume_pairs_draw_atlases_as_moving_and_another_volume_as_fixed():
    volumes = [_volume("a"), _volume("b"), _volume("t1", annotated=False), _volume("t2", annotated=False)]
    rng = np.random.default_rng(0)
    pairs = VolumePairs(volumes).sample(200, rng)
    assert {p.moving for p in pairs} == {0, 1}
    assert all(p.fixed != p.moving for p in pairs) and {p.fixed for p in pairs} == {0, 1, 2, 3}
    both = VolumePairs(volumes, annotated_fixed=1.0).sample(50, rng)
    assert {(p.moving, p.fixed) for p in both} == {(0, 1), (1, 0)}
    anyone = VolumePairs(volumes, unannotated_moving=1.0).sample(200, rng)
    assert {p.moving for p in anyone} == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="sparsify --volumes"):
        VolumePairs([_volume("t1", annotated=False), _volume("t2", annotated=False)])
    with pytest.raises(ValueError, match="two training volumes"):
        VolumePairs([_volume("a")])


def test_boxed_batch_holds_volume_pairs():
    volumes = [_volume("a"), _volume("t", annotated=False)]
    box = VolumeBox((2.0, 2.0, 5.0), (32, 32, 16))
    boxed = BoxedVolumes(volumes, box, ignore_index=IGNORE)
    batch = boxed.batch(VolumePairs(volumes).sample(3, np.random.default_rng(1)), torch.device("cpu"))
    assert batch.moving.shape == (3, 1, 32, 32, 16) and batch.fixed_label.shape == (3, 1, 32, 32, 16)
    assert torch.equal(batch.moving_label[0, 0], torch.from_numpy(label_box(box, volumes[0], volumes[0].labels, IGNORE)))
    assert (batch.fixed_label == IGNORE).all()


@pytest.mark.parametrize("override, message", [
    ("registration.enabled=false", "needs registration.enabled"),
    ("propagation.method=chain", "propagation"),
    ("pairs.cross_volume=0.5", "cross_volume"),
    ("volumes.shape=[4, 64, 64]", "at least 8"),
    ("volumes.spacing=[0, 1, 1]", "positive"),
])
def test_recipe_refuses_what_3d_mode_cannot_use(override, message):
    from jointreg.training.config import recipe_from_dict

    with pytest.raises(ConfigError, match=message):
        recipe_from_dict({"volumes": {"enabled": True}}, [override])


# --------------------------------------------------------------------------------------------
# a run
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def volume_phantom(tmp_path_factory):
    """A liver-CT phantom (4 train + 1 test volumes, 48×48×16), one training volume annotated."""
    from jointreg.data.phantoms import generate_phantom_dataset
    from jointreg.data.sparsify import sparsify_dataset

    root = tmp_path_factory.mktemp("volumes")
    full = generate_phantom_dataset(root / "full", "liver-ct", n_train=4, n_test=1, seed=5, shape=(48, 48, 16))
    sparsify_dataset(full, root / "sparse", volumes=1, seed=0, progress=False)
    return root


def _recipe(root, tmp_path, *overrides, name="v3"):
    from jointreg.training.config import recipe_from_dict
    from tests.training.conftest import TINY

    data = copy.deepcopy(TINY)
    data.update(name=name, output=str(tmp_path / "runs"), volumes={"enabled": True})
    data["data"]["dataset"] = str(root / "sparse")
    data["registration"]["label_weight"] = 1.0
    data["segmentation"].update(warped_weight=0.5, propagated_weight=0.5)
    return recipe_from_dict(data, list(overrides))


def test_3d_run_needs_an_annotated_volume(tmp_path):
    from jointreg.data.phantoms import generate_phantom_dataset
    from jointreg.data.sparsify import sparsify_dataset
    from jointreg.training.loop import train

    full = generate_phantom_dataset(tmp_path / "full", "liver-ct", n_train=3, n_test=0, seed=5, shape=(32, 32, 8))
    sparsify_dataset(full, tmp_path / "slices", slices_per_volume=1, progress=False)
    with pytest.raises(InputError, match="annotated on every slice"):
        train(_recipe(tmp_path, tmp_path, "data.dataset=" + str(tmp_path / "slices"), name="bad"))


@pytest.mark.slow
def test_3d_run_trains_exports_and_register_reads_its_box(volume_phantom, tmp_path):
    import nibabel as nib

    from jointreg.inference.register import register_files
    from jointreg.training.loop import train

    summary = train(_recipe(volume_phantom, tmp_path))
    assert summary["status"] == "finished"
    reg = summary["evaluation"]["registration"]
    assert reg["training"]["cases"] == 3 and reg["Ts"]["cases"] == 1
    for group in ("training", "Ts"):
        for name in ("label_dice", "identity_dice"):
            assert 0.0 < reg[group][name] <= 1.0
    assert summary["evaluation"]["segmentation"]["classes"]["liver"]["dice"]["n"] == 1

    import json
    from pathlib import Path

    config = json.loads((Path(summary["exported"]["registration"]) / "config.json").read_text())
    assert config["spatial_dims"] == 3 and config["preprocessing"]["box"]["shape"] == [32, 32, 16]  # the 32² training grid, 16 slices
    # register reads the box: the exported model's labels on a training target agree with the run's own figure.
    full, sparse = volume_phantom / "full", volume_phantom / "sparse"
    manifest = json.loads((sparse / "sparsify.json").read_text())
    atlas = manifest["kept_volumes"][0]
    target = next(c for c in reg["training"]["per_case"])
    out = register_files(summary["exported"]["registration"], full / f"imagesTr/{atlas}_0000.nii.gz",
                         full / f"imagesTr/{target}_0000.nii.gz", tmp_path / "reg",
                         labels=full / f"labelsTr/{atlas}.nii.gz")
    assert out is not None
    warped = np.asarray(nib.load(tmp_path / "reg/warped_labels.nii.gz").dataobj) == 1
    truth = np.asarray(nib.load(full / f"labelsTr/{target}.nii.gz").dataobj) == 1
    dice = 2 * (warped & truth).sum() / (warped.sum() + truth.sum())
    assert dice == pytest.approx(reg["training"]["per_case"][target]["registration"], abs=0.03)

    # pseudolabel labels every unannotated case from the atlas, and copies the atlas.
    from jointreg.inference.pseudolabel import pseudolabel_dataset
    from jointreg.inference.pseudolabel_case import PseudolabelSettings

    done = pseudolabel_dataset(summary["run"], sparse, tmp_path / "pseudo", settings=PseudolabelSettings(mode="registration"),
                               progress=False)
    assert done["methods"] == {"annotation": 1, "atlas registration (3D)": 3}  # the atlas; the 3 other training cases
    pseudo = np.asarray(nib.load(tmp_path / f"pseudo/labelsTr/{target}.nii.gz").dataobj) == 1
    assert 2 * (pseudo & truth).sum() / (pseudo.sum() + truth.sum()) == pytest.approx(
        reg["training"]["per_case"][target]["registration"], abs=0.03)
    atlas_out = np.asarray(nib.load(tmp_path / f"pseudo/labelsTr/{atlas}.nii.gz").dataobj)
    np.testing.assert_array_equal(atlas_out == 1, np.asarray(nib.load(full / f"labelsTr/{atlas}.nii.gz").dataobj) == 1)
    provenance = json.loads((tmp_path / f"pseudo/provenance/{target}.json").read_text())
    assert provenance["method"] == "atlas registration (3D)" and provenance["atlases"] == [atlas]

    # export: the slice segmentor exports, the 3D registration is left out with a warning.
    from jointreg.export.standalone import export_run

    assert [p.name for p in export_run(summary["run"], "torchscript")] == ["segmentor.pt"]


@pytest.mark.slow
def test_3d_run_resumes_exactly(volume_phantom, tmp_path):
    from pathlib import Path

    from jointreg.training.loop import train
    from tests.training.test_loop import assert_same_exported_weights

    # With DeepAtlas's anatomy term: the segmentor's probabilities in the box supervise the registration
    # once the segmentor is warm (steps 6-7 and 10-11 of the plan).
    settings = ("evaluation.enabled=false", "registration.anatomy_weight=0.5")
    straight = train(_recipe(volume_phantom, tmp_path, *settings, name="straight"))
    log = (Path(straight["run"]) / "train.log").read_text()
    assert "anatomy_dice" in log
    stopped = train(_recipe(volume_phantom, tmp_path, *settings, name="resumed"), stop_after=7)
    assert stopped["status"] == "stopped"
    resumed = train(_recipe(volume_phantom, tmp_path, *settings, name="resumed"), run_dir=stopped["run"], resume=True)
    assert resumed["steps"] == straight["steps"]
    assert_same_exported_weights(straight["run"], resumed["run"])
