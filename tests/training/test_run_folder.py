"""Which finished runs a study or benchmark may reuse, and which it must not silently replace."""

import json
import os

import pytest

from jointreg.errors import ConfigError
from jointreg.training.config import dump_recipe
from jointreg.training.run_folder import check_not_finished_otherwise, finished_summary


def _fake_finished_run(run_dir, recipe, status="finished"):
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.yaml").write_text(dump_recipe(recipe))
    (run_dir / "summary.json").write_text(json.dumps({"status": status, "marker": 7}))
    return run_dir


def test_a_finished_run_is_reused_for_the_same_settings_and_other_spellings_of_its_paths(tiny_recipe, tmp_path, monkeypatch):
    recipe = tiny_recipe()
    run = _fake_finished_run(tmp_path / "run", recipe)
    assert finished_summary(run, recipe)["marker"] == 7
    # The same data set named relative to the working folder, and through a symbolic link.
    dataset = recipe.data.dataset
    monkeypatch.chdir(os.path.dirname(dataset))
    assert finished_summary(run, tiny_recipe(f"data.dataset={os.path.basename(dataset)}"))["marker"] == 7
    os.symlink(dataset, tmp_path / "link")
    assert finished_summary(run, tiny_recipe(f"data.dataset={tmp_path / 'link'}"))["marker"] == 7
    check_not_finished_otherwise(run, tiny_recipe(f"data.dataset={tmp_path / 'link'}"))
    # Logging only: reused too.
    assert finished_summary(run, tiny_recipe("logging.log_every=3"))["marker"] == 7


def test_a_run_finished_with_other_settings_is_not_reused_and_not_replaced_unasked(tiny_recipe, tmp_path):
    recipe = tiny_recipe()
    run = _fake_finished_run(tmp_path / "run", recipe)
    changed = tiny_recipe("registration.lr=0.5")
    assert finished_summary(run, changed) is None
    with pytest.raises(ConfigError, match=r"run: this run finished with other settings \(registration.lr: .* → 0.5\); --retrain"):
        check_not_finished_otherwise(run, changed)
    other = tmp_path / "other"
    other.mkdir()
    (other / "train.log").write_text("x")
    check_not_finished_otherwise(tmp_path / "missing", changed)  # nothing there: nothing to protect
    check_not_finished_otherwise(other, changed)  # not a finished run (the trainer's own rules apply)
    failed = _fake_finished_run(tmp_path / "failed", recipe, status="failed")
    check_not_finished_otherwise(failed, changed)
    assert finished_summary(failed, recipe) is None


def test_a_finished_run_whose_recipe_cannot_be_read_is_protected(tiny_recipe, tmp_path):
    recipe = tiny_recipe()
    run = _fake_finished_run(tmp_path / "run", recipe)
    (run / "recipe.yaml").write_text("registration: {lrr: 1}\n")  # e.g. a key a later version removed
    assert finished_summary(run, recipe) is None
    with pytest.raises(ConfigError, match=r"run: this run finished with other settings \(recipe.yaml: .*unreadable"):
        check_not_finished_otherwise(run, recipe)


def test_the_data_set_is_checked_against_where_it_resolved_when_the_run_trained(tiny_recipe, tmp_path, monkeypatch):
    import shutil

    recipe = tiny_recipe()
    dataset = recipe.data.dataset
    other = tmp_path / "other_data"
    shutil.copytree(dataset, other)
    os.symlink(dataset, tmp_path / "latest")
    run = _fake_finished_run(tmp_path / "run", tiny_recipe(f"data.dataset={tmp_path / 'latest'}"))
    summary = json.loads((run / "summary.json").read_text())
    summary["dataset_path"] = os.path.realpath(dataset)  # as finish.py records it
    (run / "summary.json").write_text(json.dumps(summary))
    assert finished_summary(run, tiny_recipe(f"data.dataset={tmp_path / 'latest'}"))["marker"] == 7
    os.remove(tmp_path / "latest")
    os.symlink(other, tmp_path / "latest")  # the link now names another data set
    assert finished_summary(run, tiny_recipe(f"data.dataset={tmp_path / 'latest'}")) is None
    with pytest.raises(ConfigError, match="data.dataset"):
        check_not_finished_otherwise(run, tiny_recipe(f"data.dataset={tmp_path / 'latest'}"))
    # The same relative spelling from another working folder is another data set too.
    rel = _fake_finished_run(tmp_path / "rel", tiny_recipe("data.dataset=data"))
    summary["dataset_path"] = os.path.realpath(dataset)
    (rel / "summary.json").write_text(json.dumps(summary))
    monkeypatch.chdir(tmp_path)
    assert finished_summary(rel, tiny_recipe("data.dataset=data")) is None
