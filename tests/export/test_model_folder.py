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


def _registration():
    from jointreg.nets.registration import create_registration_net

    torch.manual_seed(0)
    return create_registration_net("fmirnet", features=[4, 8, 8], spatial_dims=2)


def _arguments(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config["arguments"].update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_huge_channel_counts_are_refused_before_anything_is_allocated(tmp_path):
    import time

    folder = save_model_folder(tmp_path / "reg", _registration(), kind="registration", architecture="fmirnet")
    _arguments(folder, features=[100_000, 100_000, 100_000])
    start = time.perf_counter()
    with pytest.raises(InputError) as caught:
        load_model_folder(folder)
    assert time.perf_counter() - start < 2.0
    assert str(caught.value) == (
        f"{folder / 'config.json'}: fmirnet: these arguments build a network of 1.04e+12 parameters "
        "(4,160.1 GB as float32), more than the 5e+08 jointreg builds; the largest value is in features (100,000)"
    )


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"featurs": [4, 8]}, r"config.json: fmirnet: unknown argument\(s\) featurs; valid: spatial_dims, in_channels, features"),
        ({"features": [4, 10**9]}, r"config.json: fmirnet.features\[1\]: 1000000000 is too large for a network setting"),
        ({"features": [4] * 1000}, r"config.json: fmirnet.features: 1000 entries, more than a network setting takes"),
        ({"flow_init_std": float("inf")}, r"config.json: fmirnet.flow_init_std: expected a finite number, got inf"),
    ],
)
def test_config_arguments_are_checked_against_the_constructor(tmp_path, changes, message):
    folder = save_model_folder(tmp_path / "reg", _registration(), kind="registration", architecture="fmirnet")
    _arguments(folder, **changes)
    with pytest.raises(InputError, match=message):
        load_model_folder(folder)


def test_oversized_or_deeply_nested_config_json_is_refused(tmp_path):
    folder = save_model_folder(tmp_path / "seg", _fcn(), kind="segmentor", architecture="fcn")
    config = json.loads((folder / "config.json").read_text())
    config["extra"] = {"padding": "x" * (1 << 20)}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"config.json: model config is 1,048,9\d\d bytes, more than the 1,048,576"):
        load_model_folder(folder)
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputError, match=r"config.json: invalid JSON \(nested too deeply\)"):
        load_model_folder(folder)
    config.update(extra={}, arguments=[1, 2])
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"config.json: 'arguments' must be an object of constructor arguments"):
        load_model_folder(folder)


def _sha256(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_identical_weights_give_identical_files(tmp_path):
    # Two networks built alike, saved to two folders, and a reloaded copy saved again: the
    # weights files (and configs) are the same bytes, so a model can be checked by its hash.
    first = save_model_folder(tmp_path / "a", _registration(), kind="registration", architecture="fmirnet")
    second = save_model_folder(tmp_path / "b", _registration(), kind="registration", architecture="fmirnet")
    again = save_model_folder(tmp_path / "c", load_model_folder(first).model, kind="registration", architecture="fmirnet")
    digests = {_sha256(f / "model.safetensors") for f in (first, second, again)}
    assert len(digests) == 1
    assert len({(f / "config.json").read_bytes() for f in (first, second, again)}) == 1


def test_a_trained_runs_exports_are_reproduced_byte_for_byte(trained_run, tmp_path):
    from jointreg.export.run_folder import RunPaths

    for kind, folder in RunPaths(trained_run["run"]).exported_models().items():
        loaded = load_model_folder(folder)
        copies = [
            save_model_folder(tmp_path / f"{kind}{i}", loaded.model, kind=loaded.kind, architecture=loaded.architecture,
                              preprocessing=loaded.preprocessing, labels=loaded.labels, modality=loaded.modality,
                              extra=loaded.config.get("extra"))
            for i in range(2)
        ]
        assert {_sha256(c / "model.safetensors") for c in copies} == {_sha256(folder / "model.safetensors")}
