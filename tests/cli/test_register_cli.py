"""jointreg register: outputs, options, and one-line errors (exit 2) that leave nothing behind."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from jointreg.cli.main import main
from jointreg.data.nifti import read_image, write_volume


@pytest.fixture
def pair(trained_run):
    """(model folder, moving image, fixed image, moving labels) from the shared tiny run."""
    full = trained_run["full"]
    images = sorted((full / "imagesTr").glob("*.nii.gz"))
    labels = sorted((full / "labelsTr").glob("*.nii.gz"))
    return trained_run["run"] / "export" / "registration", images[0], images[1], labels[0]


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("jointreg register: error:"), err
    return err


def test_register_with_a_slice_map(pair, tmp_path, capsys):
    model, moving, fixed, labels = pair
    out = tmp_path / "out"
    code = main(["register", "--model", str(model), str(moving), str(fixed), "--out", str(out),
                 "--labels", str(labels), "--slice-map", "12:9-11", "--slice-map", "12:13", "--nearest", "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "registered 4 pair(s)" in printed and "20 fixed slice(s) not in the slice map" in printed
    summary = json.loads((out / "register.json").read_text())
    assert [(p["moving"], p["fixed"]) for p in summary["pairs"]] == [(12, 9), (12, 10), (12, 11), (12, 13)]
    assert summary["label_mode"] == "nearest" and summary["field"]["format"] == "ants"
    field = nib.load(str(out / "displacement.nii.gz"))
    assert field.shape == (*read_image(fixed).shape, 1, 3) and int(field.header["intent_code"]) == 1007
    vectors = field.get_fdata()
    # Unregistered slices carry no displacement; slice 12 -> 9 is 3 slices away along z.
    assert not vectors[:, :, 12].any()
    spacing_z = read_image(fixed).spacing[2]
    moving_z = read_image(moving).affine[2, 3] + 12 * spacing_z
    fixed_z = read_image(fixed).affine[2, 3] + 9 * spacing_z
    np.testing.assert_allclose(vectors[:, :, 9, 0, 2], moving_z - fixed_z, atol=1e-3)


def test_field_formats_and_overwrite(pair, tmp_path, capsys):
    model, moving, _, _ = pair
    out = tmp_path / "out"
    one = ["--slice-map", "12:12"]
    assert main(["register", "--model", str(model), str(moving), str(moving), "--out", str(out), "--field", "nifti", *one]) == 0
    assert int(nib.load(str(out / "displacement.nii.gz")).header["intent_code"]) == 1006
    assert main(["register", "--model", str(model), str(moving), str(moving), "--out", str(out), "--field", "voxel", *one]) == 2
    assert "already exists" in _error(capsys)
    assert main(["register", "--model", str(model), str(moving), str(moving), "--out", str(out), "--field", "voxel",
                 "--overwrite", *one]) == 0
    assert nib.load(str(out / "displacement.nii.gz")).shape == (*read_image(moving).shape, 3)


def test_a_2d_image_needs_axis(pair, tmp_path, capsys):
    model, moving, _, _ = pair
    volume = read_image(moving)
    flat = tmp_path / "slice.nii.gz"
    write_volume(flat, volume.array[:, :, 12], affine=volume.affine)
    out = tmp_path / "out"
    assert main(["register", "--model", str(model), str(flat), str(flat), "--out", str(out)]) == 2
    assert "has no slice axis" in _error(capsys) and not out.exists()
    assert main(["register", "--model", str(model), str(flat), str(flat), "--out", str(out), "--axis", "2"]) == 0
    assert nib.load(str(out / "warped.nii.gz")).shape == volume.shape[:2]
    assert nib.load(str(out / "displacement.nii.gz")).shape == (*volume.shape[:2], 1, 1, 2)
    # A 2D moving image with a 3D fixed image is a dimension mismatch.
    out2 = tmp_path / "out2"
    assert main(["register", "--model", str(model), str(flat), str(moving), "--out", str(out2), "--axis", "2"]) == 2
    assert "same number of dimensions" in _error(capsys) and not out2.exists()


def test_different_slice_counts_need_a_slice_map(pair, tmp_path, capsys):
    model, moving, fixed, _ = pair
    volume = read_image(fixed)
    shorter = tmp_path / "short.nii.gz"
    write_volume(shorter, volume.array[:, :, :20], affine=volume.affine)
    out = tmp_path / "out"
    assert main(["register", "--model", str(model), str(moving), str(shorter), "--out", str(out)]) == 2
    assert "24 slices and the fixed image 20" in _error(capsys) and not out.exists()
    assert main(["register", "--model", str(model), str(moving), str(shorter), "--out", str(out), "--slice-map", "5:5,23:19"]) == 0
    assert main(["register", "--model", str(model), str(moving), str(shorter), "--out", str(out), "--overwrite",
                 "--slice-map", "5:20"]) == 2
    assert "out of range" in _error(capsys)
    assert main(["register", "--model", str(model), str(moving), str(shorter), "--out", str(out), "--overwrite",
                 "--slice-map", "5-20"]) == 2
    assert "not M:F" in _error(capsys)


def test_bad_model_folders(pair, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    model, moving, fixed, _ = pair
    out = tmp_path / "out"
    # A config that does not describe its weights.
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    config = json.loads((broken / "config.json").read_text())
    config["arguments"]["features"] = [8, 8, 8]
    (broken / "config.json").write_text(json.dumps(config))
    assert main(["register", "--model", str(broken), str(moving), str(fixed), "--out", str(out)]) == 2
    assert "does not match model.safetensors" in _error(capsys)
    # Weights that produce NaN displacements.
    nan = tmp_path / "nan"
    shutil.copytree(model, nan)
    state = load_file(str(nan / "model.safetensors"))
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(nan / "model.safetensors"))
    assert main(["register", "--model", str(nan), str(moving), str(fixed), "--out", str(out)]) == 2
    assert "NaN or infinite displacements" in _error(capsys) and not out.exists()
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("command", ["register", "segment", "pseudolabel"])
def test_batch_size_must_be_positive(command, tmp_path, capsys):
    # Shared inference options: argparse rejects the value before anything is read.
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0 and "--batch-size N" in capsys.readouterr().out
    argv = {
        "register": ["register", "--model", "m", "a.nii.gz", "b.nii.gz", "--out", str(tmp_path / "o")],
        "segment": ["segment", "--model", "m", "a.nii.gz", "--out", str(tmp_path / "o")],
        "pseudolabel": ["pseudolabel", "--run", "r", "--dataset", "d", "--out", str(tmp_path / "o")],
    }[command]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--batch-size", "0"])
    assert exit_info.value.code == 2
    assert "--batch-size: must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_field_formats_match_the_library():
    # The command keeps its own copy so that building its parser imports no library code; it must not drift.
    from jointreg.cli import register as command
    from jointreg.inference.register_output import FIELD_FORMATS

    assert command.FIELD_FORMATS == FIELD_FORMATS


def test_bfloat16_backend_where_it_is_emulated_is_one_line(pair, tmp_path, capsys, monkeypatch):
    import jointreg.utils.device as device

    model, moving, fixed, _ = pair
    monkeypatch.setattr(device, "bfloat16_in_hardware", lambda _device: False)
    out = tmp_path / "out"
    code = main(["register", "--model", str(model), str(moving), str(fixed), "--out", str(out), "--device", "cpu",
                 "--backend", "torch-bfloat16"])
    assert code == 2 and not out.exists()
    assert "no bfloat16 matrix units" in _error(capsys)
    monkeypatch.setattr(device, "bfloat16_in_hardware", lambda _device: True)
    assert main(["register", "--model", str(model), str(moving), str(fixed), "--out", str(out), "--device", "cpu",
                 "--backend", "torch-bfloat16"]) == 0
    assert json.loads((out / "register.json").read_text())["backend"] == "torch-bfloat16"
