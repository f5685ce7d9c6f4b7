"""The alternating loop: plan, run folder, exact resume, bad inputs, NaN handling."""

import json

import pytest
import torch

from jointreg.errors import ConfigError, InputError
from jointreg.training.checkpoint import load_checkpoint
from jointreg.training.loop import build_plan, train


def test_plan_alternates_after_warmups(tiny_recipe):
    plan = build_plan(tiny_recipe())
    assert [(p.network[:3], p.steps, p.round) for p in plan] == [
        ("reg", 3, -1), ("seg", 3, -1), ("reg", 2, 0), ("seg", 2, 0), ("reg", 2, 1), ("seg", 2, 1),
    ]
    seg_only = build_plan(tiny_recipe("registration.enabled=false"))
    assert {p.network for p in seg_only} == {"segmentation"}
    reg_only = build_plan(tiny_recipe("segmentation.enabled=false"))
    assert {p.network for p in reg_only} == {"registration"}


@pytest.mark.slow
def test_joint_run_writes_a_complete_run_folder(tiny_recipe):
    recipe = tiny_recipe("data.validation_count=1")
    summary = train(recipe)
    run = summary["run"]
    from pathlib import Path

    run = Path(run)
    for name in ("recipe.yaml", "train.log", "summary.json", "tensorboard", "checkpoints/last",
                 "export/registration/config.json", "export/segmentor/model.safetensors",
                 "evaluation/summary.md", "evaluation/registration.json"):
        assert (run / name).exists(), name
    assert summary["steps"] == 14
    assert summary["registration_steps"] == 7 and summary["segmentation_steps"] == 7
    assert summary["history"], "validation should have run"
    assert set(summary["evaluation"]["segmentation"]["classes"]) == {"liver"}
    predictions = list((run / "predictions").glob("*.nii.gz"))
    assert len(predictions) == 1
    import jointreg

    seg = jointreg.load_model(run / "export" / "segmentor")
    assert seg.preprocessing["size"] == [32, 32]
    assert seg.labels["liver"] == 1


@pytest.mark.slow
def test_resume_is_exact(tiny_recipe, tmp_path):
    """Stopping after N steps and resuming gives the same weights as running straight through."""
    # The propagated group with registration-derived negatives is on, so its draws are covered too.
    group = ("segmentation.propagated_weight=0.5", "segmentation.propagation_radius=64", "segmentation.trust=[]",
             "segmentation.foreground_within=2", "segmentation.background_margin=2",
             "segmentation.appearance_percentiles=[1, 99]")
    straight = train(tiny_recipe(*group, name="straight"))
    stopped = train(tiny_recipe(*group, name="resumed"), stop_after=6)
    assert stopped["status"] == "stopped" and stopped["step"] == 6
    resumed = train(tiny_recipe(*group, name="resumed"), run_dir=stopped["run"], resume=True)
    assert resumed["steps"] == straight["steps"]
    from safetensors.torch import load_file

    for kind in ("registration", "segmentor"):
        a = load_file(f"{straight['run']}/export/{kind}/model.safetensors")
        b = load_file(f"{resumed['run']}/export/{kind}/model.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{kind}: {key} differs after resume"


def test_resume_with_a_different_recipe_is_refused(tiny_recipe):
    stopped = train(tiny_recipe(name="r"), stop_after=2)
    with pytest.raises(ConfigError, match=r"different recipe \(differs in: registration.lr\)"):
        train(tiny_recipe("registration.lr=0.5", name="r"), run_dir=stopped["run"], resume=True)


def test_existing_run_folder_is_not_overwritten(tiny_recipe):
    train(tiny_recipe(name="again"), stop_after=1)
    with pytest.raises(InputError, match="run folder already exists"):
        train(tiny_recipe(name="again"), stop_after=1)


def test_resume_without_checkpoint_or_folder(tiny_recipe, tmp_path):
    with pytest.raises(InputError, match="not a jointreg run folder"):
        train(tiny_recipe(), run_dir=tmp_path / "nothing", resume=True)


def test_class_count_disagreeing_with_dataset_json(tiny_recipe):
    with pytest.raises(ConfigError, match="classes = 3 disagrees with .*dataset.json.*declares 2 classes \\(background, liver\\)"):
        train(tiny_recipe("segmentation.arguments.classes=3"))


def test_dataset_without_annotated_slices(tiny_recipe, sparse_phantom, tmp_path):
    import shutil

    import numpy as np

    from jointreg.data.dataset import Dataset

    copy = tmp_path / "empty"
    shutil.copytree(sparse_phantom, copy)
    ds = Dataset.open(copy)
    for case in ds.cases():
        label = ds.read_label(case)
        ds.write_label(case, np.full(label.shape, ds.spec.ignore_label, np.int16), reference=label)
    with pytest.raises(InputError, match="no annotated slice"):
        train(tiny_recipe(f"data.dataset={copy}"))


def test_missing_dataset(tiny_recipe, tmp_path):
    with pytest.raises(InputError, match="dataset folder not found"):
        train(tiny_recipe(f"data.dataset={tmp_path / 'nope'}"))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_recipe):
    """A registration lr of 1e30 diverges: the run stops with a clear message, checkpoint intact."""
    from jointreg.training.steps import TrainingDiverged

    recipe = tiny_recipe("registration.lr=1e30", "schedule.registration_warmup=0", "schedule.segmentation_warmup=0",
                         "schedule.rounds=6", name="nan")
    with pytest.raises(TrainingDiverged, match="(loss|weights) became (nan|inf|NaN or infinite) at step"):
        train(recipe)
    from pathlib import Path

    last = Path(recipe.output) / "nan" / "checkpoints" / "last"
    if last.exists():
        state = load_checkpoint(last)
        for tensor in state["registration"]["model"].values():
            assert torch.isfinite(tensor).all()


def test_summary_is_json(tiny_recipe):
    summary = train(tiny_recipe("registration.enabled=false", "evaluation.enabled=false", name="segonly"))
    from pathlib import Path

    on_disk = json.loads((Path(summary["run"]) / "summary.json").read_text())
    assert on_disk["mode"] == "segmentation"
    assert on_disk["registration_steps"] == 0


def test_class_subset_trains_and_evaluates_on_the_chosen_classes(tiny_recipe):
    summary = train(tiny_recipe("data.classes=[spleen]", "registration.enabled=false", name="spleenonly"))
    assert set(summary["evaluation"]["segmentation"]["classes"]) == {"spleen"}
    import jointreg

    model = jointreg.load_model(f"{summary['run']}/export/segmentor")
    assert model.labels == {"background": 0, "spleen": 1}
    assert model.config["arguments"]["classes"] == 2


def test_class_subset_lut_maps_others_to_background(tmp_path):
    from jointreg.data.dataset import DatasetSpec
    from jointreg.training.loop import class_subset

    spec = DatasetSpec({"0": "CT"}, {"background": 0, "liver": 1, "kidney": 2, "spleen": 3, "ignore": 4}, 1)
    labels, lut, ignore = class_subset(spec, ("spleen",), tmp_path)
    assert labels == {"background": 0, "spleen": 1}
    assert lut.tolist() == [0, 0, 0, 1, 2] and ignore == 2
    with pytest.raises(ConfigError, match="'lungs' is not a foreground class"):
        class_subset(spec, ("lungs",), tmp_path)
