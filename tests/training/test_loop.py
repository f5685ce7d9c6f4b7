"""The alternating loop: plan, run folder, exact resume, bad inputs, NaN handling."""

import json
from pathlib import Path

import pytest
import torch

from jointreg.errors import ConfigError, InputError
from jointreg.training.checkpoint import load_checkpoint
from jointreg.training.loop import train
from jointreg.training.plan import build_plan


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
def test_joint_run_writes_a_complete_run_folder(tiny_recipe, sparse_phantom):
    from pathlib import Path

    import nibabel as nib
    import yaml

    import jointreg
    from jointreg.data.dataset import Dataset
    from jointreg.training.config import recipe_from_dict

    recipe = tiny_recipe("data.validation_count=1")
    summary = train(recipe)
    run = Path(summary["run"])
    # The resolved recipe, the summary and the last checkpoint say what was run.
    assert recipe_from_dict(yaml.safe_load((run / "recipe.yaml").read_text())) == recipe
    assert json.loads((run / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["steps"] == 14
    assert summary["registration_steps"] == 7 and summary["segmentation_steps"] == 7
    assert load_checkpoint(run / "checkpoints" / "last")["state"]["step"] == 14
    log = (run / "train.log").read_text()
    assert "step 0/14 registration" in log and "step 3/14 segmentation" in log
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    # Validation ran after each of the two rounds and selected one of them.
    assert [h["step"] for h in summary["history"]] == [10, 14]
    assert summary["best_step"] in (10, 14) and 0.0 <= summary["best_validation"] <= 1.0
    # Exported models describe themselves.
    seg = jointreg.load_model(run / "export" / "segmentor")
    assert seg.preprocessing["size"] == [32, 32]
    assert seg.labels == {"background": 0, "liver": 1}
    reg = json.loads((run / "export" / "registration" / "config.json").read_text())
    assert reg["architecture"] == "fmirnet" and reg["arguments"]["features"] == [4, 8, 8]
    # The evaluation covers the one test case, with the input's geometry.
    assert set(summary["evaluation"]["segmentation"]["classes"]) == {"liver"}
    assert summary["evaluation"]["cases"] == 1 and summary["evaluation"]["segmentation"]["classes"]["liver"]["dice"]["n"] == 1
    assert "| liver |" in (run / "evaluation" / "summary.md").read_text()
    registration = json.loads((run / "evaluation" / "registration.json").read_text())
    assert registration["pairs"] > 0 and 0.0 <= registration["label_dice"] <= 1.0
    [prediction] = (run / "predictions").glob("*.nii.gz")
    dataset = Dataset.open(sparse_phantom)
    [case] = dataset.cases("Ts")
    image = nib.load(dataset.image_path(case, "Ts"))
    written = nib.load(prediction)
    assert written.shape == image.shape and (abs(written.affine - image.affine) < 1e-5).all()
    assert set(written.get_fdata().astype(int).ravel()) <= {0, 1}


def test_identity_registration_trains_no_registration_and_propagates_unmoved_labels(tiny_recipe):
    recipe = tiny_recipe("registration.architecture=identity", "registration.arguments={}",
                         "segmentation.propagated_weight=0.5", "propagation.trust=[]", name="identity")
    plan = build_plan(recipe)
    assert {p.network for p in plan} == {"segmentation"}
    summary = train(recipe)
    assert summary["registration_steps"] == 0 and summary["segmentation_steps"] == summary["steps"] == 7
    registration = summary["evaluation"]["registration"]
    assert registration["label_dice"] == registration["identity_dice"]  # nothing moved
    assert registration["folding_percent"] == 0.0
    import jointreg

    exported = jointreg.load_model(f"{summary['run']}/export/registration")
    assert exported.config["architecture"] == "identity" and not list(exported.model.parameters())


def assert_same_exported_weights(run_a, run_b):
    """Every tensor of both exported models equal (values, dtype, keys), tensor by tensor."""
    from safetensors.torch import load_file

    for kind in ("registration", "segmentor"):
        a = load_file(f"{run_a}/export/{kind}/model.safetensors")
        b = load_file(f"{run_b}/export/{kind}/model.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), f"{kind}: {key} differs after resume"


@pytest.mark.slow
@pytest.mark.parametrize("method, stops", [("direct", (1, 4, 8)), ("chain", (4,))])
def test_resume_is_exact(tiny_recipe, tmp_path, method, stops):
    """Stopping after N steps and resuming gives the same weights as running straight through:
    inside the registration warm-up (steps 0-2), the segmentation warm-up (3-5), a round (6-9)."""
    # The propagated group with registration-derived negatives is on, so its draws are covered too.
    group = ("segmentation.propagated_weight=0.5", "propagation.radius=64", "propagation.trust=[]",
             "propagation.foreground_within=2", "propagation.background_margin=2",
             "propagation.appearance_percentiles=[1, 99]", f"propagation.method={method}")
    straight = train(tiny_recipe(*group, name="straight"))
    for stop in stops:
        # Step 4 is in the middle of the segmentation warm-up: chain labels are rebuilt on resume.
        stopped = train(tiny_recipe(*group, name=f"resumed{stop}"), stop_after=stop)
        assert stopped["status"] == "stopped" and stopped["step"] == stop
        resumed = train(tiny_recipe(*group, name=f"resumed{stop}"), run_dir=stopped["run"], resume=True)
        assert resumed["steps"] == straight["steps"]
        assert_same_exported_weights(straight["run"], resumed["run"])


def _crash_at(monkeypatch, step, error=RuntimeError("killed")):
    """Make the training step of global step ``step`` raise, as a crash there would end the run."""
    import jointreg.training.loop as loop

    for name in ("registration_step", "segmentation_step"):
        real = getattr(loop, name)

        def crashing(*args, _real=real, step_=step, **kwargs):
            if kwargs.get("step") == step_:
                raise error
            return _real(*args, **kwargs)

        monkeypatch.setattr(loop, name, crashing)


def _checkpointed_steps(monkeypatch):
    """Record the step of every resume checkpoint written (through the loop and the rounds)."""
    import jointreg.training.loop as loop
    import jointreg.training.rounds as rounds

    steps, real = [], rounds.save_last

    def recording(recipe, paths, nets, state):
        steps.append(state.step)
        real(recipe, paths, nets, state)

    monkeypatch.setattr(rounds, "save_last", recording)
    monkeypatch.setattr(loop, "save_last", recording)
    return steps


@pytest.mark.parametrize("every, expected", [(0, [3, 6, 10, 14]), (4, [3, 4, 6, 8, 10, 12, 14]), (100, [3, 6, 10, 14])])
def test_checkpoints_after_each_warmup_and_every_n_steps(tiny_recipe, monkeypatch, every, expected):
    steps = _checkpointed_steps(monkeypatch)
    train(tiny_recipe(f"schedule.checkpoint_steps={every}", "evaluation.enabled=false", name=f"every{every}"))
    assert steps == expected  # warm-ups end at 3 and 6, rounds at 10 and 14; never twice at one step


def test_checkpoint_steps_must_not_be_negative(tiny_recipe):
    with pytest.raises(ConfigError, match=r"schedule.checkpoint_steps: must be >= 0.*got -1"):
        tiny_recipe("schedule.checkpoint_steps=-1")


@pytest.mark.slow
def test_a_crash_inside_a_warmup_resumes_from_its_step_checkpoint_exactly(tiny_recipe, monkeypatch):
    """Before this change the first checkpoint came after both warm-ups (step 10 here): a crash
    at step 5 lost the run. Now the steps-4 checkpoint (checkpoint_steps=2) resumes it exactly."""
    straight = train(tiny_recipe("schedule.checkpoint_steps=2", name="straight"))
    recipe = tiny_recipe("schedule.checkpoint_steps=2", name="crashed")
    with monkeypatch.context() as patch:
        _crash_at(patch, 5)  # inside the segmentation warm-up (steps 3-5)
        with pytest.raises(RuntimeError, match="killed"):
            train(recipe)
    run = Path(recipe.output) / "crashed"
    assert load_checkpoint(run / "checkpoints" / "last")["state"]["step"] == 4
    resumed = train(recipe, run_dir=run, resume=True)
    assert "at step 4 of 14" in (run / "train.log").read_text() and resumed["steps"] == 14
    assert_same_exported_weights(straight["run"], resumed["run"])


def test_a_failed_run_without_checkpoint_is_replaced_by_its_corrected_rerun(tiny_recipe, tmp_path, caplog):
    bad = tiny_recipe(f"data.dataset={tmp_path / 'typo'}", "evaluation.enabled=false", name="fix")
    with pytest.raises(InputError, match="dataset folder not found"):
        train(bad)
    run = Path(bad.output) / "fix"
    assert (run / "recipe.yaml").is_file() and not (run / "checkpoints").exists()
    # The corrected command needs no --overwrite: the failed attempt had nothing worth keeping.
    fixed = tiny_recipe("evaluation.enabled=false", name="fix")
    with caplog.at_level("WARNING", logger="jointreg.training.run_folder"):
        summary = train(fixed)
    assert summary["status"] == "finished" and "replacing a run folder without checkpoint" in caplog.text
    from jointreg.training.run_folder import read_run_recipe

    assert read_run_recipe(run) == fixed
    # Once it has a checkpoint (or a summary), the folder is protected again.
    with pytest.raises(InputError, match="run folder already exists"):
        train(fixed)


def test_resume_of_a_folder_without_checkpoint_starts_at_step_0_with_its_recipe(tiny_recipe, monkeypatch, caplog):
    recipe = tiny_recipe("evaluation.enabled=false", name="early")
    with monkeypatch.context() as patch:
        _crash_at(patch, 1)  # before the first checkpoint (the end of the registration warm-up, step 3)
        with pytest.raises(RuntimeError, match="killed"):
            train(recipe)
    run = Path(recipe.output) / "early"
    assert not (run / "checkpoints" / "last").exists()
    from jointreg.training.run_folder import read_run_recipe

    with caplog.at_level("WARNING", logger="jointreg.training.run_folder"):
        summary = train(read_run_recipe(run), run_dir=run, resume=True)
    assert "no checkpoint yet; starting the run at step 0" in caplog.text
    assert summary["status"] == "finished" and summary["steps"] == 14
    assert (run / "train.log").read_text().count("step 0/14 registration") == 1  # the failed attempt's log is gone


def test_resume_refuses_an_edited_recipe_naming_the_changed_keys(tiny_recipe):
    import yaml

    from jointreg.training.run_folder import read_run_recipe

    stopped = train(tiny_recipe(name="edited"), stop_after=2)
    run = Path(stopped["run"])
    data = yaml.safe_load((run / "recipe.yaml").read_text())
    data["registration"]["lr"] = 0.5
    data["schedule"]["rounds"] = 3
    (run / "recipe.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"recipe changed since its checkpoint was written \(registration.lr: 0.001 → 0.5, "
                                          r"schedule.rounds: 2 → 3\)"):
        train(read_run_recipe(run), run_dir=run, resume=True)


def test_the_checkpoint_records_the_resolved_recipe_and_its_digest(tiny_recipe):
    import hashlib

    from jointreg.training.checkpoint import read_state
    from jointreg.training.run_folder import recipe_digest

    recipe = tiny_recipe(name="digest")
    stopped = train(recipe, stop_after=1)
    record = read_state(Path(stopped["run"]) / "checkpoints" / "last")["recipe"]
    assert record["resolved"] == json.loads(json.dumps(recipe.to_dict()))
    canonical = json.dumps(record["resolved"], sort_keys=True, separators=(",", ":"))
    assert record["sha256"] == hashlib.sha256(canonical.encode()).hexdigest() == recipe_digest(recipe)
    assert recipe_digest(tiny_recipe("registration.lr=0.5")) != record["sha256"]


@pytest.mark.slow
def test_a_checkpoint_from_before_recipe_records_resumes_with_a_warning(tiny_recipe, caplog):
    from jointreg.training.checkpoint import STATE

    stopped = train(tiny_recipe("evaluation.enabled=false", name="old"), stop_after=2)
    state_file = Path(stopped["run"]) / "checkpoints" / "last" / STATE
    state = json.loads(state_file.read_text())
    del state["recipe"]
    state_file.write_text(json.dumps(state))
    with caplog.at_level("WARNING", logger="jointreg.training.run_folder"):
        summary = train(tiny_recipe("evaluation.enabled=false", name="old"), run_dir=stopped["run"], resume=True)
    assert summary["status"] == "finished" and "written before checkpoints recorded their recipe" in caplog.text


@pytest.mark.slow
def test_stale_temporaries_are_removed_on_resume_and_at_the_end(tiny_recipe, monkeypatch):
    import jointreg.training.loop as loop

    stopped = train(tiny_recipe("evaluation.enabled=false", name="tmp"), stop_after=2)
    run = Path(stopped["run"])
    killed = run / "checkpoints" / ".tmp-0123456789ab-last"
    killed.mkdir()
    (killed / "tensors.safetensors").write_bytes(b"half")
    (run / ".tmp-0123456789ab-summary.json").write_text("{")
    seen = {}
    real = loop.registration_step

    def watching(*args, step=0, **kwargs):
        if step == 2:  # the first step after the resume: the leftovers are already gone
            seen["at_resume"] = sorted(p.name for p in run.rglob(".tmp-*"))
        if step == 12:  # a leftover of a write killed late in the run ...
            (run / "export").mkdir(exist_ok=True)
            (run / "export" / ".tmp-0123456789ab-segmentor").mkdir()
        return real(*args, step=step, **kwargs)

    monkeypatch.setattr(loop, "registration_step", watching)
    train(tiny_recipe("evaluation.enabled=false", name="tmp"), run_dir=run, resume=True)
    assert seen["at_resume"] == []
    assert sorted(p.name for p in run.rglob(".tmp-*")) == []  # ... is gone when the run ends


def test_a_checkpoint_left_aside_by_a_kill_is_put_back(tiny_recipe):
    from jointreg.training.checkpoint import PREVIOUS

    stopped = train(tiny_recipe("evaluation.enabled=false", name="aside"), stop_after=4)
    run = Path(stopped["run"])
    (run / "checkpoints" / "last").rename(run / "checkpoints" / f".tmp-0123456789ab-last{PREVIOUS}")
    # Still a started run: the plain command refuses it ...
    with pytest.raises(InputError, match="run folder already exists"):
        train(tiny_recipe("evaluation.enabled=false", name="aside"))
    # ... and --resume continues from the checkpoint that was aside.
    summary = train(tiny_recipe("evaluation.enabled=false", name="aside"), run_dir=run, resume=True)
    assert summary["steps"] == 14 and "at step 4 of 14" in (run / "train.log").read_text()
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_a_run_folder_in_use_is_refused(tiny_recipe):
    from jointreg.training.run_folder import open_run_folder, run_paths

    recipe = tiny_recipe(name="busy")
    with open_run_folder(recipe, run_paths(recipe), resume=False, overwrite=False):
        with pytest.raises(InputError, match=r"busy: in use by another 'jointreg train' \(pid \d+\)"):
            train(recipe, overwrite=True)
    assert sorted(p.name for p in run_paths(recipe).root.iterdir()) == [".lock", "recipe.yaml"]


def test_a_folder_that_is_not_a_run_is_kept(tiny_recipe, tmp_path):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(InputError, match="folder exists and is not a jointreg run folder"):
        train(tiny_recipe(), run_dir=other)
    assert (other / "notes.txt").read_text() == "keep"


def test_resume_with_a_different_recipe_is_refused(tiny_recipe):
    stopped = train(tiny_recipe(name="r"), stop_after=2)
    with pytest.raises(ConfigError, match=r"different recipe \(differs in: registration.lr: 0.001 → 0.5\)"):
        train(tiny_recipe("registration.lr=0.5", name="r"), run_dir=stopped["run"], resume=True)


def test_resume_takes_new_logging_settings_and_the_same_weights(tiny_recipe):
    """Logging never changes the weights, so a run may resume with other logging settings
    (e.g. the monitor turned on); the folder's recipe records them."""
    from jointreg.training.run_folder import read_run_recipe

    straight = train(tiny_recipe(name="straight_log"))
    stopped = train(tiny_recipe(name="relogged"), stop_after=4)
    changed = tiny_recipe("logging.log_every=1", "logging.panel_slices=0", name="relogged")
    resumed = train(changed, run_dir=stopped["run"], resume=True)
    assert resumed["status"] == "finished"
    assert_same_exported_weights(straight["run"], resumed["run"])
    assert read_run_recipe(resumed["run"]).logging.log_every == 1
    # Anything else still has to match.
    with pytest.raises(ConfigError, match=r"differs in: registration.lr"):
        train(tiny_recipe("registration.lr=0.5", "logging.log_every=1", name="relogged"), run_dir=stopped["run"],
              resume=True)


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


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_recipe, monkeypatch):
    """A registration step that meets NaN weights stops the run with a clear message; the
    checkpoint of the last finished round stays, finite."""
    import jointreg.training.loop as loop
    from jointreg.training.steps import TrainingDiverged

    real_step = loop.registration_step

    def poisoned(net, *args, step=0, **kwargs):
        if step == 11:  # the second registration step of round 1; round 0 ended at step 10
            with torch.no_grad():
                next(net.parameters()).fill_(float("nan"))
        return real_step(net, *args, step=step, **kwargs)

    monkeypatch.setattr(loop, "registration_step", poisoned)
    recipe = tiny_recipe(name="nan")
    with pytest.raises(TrainingDiverged, match="registration loss became nan at step 11"):
        train(recipe)
    from pathlib import Path

    state = load_checkpoint(Path(recipe.output) / "nan" / "checkpoints" / "last")
    assert state["state"]["step"] == 10
    assert state["registration"]["model"] and all(torch.isfinite(t).all() for t in state["registration"]["model"].values())


def test_summary_is_json(tiny_recipe):
    summary = train(tiny_recipe("registration.enabled=false", "evaluation.enabled=false", name="segonly"))
    from pathlib import Path

    on_disk = json.loads((Path(summary["run"]) / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["mode"] == "segmentation" and on_disk["status"] == "finished"
    assert on_disk["registration_steps"] == 0 and on_disk["segmentation_steps"] == on_disk["steps"] == 7
    assert set(on_disk["exported"]) == {"segmentor"} and "evaluation" not in on_disk


def test_class_subset_trains_and_evaluates_on_the_chosen_classes(tiny_recipe):
    summary = train(tiny_recipe("data.classes=[spleen]", "registration.enabled=false", name="spleenonly"))
    assert set(summary["evaluation"]["segmentation"]["classes"]) == {"spleen"}
    import jointreg

    model = jointreg.load_model(f"{summary['run']}/export/segmentor")
    assert model.labels == {"background": 0, "spleen": 1}
    assert model.config["arguments"]["classes"] == 2


def test_class_subset_lut_maps_others_to_background(tmp_path):
    from jointreg.data.dataset import DatasetSpec
    from jointreg.training.data import class_subset

    spec = DatasetSpec({"0": "CT"}, {"background": 0, "liver": 1, "kidney": 2, "spleen": 3, "ignore": 4}, 1)
    labels, lut, ignore = class_subset(spec, ("spleen",), tmp_path)
    assert labels == {"background": 0, "spleen": 1}
    assert lut.tolist() == [0, 0, 0, 1, 2] and ignore == 2
    with pytest.raises(ConfigError, match="'lungs' is not a foreground class"):
        class_subset(spec, ("lungs",), tmp_path)


def test_postprocessing_is_decided_exported_and_reported(tiny_recipe):
    import json
    from pathlib import Path

    summary = train(tiny_recipe("registration.enabled=false", "segmentation.postprocessing=largest_component", name="pp"))
    run = Path(summary["run"])
    assert summary["postprocessing"] == {"largest_component": [1], "decided_on": "recipe"}
    config = json.loads((run / "export" / "segmentor" / "config.json").read_text())
    assert config["extra"]["postprocessing"]["largest_component"] == [1]
    evaluation = summary["evaluation"]["segmentation"]
    assert "without_postprocessing" in evaluation and (run / "evaluation_raw" / "summary.json").is_file()
    # `auto` decides on validation cases, and applies nothing without them.
    auto = train(tiny_recipe("registration.enabled=false", "evaluation.enabled=false", name="pp_auto"))
    assert auto["postprocessing"]["largest_component"] == [] and "no fully labelled validation" in auto["postprocessing"]["decided_on"]
    validated = train(tiny_recipe("registration.enabled=false", "evaluation.enabled=false", "data.validation_count=1",
                                  name="pp_validated"))
    assert validated["postprocessing"]["decided_on"] == "validation" and set(validated["postprocessing"]["dice"]) == {"1"}


@pytest.mark.parametrize("architecture, arguments", [
    ("tvf-lddmm", "{features: [4, 8], steps: 3, head_channels: 4}"),
    ("affine-deformable", "{features: [4, 8]}"),
    ("pmrnet", "{features: [4, 8]}"),
])
def test_every_registration_system_trains_jointly_and_reports_its_penalties(tiny_recipe, architecture, arguments):
    recipe = tiny_recipe(f"registration.architecture={architecture}", f"registration.arguments={arguments}",
                         "evaluation.enabled=false", name=architecture)
    summary = train(recipe)
    assert summary["status"] == "finished" and summary["registration_steps"] == 7
    from pathlib import Path

    log = (Path(summary["run"]) / "train.log").read_text()
    penalty = {"tvf-lddmm": "velocity_smoothness", "affine-deformable": "affine_identity", "pmrnet": "kl"}[architecture]
    assert f" {penalty} " in log  # the named penalty is logged with the other terms
    import jointreg

    assert jointreg.load_model(f"{summary['run']}/export/registration").config["architecture"] == architecture
