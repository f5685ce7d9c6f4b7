import pytest
import yaml

from jointreg.errors import ConfigError
from jointreg.training.config import dump_recipe
from jointreg.training.study import load_study, run_study, slug


def test_slug():
    assert slug("UNet*") == "unet-star"
    assert slug("RUNet (3 scales)") == "runet-3-scales"


def _write_study(tmp_path, recipe, methods, **extra):
    (tmp_path / "base.yaml").write_text(dump_recipe(recipe))
    study = {"name": "s", "base": "base.yaml", "output": str(tmp_path / "study"), "methods": methods, **extra}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


@pytest.mark.slow
def test_study_runs_methods_writes_table_and_reuses_finished_runs(tiny_recipe, tmp_path, monkeypatch):
    path = _write_study(tmp_path, tiny_recipe(), {
        "UNet": {"registration.enabled": False},
        "RUNet": {},
        "UNet*": {"registration.enabled": False, "data.labels": "full"},
    }, baseline="UNet")
    result = run_study(path, progress=False)
    assert [r["method"] for r in result["runs"]] == ["UNet", "RUNet", "UNet*"]
    text = (tmp_path / "study" / "study.md").read_text()
    for method in ("| UNet |", "| RUNet |", "| UNet* |"):
        assert method in text
    assert (tmp_path / "study" / "comparison" / "comparison.md").is_file()
    assert (tmp_path / "study" / "plots" / "liver" / "boxplot_dice.png").is_file()

    # A second call reuses every finished run: training must not be called again.
    import jointreg.training.loop as loop

    monkeypatch.setattr(loop, "train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    again = run_study(path, progress=False)
    assert [r["run"] for r in again["runs"]] == [r["run"] for r in result["runs"]]


def test_bad_study_files(tiny_recipe, tmp_path):
    path = _write_study(tmp_path, tiny_recipe(), {"A": {"registration.lrr": 1}})
    with pytest.raises(ConfigError, match="method 'A': .*registration.lrr: unknown key"):
        from jointreg.training.study import plan_runs

        plan_runs(*load_study(path))
    path = _write_study(tmp_path, tiny_recipe(), {"A": {}}, baseline="B")
    with pytest.raises(ConfigError, match="baseline: 'B' is not one of the methods"):
        load_study(path)
    path = _write_study(tmp_path, tiny_recipe(), {"A": {}, "a": {}})
    with pytest.raises(ConfigError, match="same folder name"):
        load_study(path)


def test_shipped_studies_resolve_every_method():
    from pathlib import Path

    from jointreg.training.study import plan_runs

    studies = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("study_*.yaml"))
    assert len(studies) >= 2
    for path in studies:
        study, base = load_study(path)
        runs = plan_runs(study, base)
        methods = {m for m, _, _, _ in runs}
        assert {"UNet", "RUNet", "VUNet", "UNet*"} <= methods, path.name
        by_method = {m: r for m, _, r, _ in runs}
        assert by_method["UNet"].mode == "segmentation"
        assert by_method["RUNet"].mode == "joint"
        assert by_method["VUNet"].registration.architecture == "voxelmorph"
        assert by_method["UNet*"].data.labels == "full"
