"""`jointreg segment`: happy path, warnings, and bad input (exit 2, one line, nothing overwritten)."""

import json
import logging
import shutil

import numpy as np

from jointreg.cli.main import main
from jointreg.data.nifti import read_image, read_label, write_volume


def _error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def _copy_model(trained_run, tmp_path, **changes):
    folder = tmp_path / "model"
    shutil.copytree(trained_run["run"] / "export" / "segmentor", folder)
    if changes:
        config = json.loads((folder / "config.json").read_text())
        config.update(changes)
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_segment_a_file_and_a_dataset(trained_run, tmp_path, capsys):
    image = trained_run["sparse"] / "imagesTs" / "liver_ct_003_0000.nii.gz"
    out = tmp_path / "pred"
    assert main(["segment", "--model", str(trained_run["run"]), str(image), "--out", str(out), "--no-progress",
                 "--device", "cpu", "--batch-size", "5"]) == 0
    assert f"segmented 1 volume(s) into {out}" in capsys.readouterr().out
    label = read_label(out / "liver_ct_003.nii.gz")
    assert np.array_equal(label.affine, read_image(image).affine)


def test_a_different_spacing_warns_and_still_works(trained_run, tmp_path, capsys, caplog):
    source = read_image(trained_run["sparse"] / "imagesTr" / "liver_ct_000_0000.nii.gz")
    coarse_affine = source.affine.copy()
    coarse_affine[:3, :3] *= 3.0
    inputs = tmp_path / "inputs"
    write_volume(inputs / "coarse.nii.gz", source.array, affine=coarse_affine)
    with caplog.at_level(logging.WARNING):
        assert main(["segment", "--model", str(trained_run["run"]), str(inputs), "--out", str(tmp_path / "pred"), "--no-progress"]) == 0
    assert "coarse: in-plane spacing" in caplog.text and "resampled to the training grid" in caplog.text
    assert "(1 with geometry warnings)" in capsys.readouterr().out
    assert read_label(tmp_path / "pred" / "coarse.nii.gz").shape == source.shape


def test_model_from_another_version(trained_run, tmp_path, capsys):
    model = _copy_model(trained_run, tmp_path, format_version=99)
    image = trained_run["sparse"] / "imagesTr" / "liver_ct_000_0000.nii.gz"
    assert main(["segment", "--model", str(model), str(image), "--out", str(tmp_path / "pred"), "--no-progress"]) == 2
    assert "model format version 99 is not supported" in _error_line(capsys)
    assert not (tmp_path / "pred").exists()


def test_model_with_missing_weights(trained_run, tmp_path, capsys):
    model = _copy_model(trained_run, tmp_path)
    (model / "model.safetensors").unlink()
    image = trained_run["sparse"] / "imagesTr" / "liver_ct_000_0000.nii.gz"
    assert main(["segment", "--model", str(model), str(image), "--out", str(tmp_path / "pred"), "--no-progress"]) == 2
    assert _error_line(capsys) == f"jointreg segment: error: {model}: model.safetensors is missing"


def test_run_folder_without_exports(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("name: run\n")
    image = tmp_path / "x.nii.gz"
    write_volume(image, np.zeros((4, 4, 4), np.float32), affine=np.eye(4))
    assert main(["segment", "--model", str(run), str(image), "--out", str(tmp_path / "pred")]) == 2
    assert "run folder has no exported segmentor" in _error_line(capsys)


def test_output_folder_is_the_input_folder(trained_run, tmp_path, capsys):
    inputs = tmp_path / "scans"
    inputs.mkdir()
    shutil.copy(trained_run["sparse"] / "imagesTr" / "liver_ct_000_0000.nii.gz", inputs / "a.nii.gz")
    before = {p.name: p.read_bytes() for p in inputs.iterdir()}
    assert main(["segment", "--model", str(trained_run["run"]), str(inputs), "--out", str(inputs)]) == 2
    assert "the output folder is an input folder" in _error_line(capsys)
    assert {p.name: p.read_bytes() for p in inputs.iterdir()} == before


def test_existing_output_needs_overwrite(trained_run, tmp_path, capsys):
    image = trained_run["sparse"] / "imagesTr" / "liver_ct_000_0000.nii.gz"
    out = tmp_path / "pred"
    out.mkdir()
    (out / "liver_ct_000.nii.gz").write_bytes(b"mine")
    assert main(["segment", "--model", str(trained_run["run"]), str(image), "--out", str(out)]) == 2
    assert "already exists" in _error_line(capsys)
    assert (out / "liver_ct_000.nii.gz").read_bytes() == b"mine"
    assert main(["segment", "--model", str(trained_run["run"]), str(image), "--out", str(out), "--overwrite", "--no-progress"]) == 0
    assert read_label(out / "liver_ct_000.nii.gz").shape == (64, 64, 24)


def test_sharded_jobs_then_merge(trained_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "pred"
    base = ["segment", "--model", str(trained_run["run"]), str(trained_run["sparse"]), "--out", str(out), "--no-progress",
            "--device", "cpu"]
    assert main(base + ["--shard", "1/2"]) == 0  # liver_ct_001 and liver_ct_003 of 000 ... 003
    assert capsys.readouterr().out.strip() == (
        f"shard 1/2: segmented 2 volume(s) into {out}; 2 of 4 volume(s) still missing (other shards)")
    assert main(base + ["--merge"]) == 2
    assert _error_line(capsys) == (
        f"jointreg segment: error: {out}: 2 of 4 case(s) are not finished (liver_ct_000, liver_ct_002); run the shards "
        "that hold them (or this command without --merge), then --merge again")
    assert main(base + ["--shard", "0/2", "--probabilities"]) == 2
    assert "was made with other settings (differs in: probabilities)" in _error_line(capsys)
    monkeypatch.setenv("RANK", "0")  # torchrun's first process
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(base) == 0
    assert capsys.readouterr().out.strip() == (
        f"shard 0/2: segmented 2 volume(s) into {out}; all 4 volume(s) finished, segmentation.json complete")
    assert sorted(p.name for p in out.iterdir()) == [f"liver_ct_00{i}.nii.gz" for i in range(4)] + ["segmentation.json"]
    assert main(base + ["--merge"]) == 0
    assert capsys.readouterr().out.strip() == f"merged 4 volume(s) in {out}: every volume is finished, segmentation.json complete"
    monkeypatch.setenv("RANK", "2")
    assert main(base) == 2
    assert _error_line(capsys) == (
        "jointreg segment: error: torchrun environment: RANK=2 is not in 0..WORLD_SIZE-1 (WORLD_SIZE=2)")
