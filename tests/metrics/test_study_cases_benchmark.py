"""benchmarks/study_cases.py: per-case figures of a study kept as JSON, and paired across entries."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEADER = "case,class,dice,hd,hd95,assd,missed,status,class_id,gt_voxels,pred_voxels\n"


def _script():
    spec = importlib.util.spec_from_file_location("study_cases_bench", REPO / "benchmarks" / "study_cases.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pooled(study: Path, method: str, seed: int, dice: dict[str, float]) -> None:
    folder = study / "pooled" / f"{method}_seed{seed}"
    folder.mkdir(parents=True)
    rows = "".join(f"{c},liver,{d},9,{10 * d},{d / 2},false,ok,1,100,90\n" for c, d in dice.items())
    (folder / "per_case.csv").write_text(HEADER + rows + "c1,spleen,0.1,1,1,1,false,ok,2,5,5\n")


def test_collect_then_pair_gives_the_paired_differences(tmp_path, capsys):
    bench = _script()
    out = tmp_path / "cases.json"
    for seed, shift in ((0, 0.0), (1, 0.1)):
        study = tmp_path / f"s{seed}"
        _pool = {"c1": 0.5 + shift, "c2": 0.6 + shift, "c3": 0.7 + shift}
        _pooled(study, "runet", seed, {c: d + 0.05 for c, d in _pool.items()})
        _pooled(study, "iunet", seed, _pool)
        run = study / f"runet_seed{seed}_fold0" / "evaluation"
        run.mkdir(parents=True)
        (run / "registration.json").write_text(json.dumps(
            {"training": {"per_case": {"c9": {"registration": 0.71234, "identity": 0.6}}}}))
        assert bench.main(["collect", str(study), "--seed", str(seed), "--label", f"seed {seed}",
                           "--out", str(out)]) == 0
    document = json.loads(out.read_text())
    entry = document["studies"]["seed 1"]
    assert entry["class"] == "liver"  # the first class in the CSV; the spleen row is left out
    assert entry["segmentation"]["iunet"]["c2"] == {"dice": 0.7, "hd95": 7.0, "assd": 0.35}
    assert entry["registration"] == {"runet": {"training": {"c9": {"registration": 0.7123, "identity": 0.6}}}}
    capsys.readouterr()
    assert bench.main(["pair", str(out), "--entries", "seed 0", "seed 1", "--methods", "iunet", "runet"]) == 0
    report = json.loads(capsys.readouterr().out)
    within = report["runet - iunet"]
    assert within["seed 0"]["difference"] == 0.05 and within["seed 0"]["better"] == 3
    assert within["mean of the entries per volume"]["difference"] == 0.05
    assert report["shift"]["iunet"]["seed 1 - seed 0"]["difference"] == 0.1
    assert report["cases"] == ["c1", "c2", "c3"]


def test_collect_refuses_a_study_without_that_seed(tmp_path, capsys):
    bench = _script()
    _pooled(tmp_path, "unet", 0, {"c1": 0.5})
    assert bench.main(["collect", str(tmp_path), "--seed", "3", "--label", "x", "--out", str(tmp_path / "o.json")]) == 2
    assert "no pooled reports of seed 3" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_two_studies_collected_under_one_label_keep_both_methods(tmp_path):
    bench = _script()
    out = tmp_path / "cases.json"
    _pooled(tmp_path / "a", "runet", 0, {"c1": 0.6})
    _pooled(tmp_path / "b", "iunet", 0, {"c1": 0.5})
    for study in ("a", "b"):
        assert bench.main(["collect", str(tmp_path / study), "--seed", "0", "--label", "even", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["studies"]["even"]["segmentation"] == {
        "runet": {"c1": {"dice": 0.6, "hd95": 6.0, "assd": 0.3}}, "iunet": {"c1": {"dice": 0.5, "hd95": 5.0, "assd": 0.25}}}


def test_pair_names_a_missing_entry_or_method(tmp_path, capsys):
    bench = _script()
    out = tmp_path / "cases.json"
    _pooled(tmp_path / "a", "runet", 0, {"c1": 0.6})
    assert bench.main(["collect", str(tmp_path / "a"), "--seed", "0", "--label", "s0", "--out", str(out)]) == 0
    assert bench.main(["pair", str(out), "--entries", "s9", "--methods", "runet", "iunet"]) == 2
    assert "no entry 's9' (entries: s0)" in capsys.readouterr().err
    assert bench.main(["pair", str(out), "--entries", "s0", "--methods", "runet", "iunet"]) == 2
    assert "entry 's0' has no method 'iunet' (methods: runet)" in capsys.readouterr().err
    assert bench.main(["pair", str(tmp_path / "none.json"), "--entries", "s0", "--methods", "a", "b"]) == 2
