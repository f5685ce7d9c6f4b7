import pytest
import yaml

from jointreg.errors import ConfigError, InputError
from jointreg.training.config import Recipe, dump_recipe, load_recipe, recipe_from_dict
from jointreg.utils.typed import apply_overrides


def test_defaults_are_a_joint_fmirnet_unet_run():
    recipe = Recipe()
    assert recipe.mode == "joint"
    assert recipe.registration.architecture == "fmirnet"
    assert recipe.segmentation.architecture == "unet"


def test_yaml_round_trip_is_exact(tmp_path):
    recipe = recipe_from_dict(
        {"name": "x", "data": {"size": [96, 112], "validation_cases": ["a"]},
         "registration": {"arguments": {"features": [8, 16]}, "lr": 3e-4}}
    )
    path = tmp_path / "r.yaml"
    path.write_text(dump_recipe(recipe))
    assert load_recipe(path) == recipe
    assert load_recipe(path).data.size == (96, 112)


def test_overrides_parse_values_as_yaml():
    recipe = recipe_from_dict({}, ["schedule.rounds=3", "registration.lr=1e-4", "data.size=[64, 80]",
                                   "segmentation.enabled=false", "registration.arguments.int_steps=5"])
    assert recipe.schedule.rounds == 3
    assert recipe.registration.lr == pytest.approx(1e-4)
    assert recipe.data.size == (64, 80)
    assert recipe.mode == "registration"
    assert recipe.registration.arguments == {"int_steps": 5}


@pytest.mark.parametrize(
    "data, message",
    [
        ({"registraton": {}}, r"registraton: unknown key \(valid keys here: .*registration"),
        ({"registration": {"learning_rate": 1}}, r"registration.learning_rate: unknown key"),
        ({"registration": {"lr": "fast"}}, r"registration.lr: expected a number, got 'fast'"),
        ({"schedule": {"rounds": 2.5}}, r"schedule.rounds: expected an integer"),
        ({"segmentation": {"enabled": "yes"}}, r"segmentation.enabled: expected true or false"),
        ({"data": {"size": [64]}}, r"data.size: expected 2 values, got 1"),
        ({"propagation": {"trust": ["blind"]}}, r"propagation.trust\[0\]: .blind. is not one of"),
        ({"registration": {"enabled": False}, "segmentation": {"enabled": False}}, "enable registration, segmentation"),
        ({"registration": {"anatomy_weight": 1}, "segmentation": {"enabled": False}}, "anatomy_weight needs"),
        ({"registration": {"lr": -1}}, r"registration.lr: must be > 0"),
        ({"pairs": {"cross_volume": 2}}, r"pairs.cross_volume: must be a probability"),
        ({"name": "a/b"}, "cannot be used as a run folder name"),
        ({"propagation": {"background_margin": -1}}, r"propagation.background_margin: must be >= 0"),
        ({"segmentation": {"background_margin": 2, "appearance_percentiles": [99, 1]}}, r"need 0 <= low < high <= 100"),
        ({"propagation": {"appearance_percentiles": [1, 99]}}, r"needs propagation.background_margin"),
        ({"registration": {"similarity": "nccx"}}, r"registration.similarity: unknown similarity 'nccx'; valid names: mse"),
        ({"registration": {"architecture": "affine-deformable", "penalties": {"affine": 1.0}}},
         r"registration.penalties: affine-deformable has no penalty 'affine' \(it has: affine_identity, gradient_identity\)"),
        ({"registration": {"penalties": {"kl": 1.0}}}, r"registration.penalties: fmirnet has no penalty 'kl' \(it has: none\)"),
    ],
)
def test_bad_recipes_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        recipe_from_dict(data)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["schedule.rounds"])
    with pytest.raises(ConfigError, match="is not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_load_recipe_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(InputError, match=r"bad.yaml: invalid YAML at line"):
        load_recipe(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump({"schedule": {"roundz": 1}}))
    with pytest.raises(ConfigError, match=r"typo.yaml: schedule.roundz: unknown key"):
        load_recipe(typo)


def test_shipped_recipes_load(tmp_path):
    from pathlib import Path

    recipes = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))
    recipes = [r for r in recipes if not r.name.startswith("study_")]
    assert recipes, "no recipes shipped"
    for path in recipes:
        recipe = load_recipe(path)
        assert recipe.name == path.stem, f"{path.name}: name should match the file name"


def test_recipes_from_before_the_propagation_section_still_load(caplog):
    from jointreg.training.config import recipe_from_dict

    old = {"segmentation": {"propagation_radius": 9, "trust": ["residual"], "background_margin": 2}}
    recipe = recipe_from_dict(old, ["segmentation.foreground_within=4"])
    assert recipe.propagation.radius == 9 and recipe.propagation.trust == ("residual",)
    assert recipe.propagation.background_margin == 2 and recipe.propagation.foreground_within == 4
    assert "segmentation.trust is now propagation.trust" in caplog.text
    with pytest.raises(ConfigError, match="segmentation.trust and propagation.trust both given"):
        recipe_from_dict({"segmentation": {"trust": []}, "propagation": {"trust": []}})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"registration": {"lr": float("nan")}}, r"registration.lr: expected a finite number, got nan"),
        ({"segmentation": {"lr": "inf"}}, r"segmentation.lr: expected a finite number, got 'inf'"),
        ({"registration": {"smoothness_weight": float("-inf")}}, r"registration.smoothness_weight: expected a finite number"),
        ({"registration": {"penalties": {"affine": float("nan")}}}, r"registration.penalties.affine: expected a finite number"),
        ({"segmentation": {"augmentation": {"rotate": float("inf")}}}, r"segmentation.augmentation.rotate: expected a finite"),
        ({"data": {"ct_window": [-160, float("inf")]}}, r"data.ct_window\[1\]: expected a finite number"),
    ],
)
def test_non_finite_numbers_are_config_errors(data, message):
    with pytest.raises(ConfigError, match=message):
        recipe_from_dict(data)


def test_non_finite_numbers_from_yaml_and_overrides(tmp_path):
    path = tmp_path / "nan.yaml"
    path.write_text("registration:\n  lr: .nan\n")
    with pytest.raises(ConfigError, match=r"nan.yaml: registration.lr: expected a finite number, got nan"):
        load_recipe(path)
    with pytest.raises(ConfigError, match=r"segmentation.lr: expected a finite number, got inf"):
        recipe_from_dict({}, ["segmentation.lr=.inf"])


def test_dataclasses_built_in_code_refuse_non_finite_values_too():
    from jointreg.training.config import RegistrationConfig, SegmentationConfig

    with pytest.raises(ConfigError, match=r"registration.lr: must be > 0 and finite, got nan"):
        RegistrationConfig(lr=float("nan"))
    with pytest.raises(ConfigError, match=r"segmentation.dice_weight: must be >= 0 and finite, got inf"):
        SegmentationConfig(dice_weight=float("inf"))


@pytest.mark.parametrize(
    "data, message",
    [
        ({"segmentation": {"arguments": {"decoder_chanels": [16, 8]}}},
         r"segmentation.arguments: unknown argument\(s\) decoder_chanels; valid: architecture, encoder_name, "
         r"in_channels, classes, encoder_depth, decoder_use_norm, decoder_channels, decoder_attention_type"),
        ({"segmentation": {"architecture": "fcn", "arguments": {"feature": [4, 8, 8, 8, 8]}}},
         r"segmentation.arguments: unknown argument\(s\) feature; valid: in_channels, classes, features, head_channels, dropout$"),
        ({"segmentation": {"arguments": {"encoder_weights": "imagenet"}}},
         r"segmentation.arguments: unknown argument\(s\) encoder_weights"),
        ({"registration": {"arguments": {"featurs": [4, 8]}}},
         r"registration.arguments: unknown argument\(s\) featurs; valid: spatial_dims, in_channels, features, scales"),
        ({"registration": {"architecture": "fmirnet-1", "arguments": {"scales": 3}}},
         r"registration.arguments: fmirnet-1 fixes scales=1; got scales=3"),
        ({"registration": {"architecture": "fmrinet"}}, r"unknown registration network 'fmrinet'; valid names: affine"),
        ({"segmentation": {"architecture": "unett"}}, r"unknown segmentor 'unett'; valid names: fcn, unet"),
        ({"registration": {"arguments": {"flow_init_std": float("nan")}}},
         r"registration.arguments.flow_init_std: expected a finite number, got nan"),
        ({"segmentation": {"architecture": "fcn", "arguments": {"features": [4, 8, 8, 8, 10**12]}}},
         r"segmentation.arguments.features\[4\]: 1000000000000 is too large for a network setting"),
        ({"registration": {"arguments": {"features": [4] * 100}}},
         r"registration.arguments.features: 100 entries, more than a network setting takes \(at most 64\)"),
    ],
)
def test_network_arguments_are_checked_when_the_recipe_loads(data, message):
    with pytest.raises(ConfigError, match=message):
        recipe_from_dict(data)


def test_network_arguments_that_fit_load_and_disabled_networks_are_not_checked():
    recipe = recipe_from_dict({
        "registration": {"architecture": "voxelmorph", "arguments": {"enc": [8, 8], "dec": [8, 8, 8], "int_steps": 5}},
        "segmentation": {"arguments": {"encoder_depth": 3, "decoder_channels": [16, 8, 8], "classes": 3}},
    })
    assert recipe.segmentation.arguments["decoder_channels"] == [16, 8, 8]
    # A disabled network's section is never built, so its leftovers are not errors.
    recipe = recipe_from_dict({"segmentation": {"enabled": False, "arguments": {"anything": 1}}})
    assert recipe.mode == "registration"


def test_billion_laughs_recipe_is_refused_naming_the_file(tmp_path):
    lines = ["a0: &a0 [1]"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines + ["name: *a8"]) + "\n")
    with pytest.raises(InputError, match=r"bomb.yaml: the YAML document expands to more than 100,000 values"):
        load_recipe(path)
    with pytest.raises(ConfigError, match=r"^--set 'name=\{a0: &a0 \[1\], .*\.\.\.: cannot parse value \(the YAML document expands"):
        recipe_from_dict({}, ["name=" + ", ".join(lines).join("{}")])
