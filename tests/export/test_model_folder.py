import json

import pytest
import torch

from jointreg.errors import InputError
from jointreg.export.model_folder import load_model_folder, read_model_config, save_model_folder


def _fcn():
    from jointreg.nets.segmentation import create_segmentor

    torch.manual_seed(0)
    return create_segmentor("fcn", in_channels=1, classes=3, features=[4, 8, 8, 8, 8], head_channels=8)


def test_round_trip_gives_identical_outputs(tmp_path):
    net = _fcn().eval()
    folder = save_model_folder(tmp_path / "seg", net, kind="segmentor", architecture="fcn",
                               preprocessing={"size": [32, 32]}, labels={"background": 0, "a": 1, "b": 2}, modality="CT")
    loaded = load_model_folder(folder, kind="segmentor")
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), net(x))
    assert loaded.labels == {"background": 0, "a": 1, "b": 2}
    assert loaded.preprocessing == {"size": [32, 32]}
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]


def test_top_level_load_model(tmp_path):
    import jointreg

    folder = save_model_folder(tmp_path / "seg", _fcn(), kind="segmentor", architecture="fcn")
    assert jointreg.load_model(folder).kind == "segmentor"


def test_config_that_does_not_match_weights(tmp_path):
    folder = save_model_folder(tmp_path / "seg", _fcn(), kind="segmentor", architecture="fcn")
    config = json.loads((folder / "config.json").read_text())
    config["arguments"]["classes"] = 5
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"config.json does not match model.safetensors: .*shape mismatch"):
        load_model_folder(folder)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda f: (f / "model.safetensors").unlink(), "model.safetensors is missing"),
        (lambda f: (f / "config.json").unlink(), "config.json is missing"),
        (lambda f: (f / "config.json").write_text("{"), "invalid JSON"),
        (lambda f: (f / "model.safetensors").write_bytes(b"garbage"), "unreadable weights"),
        (lambda f: _edit(f, format_version=99), "format version 99 is not supported"),
        (lambda f: _edit(f, format="other"), "not a jointreg model config"),
        (lambda f: _edit(f, architecture="nope"), "unknown segmentor 'nope'"),
    ],
)
def test_broken_folders_are_clear_errors(tmp_path, mutate, message):
    folder = save_model_folder(tmp_path / "seg", _fcn(), kind="segmentor", architecture="fcn")
    mutate(folder)
    with pytest.raises(InputError, match=message):
        load_model_folder(folder)


def _edit(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_wrong_kind_and_missing_folder(tmp_path):
    folder = save_model_folder(tmp_path / "seg", _fcn(), kind="segmentor", architecture="fcn")
    with pytest.raises(InputError, match="is a segmentor model, expected a registration model"):
        load_model_folder(folder, kind="registration")
    with pytest.raises(InputError, match="model folder not found"):
        read_model_config(tmp_path / "nothing")
