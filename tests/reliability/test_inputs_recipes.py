"""Recipes and studies a user may receive: alias bombs, unknown network arguments, non-finite
numbers. Each is refused by ``train`` / ``study`` before any work, in one line naming the file
and the key, exit code 2, no traceback, and nothing written."""

import pytest


BOMB = "\n".join(
    ["a0: &a0 [lol]"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
) + "\n"


@pytest.mark.parametrize(
    "text, message",
    [
        (BOMB + "name: *a8\n", "the YAML document expands to more than 100,000 values once its aliases (*name) are resolved"),
        ("segmentation:\n  arguments: {encoder_name: resnet18, decoder_chanels: [16, 8, 8, 8, 8]}\n",
         "segmentation.arguments: unknown argument(s) decoder_chanels; valid: architecture, encoder_name"),
        ("segmentation:\n  architecture: fcn\n  arguments: {features: [4, 8, 8, 8, 8], head_chanels: 8}\n",
         "segmentation.arguments: unknown argument(s) head_chanels; valid: in_channels, classes, features, head_channels, dropout"),
        ("registration:\n  arguments: {scale: 2}\n",
         "registration.arguments: unknown argument(s) scale; valid: spatial_dims, in_channels, features, scales"),
        ("registration:\n  lr: .nan\n", "registration.lr: expected a finite number, got nan"),
        ("segmentation:\n  lr: .inf\n", "segmentation.lr: expected a finite number, got inf"),
        ("segmentation:\n  dice_weight: -.inf\n", "segmentation.dice_weight: expected a finite number, got -inf"),
    ],
    ids=["alias-bomb", "smp-typo", "fcn-typo", "registration-typo", "nan-lr", "inf-lr", "inf-weight"],
)
def test_train_refuses_the_recipe_before_any_work(tmp_path, monkeypatch, capsys, cli_error, text, message):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "received.yaml"
    recipe.write_text(text)
    problem = cli_error(["train", str(recipe), "--no-progress"], "train")
    assert problem.startswith(f"{recipe}: {message}"), problem
    assert sorted(p.name for p in tmp_path.iterdir()) == ["received.yaml"]


def test_train_refuses_non_finite_overrides(tmp_path, monkeypatch, capsys, cli_error):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "ok.yaml"
    recipe.write_text("name: ok\n")
    problem = cli_error(["train", str(recipe), "--set", "registration.lr=nan"], "train")
    assert problem == f"{recipe}: registration.lr: expected a finite number, got 'nan'"
    problem = cli_error(["train", str(recipe), "--set", "registration.arguments.featurs=[4, 8]"], "train")
    assert problem.startswith(f"{recipe}: registration.arguments: unknown argument(s) featurs; valid: ")


def test_study_refuses_an_alias_bomb_and_bad_method_arguments(tmp_path, monkeypatch, capsys, cli_error):
    monkeypatch.chdir(tmp_path)
    study = tmp_path / "study.yaml"
    study.write_text(BOMB + "name: *a8\n")
    problem = cli_error(["study", str(study), "--no-progress"], "study")
    assert problem.startswith(f"{study}: the YAML document expands to more than 100,000 values")
    (tmp_path / "base.yaml").write_text("name: base\nsegmentation: {architecture: fcn}\n")
    study.write_text(
        "name: s\nbase: base.yaml\noutput: out\nseeds: [0]\nfolds: {count: 0}\n"
        "methods:\n  A: {segmentation.arguments: {dropuot: 0.1}}\n"
    )
    problem = cli_error(["study", str(study), "--no-progress"], "study")
    assert "method 'A'" in problem and "segmentation.arguments: unknown argument(s) dropuot" in problem, problem
    assert not (tmp_path / "out").exists()
