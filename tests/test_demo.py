"""``jointreg demo``: its settings, its recipe, its folder rules, and (slow) a quick run end to end."""

import dataclasses
import json
from pathlib import Path

import pytest

from jointreg.demo import DEMO_RECIPE, DemoSettings, demo_recipe_path, run_demo
from jointreg.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def test_default_settings():
    settings = DemoSettings()
    assert (settings.train_cases, settings.test_cases, settings.seed, settings.quick) == (10, 4, 0, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.seed = 1  # type: ignore[misc]


def test_the_shipped_recipe_is_found_and_loads():
    from jointreg.training.config import load_recipe

    path = demo_recipe_path()
    assert path.name == DEMO_RECIPE == "demo_liver_phantom.yaml" and path.is_file()
    assert path.read_text(encoding="utf-8") == (REPO / "recipes" / DEMO_RECIPE).read_text(encoding="utf-8")
    recipe = load_recipe(path, ["seed=3", "data.dataset=somewhere"])
    assert recipe.name == "demo_liver_phantom" and recipe.seed == 3 and recipe.data.dataset == "somewhere"
    assert recipe.data.classes == ("liver",) and tuple(recipe.data.size) == (64, 64)
    assert recipe.registration.architecture == "fmirnet" and recipe.segmentation.architecture == "unet"


def test_an_existing_non_empty_folder_is_refused_and_kept(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(InputError, match="demo folder already exists; pass --overwrite or choose another --out"):
        run_demo(out, DemoSettings(quick=True), progress=False)
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_text() == "keep me"


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier demo")
    summary = run_demo(out, DemoSettings(train_cases=2, test_cases=1, quick=True), overwrite=True, progress=False)

    assert not (out / "stale.txt").exists()  # overwrite replaced the folder
    assert json.loads((out / "demo_summary.json").read_text()) == summary
    unet, iunet, runet = (out / "runs" / n for n in ("unet_alone", "iunet_identity", "demo_liver_phantom"))
    assert summary["folder"] == str(out)
    assert summary["runs"] == {"UNet (1 slice/volume)": str(unet), "IUNet (UNet + identity)": str(iunet),
                               "RUNet (UNet + FMIRNet)": str(runet)}
    assert sorted(p.name for p in (out / "data" / "phantom_full" / "imagesTr").iterdir()) == [
        "liver_ct_000_0000.nii.gz", "liver_ct_001_0000.nii.gz"]
    assert sorted(p.name for p in (out / "data" / "phantom_full" / "imagesTs").iterdir()) == ["liver_ct_002_0000.nii.gz"]

    runs = {name: json.loads((folder / "summary.json").read_text())
            for name, folder in (("unet", unet), ("iunet", iunet), ("runet", runet))}
    assert runs["unet"]["mode"] == "segmentation" and sorted(runs["unet"]["exported"]) == ["segmentor"]
    assert runs["runet"]["mode"] == "joint" and sorted(runs["runet"]["exported"]) == ["registration", "segmentor"]
    # The identity baseline trains no registration; the segmentor gets the same steps.
    assert runs["iunet"]["registration_steps"] == 0 and runs["runet"]["registration_steps"] > 0
    assert runs["iunet"]["segmentation_steps"] == runs["runet"]["segmentation_steps"]
    identity = runs["iunet"]["evaluation"]["registration"]
    assert identity["label_dice"] == identity["identity_dice"]
    for run in runs.values():
        assert run["evaluation"]["split"] == "Ts" and run["evaluation"]["cases"] == 1

    results = (out / "results.md").read_text()
    assert results.startswith("# jointreg demo\n\n## Segmentation on 1 held-out phantom volumes\n")
    assert summary["table"] in results and "## Registration (label propagation on the test volumes)" in results
    rows = summary["table"].splitlines()
    assert rows[0].startswith("| method | liver Dice |")
    assert [row.split(" | ")[0] for row in rows[2:]] == [
        "| UNet (1 slice/volume)", "| IUNet (UNet + identity)", "| RUNet (UNet + FMIRNet)"]
    assert f"Everything is in {out}" in capsys.readouterr().out
