"""benchmarks/study_cases.py: per-case figures of a study kept as JSON, and paired across entries."""

from __future__ import annotations

import json
from pathlib import Path

HEADER = "case,class,dice,hd,hd95,assd,missed,status,class_id,gt_voxels,pred_voxels\n"


def _pooled(study: Path, method: str, seed: int, dice: dict[str, float]) -> None:
    folder = study / "pooled" / f"{method}_seed{seed}"
    folder.mkdir(parents=True)
    rows = "".join(f"{c},liver,{d},9,{10 * d},{d / 2},false,ok,1,100,90\n" for c, d in dice.items())
    (folder / "per_case.csv").write_text(HEADER + rows + "c1,spleen,0.1,1,1,1,false,ok,2,5,5\n")


def test_collect_then_pair_gives_the_paired_differences(tmp_path, capsys, benchmark_script):
    bench = benchmark_script("study_cases")
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


def test_collect_refuses_a_study_without_that_seed(tmp_path, capsys, benchmark_script):
    bench = benchmark_script("study_cases")
    _pooled(tmp_path, "unet", 0, {"c1": 0.5})
    assert bench.main(["collect", str(tmp_path), "--seed", "3", "--label", "x", "--out", str(tmp_path / "o.json")]) == 2
    assert "no pooled reports of seed 3" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_two_studies_collected_under_one_label_keep_both_methods(tmp_path, benchmark_script):
    bench = benchmark_script("study_cases")
    out = tmp_path / "cases.json"
    _pooled(tmp_path / "a", "runet", 0, {"c1": 0.6})
    _pooled(tmp_path / "b", "iunet", 0, {"c1": 0.5})
    for study in ("a", "b"):
        assert bench.main(["collect", str(tmp_path / study), "--seed", "0", "--label", "even", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["studies"]["even"]["segmentation"] == {
        "runet": {"c1": {"dice": 0.6, "hd95": 6.0, "assd": 0.3}}, "iunet": {"c1": {"dice": 0.5, "hd95": 5.0, "assd": 0.25}}}


def test_pair_names_a_missing_entry_or_method(tmp_path, capsys, benchmark_script):
    bench = benchmark_script("study_cases")
    out = tmp_path / "cases.json"
    _pooled(tmp_path / "a", "runet", 0, {"c1": 0.6})
    assert bench.main(["collect", str(tmp_path / "a"), "--seed", "0", "--label", "s0", "--out", str(out)]) == 0
    assert bench.main(["pair", str(out), "--entries", "s9", "--methods", "runet", "iunet"]) == 2
    assert "no entry 's9' (entries: s0)" in capsys.readouterr().err
    assert bench.main(["pair", str(out), "--entries", "s0", "--methods", "runet", "iunet"]) == 2
    assert "entry 's0' has no method 'iunet' (methods: runet)" in capsys.readouterr().err
    assert bench.main(["pair", str(tmp_path / "none.json"), "--entries", "s0", "--methods", "a", "b"]) == 2


def _run(folder: Path, rows: str) -> Path:
    (folder / "evaluation").mkdir(parents=True)
    (folder / "evaluation" / "per_case.csv").write_text(HEADER + rows)
    return folder


def test_collect_runs_merges_the_folds_and_averages_the_classes(tmp_path, capsys, benchmark_script):
    bench = benchmark_script("study_cases")
    out = tmp_path / "cases.json"
    # case a: rv 0.6 / lv 0.8, hd95 4 and undefined (an empty prediction) -> dice 0.7, hd95 4
    fold0 = _run(tmp_path / "f0", "a,rv,0.6,9,4,1,false,ok,1,10,9\na,lv,0.8,9,nan,nan,true,ok,3,10,0\n")
    fold1 = _run(tmp_path / "f1", "b,rv,0.2,9,10,2,false,ok,1,10,9\nb,lv,0.4,9,20,4,false,ok,3,10,9\n")
    assert bench.main(["collect-runs", str(fold0), str(fold1), "--method", "RUNet-chain", "--label", "s0",
                       "--class", "mean", "--out", str(out)]) == 0
    entry = json.loads(out.read_text())["studies"]["s0"]
    assert entry["class"] == "mean"
    assert entry["segmentation"]["RUNet-chain"] == {"a": {"dice": 0.7, "hd95": 4.0, "assd": 1.0},
                                                     "b": {"dice": 0.3, "hd95": 15.0, "assd": 3.0}}
    # one class of the same runs, under another method name, beside the first
    assert bench.main(["collect-runs", str(fold0), "--method", "lv-only", "--label", "s0", "--class", "lv",
                       "--out", str(out)]) == 0
    segmentation = json.loads(out.read_text())["studies"]["s0"]["segmentation"]
    assert set(segmentation) == {"RUNet-chain", "lv-only"} and segmentation["lv-only"]["a"]["dice"] == 0.8


def test_collect_runs_refuses_a_run_without_evaluation_or_a_case_twice(tmp_path, capsys, benchmark_script):
    bench = benchmark_script("study_cases")
    out = tmp_path / "cases.json"
    (tmp_path / "empty").mkdir()
    assert bench.main(["collect-runs", str(tmp_path / "empty"), "--method", "m", "--label", "s",
                       "--out", str(out)]) == 2
    assert "no per-case report" in capsys.readouterr().err
    first = _run(tmp_path / "r1", "a,rv,0.6,9,4,1,false,ok,1,10,9\n")
    again = _run(tmp_path / "r2", "a,rv,0.5,9,4,1,false,ok,1,10,9\n")
    assert bench.main(["collect-runs", str(first), str(again), "--method", "m", "--label", "s",
                       "--out", str(out)]) == 2
    assert "case a is already in another of the runs given" in capsys.readouterr().err
    assert bench.main(["collect-runs", str(first), "--method", "m", "--label", "s", "--class", "lv",
                       "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {first / 'evaluation' / 'per_case.csv'}: no rows of class 'lv'"
    assert not out.exists()
