"""`jointreg pseudolabel`: happy path, resume message, evaluation of the output, bad input."""

import json
import shutil

import numpy as np
import pytest

from jointreg.cli.main import main
from jointreg.data.nifti import read_label, write_volume


def _error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.slow
def test_pseudolabel_then_evaluate(trained_run, tmp_path, capsys):
    out = tmp_path / "pseudo"
    args = ["pseudolabel", "--run", str(trained_run["run"]), "--dataset", str(trained_run["sparse"]), "--out", str(out),
            "--mode", "registration", "--propagation", "chain", "--no-progress"]
    assert main(args) == 0
    assert f"pseudo-labelled 3 case(s) into {out} (3 registration)" in capsys.readouterr().out
    assert main(args) == 0
    assert "pseudo-labelled 0 case(s), 3 already done" in capsys.readouterr().out
    report = tmp_path / "report"
    assert main(["evaluate", "--pred", str(out / "labelsTr"), "--gt", str(trained_run["sparse"]), "--out", str(report)]) == 0
    summary = json.loads((report / "summary.json").read_text())
    assert summary["classes"]["liver"]["dice"]["n"] == 3


def test_run_without_exports(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("name: run\n")
    assert main(["pseudolabel", "--run", str(run), "--dataset", str(trained_run["sparse"]), "--out", str(tmp_path / "o")]) == 2
    assert "is a jointreg run folder without exported models" in _error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_model_from_another_version(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run["run"] / "export", run / "export")
    config = json.loads((run / "export" / "registration" / "config.json").read_text())
    config["format_version"] = 2
    (run / "export" / "registration" / "config.json").write_text(json.dumps(config))
    assert main(["pseudolabel", "--run", str(run), "--dataset", str(trained_run["sparse"]), "--out", str(tmp_path / "o")]) == 2
    assert "model format version 2 is not supported" in _error_line(capsys)


def test_output_is_the_dataset(trained_run, tmp_path, capsys):
    sparse = trained_run["sparse"]
    before = sorted(str(p) for p in sparse.rglob("*"))
    assert main(["pseudolabel", "--run", str(trained_run["run"]), "--dataset", str(sparse), "--out", str(sparse)]) == 2
    assert "the output folder is the input dataset" in _error_line(capsys)
    assert sorted(str(p) for p in sparse.rglob("*")) == before


def test_registration_mode_without_any_annotation(trained_run, tmp_path, capsys):
    dataset = tmp_path / "unlabelled"
    shutil.copytree(trained_run["sparse"], dataset, ignore=shutil.ignore_patterns("labelsTr"))
    for path in (trained_run["sparse"] / "labelsTr").iterdir():
        label = read_label(path)
        write_volume(dataset / "labelsTr" / path.name, np.full(label.shape, 5, np.int16), reference=label, is_label=True)
    args = ["pseudolabel", "--run", str(trained_run["run"]), "--dataset", str(dataset), "--out", str(tmp_path / "o"), "--no-progress"]
    assert main(args + ["--mode", "registration"]) == 2
    assert "no annotated voxel in any case" in _error_line(capsys)
    assert main(args) == 0  # fusion falls back on the segmentor
    assert "(3 segmentor (no annotated slice))" in capsys.readouterr().out


def test_bad_options(trained_run, tmp_path, capsys):
    base = ["pseudolabel", "--run", str(trained_run["run"]), "--dataset", str(trained_run["sparse"]), "--out", str(tmp_path / "o")]
    assert main(base + ["--workers", "0"]) == 2
    assert _error_line(capsys) == "jointreg pseudolabel: error: workers must be an integer >= 1, got 0"
    assert main(base + ["--source-slices", "0"]) == 2
    assert "source-slices must be an integer >= 1" in _error_line(capsys)
    assert main(base + ["--mode", "registration", "--step-gate", "60"]) == 2
    assert _error_line(capsys) == "jointreg pseudolabel: error: step-gate must be a percentile in [0, 50), got 60.0"
    assert main(base + ["--mode", "registration", "--propagation", "direct", "--step-gate", "1"]) == 2
    assert "needs --propagation chain" in _error_line(capsys)
    assert main(base + ["--mode", "registration", "--refine-smoothness", "-1"]) == 2
    assert _error_line(capsys) == "jointreg pseudolabel: error: refine-smoothness must be a weight >= 0, got -1.0"
    assert main(base + ["--mode", "registration", "--refine", "0", "--refine-smoothness", "0.01"]) == 2
    assert "needs --refine STEPS > 0" in _error_line(capsys)


def test_sharded_jobs_then_merge(trained_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "pseudo"
    base = ["pseudolabel", "--run", str(trained_run["run"]), "--dataset", str(trained_run["sparse"]), "--out", str(out),
            "--mode", "segmentor", "--no-progress", "--device", "cpu"]
    assert main(base + ["--shard", "0/2", "--workers", "1"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"shard 0/2: pseudo-labelled 2 case(s) into {out} (2 segmentor); 1 of 3 case(s) still missing (other shards)")
    assert main(base + ["--merge"]) == 2
    assert _error_line(capsys) == (
        f"jointreg pseudolabel: error: {out}: 1 of 3 case(s) are not finished (liver_ct_001); run the shards that "
        "hold them (or this command without --merge), then --merge again")
    monkeypatch.setenv("RANK", "1")  # as torchrun --nproc-per-node 2 starts the second process
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(base) == 0
    assert capsys.readouterr().out.strip() == (
        f"shard 1/2: pseudo-labelled 1 case(s) into {out} (1 segmentor); all 3 case(s) finished, dataset.json written")
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 3
    assert main(base + ["--merge"]) == 0  # --merge takes no shard from torchrun
    assert capsys.readouterr().out.strip() == f"merged 3 case(s) in {out}: every case is finished, dataset.json written"


def test_bad_shard_options(trained_run, tmp_path, capsys):
    base = ["pseudolabel", "--run", str(trained_run["run"]), "--dataset", str(trained_run["sparse"]), "--out", str(tmp_path / "o")]
    assert main(base + ["--shard", "2/2"]) == 2
    assert _error_line(capsys) == "jointreg pseudolabel: error: --shard 2/2: the index must be in 0..1 (shards are numbered from 0)"
    assert main(base + ["--shard", "0/2", "--overwrite"]) == 2
    assert "--overwrite cannot be combined with a sharded job" in _error_line(capsys)
    assert main(base + ["--merge", "--overwrite"]) == 2
    assert _error_line(capsys) == "jointreg pseudolabel: error: --merge deletes nothing and takes no --overwrite"
    assert not (tmp_path / "o").exists()
