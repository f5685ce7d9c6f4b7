"""Files a user may receive (NIfTI volumes, dataset.json, model folders) that are unusual or
built to exhaust memory: each is refused by the command line in one line naming the file and the
problem, exit code 2, no traceback; a stated conversion (intensity scaling) is a warning."""

import gzip
import json
import re
import struct

import nibabel as nib
import numpy as np
import pytest
import torch

from jointreg.cli.main import main
from jointreg.data.dataset import Dataset


def _patch(path, fmt, offset, value):
    block = bytearray(gzip.decompress(path.read_bytes()))
    struct.pack_into(fmt, block, offset, value)
    path.write_bytes(gzip.compress(bytes(block)))


def _rgb(path, affine):
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]), affine), path)
    return "colour data (RGB, datatype 128) is not supported"


def _complex(path, affine):
    nib.save(nib.Nifti1Image(np.ones((16, 16, 4), np.complex64), affine), path)
    return "complex-valued data (complex64, datatype 32) is not supported"


def _unknown_code(path, affine):
    _patch(path, "<h", 70, 4321)
    return "unknown NIfTI datatype code 4321"


def _zero_spacing(path, affine):
    _patch(path, "<f", 80, 0.0)  # pixdim[1]
    _patch(path, "<h", 254, 0)  # sform_code 0: the affine comes from the qform
    _patch(path, "<h", 252, 1)
    return "voxel spacing along axis 0 is 0 (pixdim[1])"


def _huge_dims(path, affine):
    for offset in (42, 44, 46):
        _patch(path, "<h", offset, 30000)
    return "the header declares 27,000,000,000,000 voxels"


@pytest.mark.parametrize("damage", [_rgb, _complex, _unknown_code, _zero_spacing, _huge_dims], ids=lambda f: f.__name__[1:])
def test_validate_reports_unusual_images_in_one_line(make_dataset, capsys, cli_error, damage):
    root = make_dataset(n_cases=2, shape=(16, 16, 4))
    path = Dataset.open(root).image_path("case001")
    message = damage(path, nib.load(path).affine)
    code = main(["validate", str(root)])
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{path}: {message}"), lines
    assert "1 problem(s)" in captured.out


def test_validate_states_the_scaling_it_applies(make_dataset, capsys, cli_error):
    root = make_dataset(n_cases=2, shape=(16, 16, 4))
    path = Dataset.open(root).image_path("case000")
    source = nib.load(path)
    img = nib.Nifti1Image(np.rint(np.asanyarray(source.dataobj)).astype(np.int16), source.affine)
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, path)
    assert main(["validate", str(root)]) == 0
    assert capsys.readouterr().err.strip().splitlines() == [
        f"{path}: warning: intensities are scaled on reading: value = 2 x stored + -1024 (scl_slope, scl_inter; "
        "applied as nibabel, ITK and nnU-Net apply it)"
    ]


@pytest.mark.parametrize(
    "content, message",
    [
        (lambda spec: spec | {"padding": "x" * (16 << 20)}, r"dataset.json is 16,777,\d+ bytes, more than the 16,777,216"),
        (lambda spec: "[" * 100_000 + "]" * 100_000, r"invalid JSON \(nested too deeply\)"),
        (lambda spec: spec | {"labels": {"background": 0, "organ": 10**12}}, r"label 'organ' has id 1000000000000; ids must lie in 0\.\.32767"),
        (lambda spec: spec | {"labels": {"background": 0, "organ": -1}}, r"label 'organ' has id -1; ids must lie in 0\.\.32767"),
    ],
    ids=["oversized", "nested", "huge-id", "negative-id"],
)
def test_bad_dataset_json_is_one_line(make_dataset, capsys, cli_error, content, message):
    root = make_dataset(n_cases=1, shape=(16, 16, 4))
    spec_path = root / "dataset.json"
    made = content(json.loads(spec_path.read_text()))
    spec_path.write_text(made if isinstance(made, str) else json.dumps(made))
    code = main(["validate", str(root)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"{spec_path}: ")
    assert re.search(message, err[0]), err[0]


@pytest.fixture
def segmentor_folder(tmp_path):
    from jointreg.export.model_folder import save_model_folder
    from jointreg.nets.segmentation import create_segmentor

    torch.manual_seed(0)
    net = create_segmentor("fcn", in_channels=1, classes=2, features=[4, 8, 8, 8, 8], head_channels=8)
    return save_model_folder(tmp_path / "seg", net, kind="segmentor", architecture="fcn",
                             preprocessing={"size": [32, 32]}, labels={"background": 0, "organ": 1}, modality="CT")


def test_segment_with_a_model_config_asking_for_a_huge_network(segmentor_folder, make_dataset, tmp_path, capsys, cli_error):
    config = json.loads((segmentor_folder / "config.json").read_text())
    config["arguments"]["features"] = [4, 8, 8, 8, 50_000]
    config["arguments"]["head_channels"] = 50_000
    (segmentor_folder / "config.json").write_text(json.dumps(config))
    root = make_dataset(n_cases=1, shape=(16, 16, 4))
    problem = cli_error(["segment", "--model", str(segmentor_folder), str(root / "imagesTr"),
                                      "--out", str(tmp_path / "seg_out"), "--no-progress"], "segment")
    assert problem.startswith(f"{segmentor_folder / 'config.json'}: segmentor fcn: these arguments build a network of ")
    assert problem.endswith("the largest value is in head_channels (50,000)")


def test_segment_refuses_a_complex_image(segmentor_folder, tmp_path, capsys, cli_error):
    image = tmp_path / "complex.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((16, 16, 4), np.complex64), np.eye(4)), image)
    problem = cli_error(["segment", "--model", str(segmentor_folder), str(image),
                                      "--out", str(tmp_path / "seg_out"), "--no-progress"], "segment")
    assert problem.startswith(f"{image}: complex-valued data (complex64, datatype 32) is not supported")


def test_export_size_is_bounded(segmentor_folder, tmp_path, capsys, cli_error):
    problem = cli_error(["export", str(segmentor_folder), "--format", "torchscript",
                                      "--size", "100000", "100000", "--out", str(tmp_path / "ts")], "export")
    assert problem == (
        "export size 100000 x 100000 x 1 channel(s) is 10,000,000,000 input voxels, more than 4,194,304 "
        "(2048 x 2048): the graph is traced on an example of this size, whose activations would exhaust memory"
    )
    assert not (tmp_path / "ts" / "segmentor.pt").exists()
    config = json.loads((segmentor_folder / "config.json").read_text())
    config["preprocessing"]["size"] = [50_000, 50_000]
    (segmentor_folder / "config.json").write_text(json.dumps(config))
    problem = cli_error(["export", str(segmentor_folder), "--format", "torchscript",
                                      "--out", str(tmp_path / "ts")], "export")
    assert problem.startswith(f"{segmentor_folder / 'config.json'}: preprocessing.size: export size 50000 x 50000")
