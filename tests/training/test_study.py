import dataclasses
from pathlib import Path

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
    }, baseline="UNet", comparisons=[["RUNet", "UNet*"]])
    result = run_study(path, progress=False)
    assert [r["method"] for r in result["runs"]] == ["UNet", "RUNet", "UNet*"]
    text = (tmp_path / "study" / "study.md").read_text()
    for method in ("| UNet |", "| RUNet |", "| UNet* |"):
        assert method in text
    assert (tmp_path / "study" / "comparison" / "comparison.md").is_file()
    # The extra comparison: RUNet against UNet*, with the mean paired Dice difference of the runs' reports.
    from jointreg.metrics import read_per_case

    dice = {r["method"]: {row.case: row.dice for row in read_per_case(r["run"] + "/evaluation")} for r in result["runs"]}
    expected = sum(dice["RUNet"][c] - dice["UNet*"][c] for c in dice["RUNet"]) / len(dice["RUNet"])
    assert "## RUNet vs UNet* (paired Wilcoxon over the test cases)" in text
    row = next(line for line in text.splitlines() if line.startswith("| liver | dice |") and "UNet*" not in line)
    assert row.split("|")[5].strip() == f"{expected:+.3f}"
    assert (tmp_path / "study" / "comparison" / "runet_vs_unet-star" / "comparison.json").is_file()
    assert (tmp_path / "study" / "plots" / "liver" / "boxplot_dice.png").is_file()

    # A second call reuses every finished run: training must not be called again.
    import jointreg.training.loop as loop

    monkeypatch.setattr(loop, "train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    again = run_study(path, progress=False)
    assert [r["run"] for r in again["runs"]] == [r["run"] for r in result["runs"]]


def test_a_comparison_whose_method_has_not_run_names_what_is_missing(tiny_recipe, tmp_path):
    # `study --only RUNet` leaves IUNet without a run: the page says which side is missing.
    from jointreg.training.study import _write_pair_comparisons

    path = _write_study(tmp_path, tiny_recipe(), {"IUNet": {}, "RUNet": {}, "UNet": {}},
                        comparisons=[["RUNet", "IUNet"], ["UNet", "IUNet"]])
    study, _ = load_study(path)
    text = _write_pair_comparisons(study, {"RUNet": tmp_path / "report"}, tmp_path / "out")
    assert "RUNet vs IUNet: not compared (no finished run of IUNet in this study)." in text
    assert "UNet vs IUNet: not compared (no finished run of UNet or IUNet in this study)." in text
    assert not (tmp_path / "out").exists()


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
    path = _write_study(tmp_path, tiny_recipe(), {"A": {}, "B": {}}, comparisons=[["A", "C"]])
    with pytest.raises(ConfigError, match="comparisons: 'C' is not one of the methods"):
        load_study(path)
    path = _write_study(tmp_path, tiny_recipe(), {"A": {}, "B": {}}, comparisons=[["A", "A"]])
    with pytest.raises(ConfigError, match="compared with itself"):
        load_study(path)
    path = _write_study(tmp_path, tiny_recipe(), {"A": {}, "B": {}}, comparisons=[["A", "B", "C"]])
    with pytest.raises(ConfigError, match="comparisons"):
        load_study(path)


def test_a_run_finished_with_other_settings_is_refused_before_training_unless_retrain(tiny_recipe, tmp_path, monkeypatch):
    import json

    import jointreg.training.loop as loop
    from jointreg.training.study import plan_runs

    path = _write_study(tmp_path, tiny_recipe(), {"A": {}, "B": {"registration.lr": 0.5}})
    planned = {r.method: r for r in plan_runs(*load_study(path))}
    old = dataclasses.replace(planned["B"].recipe, seed=planned["B"].recipe.seed + 1)  # B finished with another seed
    planned["B"].run_dir.mkdir(parents=True)
    (planned["B"].run_dir / "recipe.yaml").write_text(dump_recipe(old))
    (planned["B"].run_dir / "summary.json").write_text(json.dumps({"status": "finished"}))
    calls = []

    def fake_train(recipe, **kwargs):
        calls.append(recipe.name)
        raise RuntimeError("stop here")

    monkeypatch.setattr(loop, "train", fake_train)
    with pytest.raises(ConfigError, match=r"b_seed0: this run finished with other settings \(seed: .*\); --retrain"):
        run_study(path, progress=False)
    assert calls == []  # refused before A trained
    with pytest.raises(RuntimeError, match="stop here"):
        run_study(path, progress=False, only=["A"])  # B is not asked for: A trains
    assert len(calls) == 1
    with pytest.raises(RuntimeError, match="stop here"):
        run_study(path, progress=False, retrain=True)
    assert len(calls) == 2


def test_shipped_studies_resolve_every_method():
    from pathlib import Path

    from jointreg.training.study import plan_runs

    studies = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("study_*.yaml"))
    assert len(studies) >= 2
    for path in studies:
        study, base = load_study(path)
        runs = plan_runs(study, base)
        methods = {r.method for r in runs}
        by_method = {r.method: r.recipe for r in runs}
        if by_method["R3D-UNet" if "R3D-UNet" in methods else "UNet"].volumes.enabled:
            # 3D mode: the segmentor alone on the annotated volumes, the identity, affine, FMIRNet, all labelled.
            assert {"UNet", "I3D-UNet", "A3D-UNet", "R3D-UNet", "UNet*"} <= methods, path.name
            assert by_method["UNet"].mode == "segmentation" and not by_method["UNet"].volumes.enabled
            assert [by_method[m].registration.architecture for m in ("I3D-UNet", "A3D-UNet", "R3D-UNet")] == \
                ["identity", "affine", "fmirnet"]
            assert all(by_method[m].volumes.enabled and by_method[m].mode == "joint" for m in ("I3D-UNet", "A3D-UNet", "R3D-UNet"))
            assert by_method["UNet*"].data.labels == "full" and study.folds.volumes is not None
            continue
        assert {"UNet", "IUNet", "RUNet", "VUNet", "UNet*"} <= methods, path.name
        assert by_method["UNet"].mode == "segmentation"
        assert by_method["RUNet"].mode == "joint"
        assert by_method["VUNet"].registration.architecture == "voxelmorph"
        assert by_method["IUNet"].registration.architecture == "identity"
        # Same labelling rules; the identity baseline does not refine (that is IUNet-refine's job).
        assert by_method["IUNet"].propagation.refine == 0
        assert dataclasses.replace(by_method["IUNet"].propagation, refine=by_method["RUNet"].propagation.refine) \
            == by_method["RUNet"].propagation
        assert by_method["UNet*"].data.labels == "full"


def test_folds_are_deterministic_disjoint_and_cover_every_case():
    from jointreg.training.folds import FoldsConfig, assign_folds

    cases = [f"c{i}" for i in range(10)]
    folds = assign_folds(cases, 3, seed=0)
    assert folds == assign_folds(cases, 3, seed=0)
    assert sorted(c for f in folds for c in f) == cases and [len(f) for f in folds] == [4, 3, 3]
    assert folds != assign_folds(cases, 3, seed=1)
    with pytest.raises(ConfigError, match="need at least 2 folds"):
        FoldsConfig(count=1, dataset="d")
    with pytest.raises(ConfigError, match="needs a fully labelled dataset"):
        FoldsConfig(count=2)
    with pytest.raises(ConfigError, match="4 folds need at least 4 cases"):
        assign_folds(cases[:3], 4, seed=0)


@pytest.mark.slow
def test_a_cross_validated_study_pools_the_test_volumes_of_every_fold(tiny_recipe, sparse_phantom, tmp_path):
    import json

    from jointreg.data.dataset import Dataset
    from jointreg.metrics import read_per_case

    full = sparse_phantom.parent / "full"  # 3 training + 1 test phantom, fully labelled
    path = _write_study(tmp_path, tiny_recipe(), {"UNet": {"registration.enabled": False},
                                                    "IUNet": {"registration.architecture": "identity",
                                                              "registration.arguments": {}}},
                        baseline="UNet", folds={"count": 2, "dataset": str(full), "classes": ["liver"]})
    result = run_study(path, progress=False)
    assert [(r["method"], r["fold"]) for r in result["runs"]] == [("UNet", 0), ("IUNet", 0), ("UNet", 1), ("IUNet", 1)]
    folds = [json.loads((tmp_path / "study" / "folds" / f"fold{k}" / "folds.json").read_text()) for k in (0, 1)]
    assert sorted(folds[0]["test"] + folds[1]["test"]) == sorted(Dataset.open(full).cases("Tr") + Dataset.open(full).cases("Ts"))
    assert folds[0]["train"] == folds[1]["test"]
    # Each fold trains on sparse labels of its training cases and tests on the other cases.
    fold0 = Dataset.open(tmp_path / "study" / "folds" / "fold0")
    assert fold0.cases("Tr") == folds[0]["train"] and fold0.cases("Ts") == folds[0]["test"]
    assert fold0.spec.ignore_label is not None and fold0.has_full_labels("Tr")
    # The pooled report of each method holds every case once.
    for pooled in result["pooled"]:
        cases = {row.case for row in read_per_case(pooled["report"])}
        assert cases == set(folds[0]["test"] + folds[1]["test"])
    text = (tmp_path / "study" / "study.md").read_text()
    assert "Test volumes of all 2 folds pooled" in text and "## Fold 0" in text and "## Fold 1" in text
    comparison = json.loads((tmp_path / "study" / "comparison" / "comparison.json").read_text())
    assert {entry["case"] for entry in comparison["paired"]} == set(folds[0]["test"] + folds[1]["test"])


def test_volume_folds_keep_whole_annotated_volumes(sparse_phantom, tmp_path):
    """folds.volumes: each fold's training cases sparsified as `sparsify --volumes N` (3D mode)."""
    import json

    from jointreg.data.dataset import Dataset
    from jointreg.training.folds import FoldsConfig, build_fold_datasets

    full = sparse_phantom.parent / "full"  # 3 training + 1 test phantom, fully labelled
    folds = build_fold_datasets(FoldsConfig(count=2, dataset=str(full), volumes=1), tmp_path / "folds")
    for fold in folds:
        manifest = json.loads((Path(fold["dataset"]) / "sparsify.json").read_text())
        assert manifest["mode"] == "volumes" and len(manifest["kept_volumes"]) == 1
        ds = Dataset.open(fold["dataset"])
        ignore = ds.spec.ignore_label
        annotated = [c for c in ds.cases("Tr") if (ds.read_label(c).array != ignore).any()]
        assert annotated == manifest["kept_volumes"]
        assert (ds.read_label(annotated[0]).array != ignore).all()
    with pytest.raises(ConfigError, match="folds.volumes"):
        FoldsConfig(count=2, dataset="d", volumes=0)


def test_registration_table_of_3d_runs_shows_training_and_test_groups():
    from jointreg.training.results import registration_table

    reg = {"training": {"label_dice": 0.7123, "identity_dice": 0.6011}, "Ts": {"label_dice": 0.65, "identity_dice": 0.55}}
    table = registration_table([("R3D", {"evaluation": {"registration": reg}})])
    assert table.splitlines()[0] == "| method | training registration | training identity | Ts registration | Ts identity |"
    assert table.splitlines()[2] == "| R3D | 0.712 | 0.601 | 0.650 | 0.550 |"


def test_3d_registration_figures_of_the_folds_are_pooled_per_case():
    from jointreg.training.study import _pool_volume_registration

    fold0 = {"training": {"per_case": {"a": {"registration": 0.8, "identity": 0.6}}},
             "Ts": {"per_case": {"b": {"registration": 0.7, "identity": 0.7}}}}
    fold1 = {"training": {"per_case": {"c": {"registration": 0.6, "identity": 0.5},
                                       "d": {"registration": 0.4, "identity": 0.4}}}}
    pooled = _pool_volume_registration([fold0, fold1])
    assert pooled["training"]["cases"] == 3 and set(pooled["training"]["per_case"]) == {"a", "c", "d"}
    assert pooled["training"]["label_dice"] == pytest.approx(0.6) and pooled["training"]["identity_dice"] == pytest.approx(0.5)
    assert pooled["Ts"]["cases"] == 1


def test_study_overrides_set_keys_of_a_section_and_keep_its_others():
    from jointreg.training.study import _override_list

    assert _override_list({"threads": 1, "data": {"size": [48, 48]}, "registration": {"arguments": {"features": [4, 8]}}}) \
        == ["threads=1", "data.size=[48, 48]", "registration.arguments={features: [4, 8]}"]


@pytest.mark.parametrize("name", ["study_chaos_t2_liver.yaml", "study_ms_cmr.yaml"])
def test_the_soft_methods_keep_the_rules_their_stored_figures_were_measured_with(name):
    # results/*_cases.json pairs new runs with stored ones by method name: "-soft" must stay the
    # rules before the hard labels (a 3-pixel band ignored, weight 0.5, no gate), RUNet the hard ones.
    from pathlib import Path

    from jointreg.training.study import plan_runs

    study, base = load_study(Path(__file__).resolve().parents[2] / "recipes" / name)
    recipes = {r.method: r.recipe for r in plan_runs(study, base) if r.fold in (0, None)}
    for method in ("RUNet-soft", "IUNet-refine-soft"):
        rules = recipes[method]
        assert (rules.propagation.background_margin, rules.propagation.appearance_percentiles,
                rules.propagation.gate, rules.propagation.step_gate) == (3, (0.1, 99.9), 0.0, 0.0), method
        assert rules.segmentation.propagated_weight == 0.5, method
    assert recipes["IUNet-refine-soft"].registration.architecture == "identity"
    for method in ("RUNet", "IUNet-refine"):
        assert recipes[method].propagation.background_margin == 0, method
        assert recipes[method].segmentation.propagated_weight == 1.0, method
    # the step gate only where it was measured to help: the liver, not the heart
    assert recipes["RUNet"].propagation.step_gate == (2.0 if "chaos" in name else 0.0)
