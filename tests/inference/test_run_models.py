"""jointreg.inference.run_models: model folders taken from run folders."""

import shutil

import pytest

from jointreg.errors import InputError
from jointreg.inference.run_models import find_run_models, resolve_model_folder


def test_resolve_model_folder(trained_run, tmp_path):
    run = trained_run["run"]
    assert resolve_model_folder(run, "segmentor") == run / "export" / "segmentor"
    assert resolve_model_folder(run / "export" / "segmentor", "segmentor") == run / "export" / "segmentor"
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "recipe.yaml").write_text("name: x\n")
    with pytest.raises(InputError, match="run folder has no exported segmentor"):
        resolve_model_folder(unfinished, "segmentor")


def test_find_run_models(trained_run, tmp_path):
    run = trained_run["run"]
    models = find_run_models(run)
    assert models.registration == run / "export" / "registration"
    assert models.segmentor == run / "export" / "segmentor"
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "recipe.yaml").write_text("name: x\n")
    with pytest.raises(InputError, match=r"is a jointreg run folder without exported models \(export/registration, export/segmentor\)"):
        find_run_models(unfinished)
    with pytest.raises(InputError, match="run folder not found"):
        find_run_models(tmp_path / "nothing")


def test_find_run_models_checks_the_kind_of_each_export(trained_run, tmp_path):
    run = tmp_path / "run"
    (run / "export").mkdir(parents=True)
    (run / "recipe.yaml").write_text("name: x\n")
    # a segmentor exported where the registration network belongs
    shutil.copytree(trained_run["run"] / "export" / "segmentor", run / "export" / "registration")
    with pytest.raises(InputError, match="holds a segmentor model, expected a registration model"):
        find_run_models(run)
