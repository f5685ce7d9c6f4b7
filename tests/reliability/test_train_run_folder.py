"""`jointreg train` run-folder lifecycle from the command line: a failed run never blocks its
corrected rerun, an edited recipe is refused by --resume, and every refusal is one line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

TINY = {
    "name": "cli",
    "threads": 1,
    "data": {"size": [32, 32], "classes": ["liver"]},
    "registration": {"batch_size": 2, "arguments": {"features": [4, 8, 8]}},
    "segmentation": {"architecture": "fcn", "batch_size": 2,
                     "arguments": {"features": [4, 8, 8, 8, 8], "head_channels": 8}},
    "schedule": {"registration_warmup": 3, "segmentation_warmup": 3, "rounds": 1,
                 "registration_steps": 2, "segmentation_steps": 2},
    "logging": {"log_every": 1, "image_every": 0, "progress": False},
    "evaluation": {"enabled": False},
}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from jointreg.data.phantoms import generate_phantom_dataset
    from jointreg.data.sparsify import sparsify_dataset

    root = tmp_path_factory.mktemp("phantom")
    full = generate_phantom_dataset(root / "full", "liver-ct", n_train=3, n_test=1, seed=3, shape=(64, 64, 16))
    sparsify_dataset(full, root / "sparse", slices_per_volume=1, progress=False)
    return root / "sparse"


@pytest.fixture
def recipe_file(tmp_path, phantom):
    """``recipe_file(dataset=...)`` → a tiny recipe YAML training into tmp_path/runs."""

    def write(dataset: Path | str = phantom, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump({**TINY, "output": str(tmp_path / "runs"), "data": {**TINY["data"], "dataset": str(dataset)}}))
        return path

    return write


def jointreg(capsys, *args: str) -> tuple[int, str]:
    """Run the CLI in-process; the exit code and stderr."""
    from jointreg.cli.main import main

    capsys.readouterr()
    code = main(["train", *args, "--no-progress"])
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_failed_train_does_not_block_its_corrected_rerun(capsys, recipe_file, tmp_path):
    bad = recipe_file(dataset=tmp_path / "typo")
    code, err = jointreg(capsys, str(bad))
    assert_one_line_error(code, err, str(tmp_path / "typo"), "dataset folder not found")
    run = tmp_path / "runs" / "cli"
    assert (run / "recipe.yaml").is_file()  # the folder of the failed attempt stays ...
    code, err = jointreg(capsys, str(bad), "--set", f"data.dataset={recipe_file().parent / 'nowhere'}")
    assert code == 2 and "already exists" not in err  # ... and blocks no rerun, corrected or not
    code, err = jointreg(capsys, str(recipe_file()))
    assert code == 0, err
    assert (run / "summary.json").is_file()
    code, err = jointreg(capsys, str(recipe_file()))
    assert_one_line_error(code, err, str(run), "run folder already exists")


@pytest.mark.slow
def test_resume_of_a_failed_run_starts_from_step_0(capsys, caplog, recipe_file, tmp_path, phantom):
    import json
    import shutil

    assert jointreg(capsys, str(recipe_file(dataset=tmp_path / "later")))[0] == 2
    run = tmp_path / "runs" / "cli"
    code, err = jointreg(capsys, "--resume", str(run))
    assert_one_line_error(code, err, "dataset folder not found")  # its recipe still names the missing data
    shutil.copytree(phantom, tmp_path / "later")  # the data arrives: --resume now trains from step 0
    with caplog.at_level("WARNING", logger="jointreg.training.run_folder"):
        code, err = jointreg(capsys, "--resume", str(run))
    assert code == 0, err
    assert "no checkpoint yet; starting the run at step 0" in caplog.text
    assert json.loads((run / "summary.json").read_text())["steps"] == 10
    assert (run / "train.log").read_text().count("step 0/10 registration") == 1


@pytest.mark.slow
def test_resume_refuses_an_edited_recipe_in_one_line(capsys, recipe_file, tmp_path):
    code, err = jointreg(capsys, str(recipe_file()), "--stop-after", "2")
    assert code == 0, err
    run = tmp_path / "runs" / "cli"
    data = yaml.safe_load((run / "recipe.yaml").read_text())
    data["registration"]["lr"] = 0.5
    (run / "recipe.yaml").write_text(yaml.safe_dump(data))
    code, err = jointreg(capsys, "--resume", str(run))
    assert_one_line_error(code, err, str(run), "recipe changed since its checkpoint was written",
                          "registration.lr: 0.001 → 0.5")
    data["registration"]["lr"] = 0.001  # restored: the run resumes
    (run / "recipe.yaml").write_text(yaml.safe_dump(data))
    code, err = jointreg(capsys, "--resume", str(run))
    assert code == 0, err


def test_a_second_train_on_a_folder_in_use_is_refused(capsys, recipe_file, tmp_path):
    from jointreg.export.run_folder import RunPaths
    from jointreg.training.config import load_recipe
    from jointreg.training.run_folder import open_run_folder

    recipe = load_recipe(recipe_file())
    paths = RunPaths(tmp_path / "runs" / "cli")
    with open_run_folder(recipe, paths, resume=False, overwrite=False):
        code, err = jointreg(capsys, str(recipe_file()), "--overwrite")
    assert_one_line_error(code, err, str(paths.root), "in use by another 'jointreg train'")
