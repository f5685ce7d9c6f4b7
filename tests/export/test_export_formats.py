"""TorchScript and ONNX exports run without jointreg and reproduce the PyTorch models."""

import json
import subprocess
import sys
import sysconfig
import textwrap

import numpy as np
import pytest
import torch

import jointreg
from jointreg.errors import ConfigError, InputError
from jointreg.export.standalone import export_run, model_folders

# torch 2.x deprecates TorchScript (torch.jit.load) in favour of torch.export; deployments still use it.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

# Runs with `python -I -S`: no user site, no .pth files (so not the editable install of
# jointreg), and a sys.path holding only the standard library and site-packages (torch,
# onnxruntime). It checks that jointreg cannot be imported, then runs both exports.
STANDALONE = textwrap.dedent(
    """
    import sys
    sys.path.append(sys.argv[1])
    try:
        import jointreg
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("jointreg is importable in the standalone check: " + jointreg.__file__)
    import numpy as np
    import onnxruntime
    import torch

    folder, data = sys.argv[2], np.load(sys.argv[3])
    out = {}
    for kind, names in (("segmentor", ["image"]), ("registration", ["moving", "fixed"])):
        inputs = [data[kind + "/" + n] for n in names]
        session = onnxruntime.InferenceSession(folder + "/onnx/" + kind + ".onnx", providers=["CPUExecutionProvider"])
        for i, array in enumerate(session.run(None, dict(zip(names, inputs)))):
            out["onnx/" + kind + "/" + str(i)] = array
        module = torch.jit.load(folder + "/torchscript/" + kind + ".pt")
        with torch.no_grad():
            result = module(*[torch.from_numpy(a) for a in inputs])
        for i, tensor in enumerate(result if isinstance(result, tuple) else (result,)):
            out["torchscript/" + kind + "/" + str(i)] = tensor.numpy()
    np.savez(sys.argv[4], **out)
    """
)


# Flow head biases of the compared registration network (pixels before fusion): the tiny run is
# barely trained, so its flow is nearly zero and would not tell a wrong export of the flow apart.
FLOW_BIAS = (0.3, -0.2)


@pytest.fixture(scope="module")
def flowing_run(trained_run, tmp_path_factory):
    """A copy of the tiny run's exports whose registration network predicts a clearly non-zero flow.

    Every convolution that outputs a 2-channel field (the flow heads, and the attention that fuses
    them) gets seeded N(0, 0.1) weights and the biases ``FLOW_BIAS``.
    """
    import shutil

    from jointreg.export.model_folder import load_model_folder, save_model_folder

    run = tmp_path_factory.mktemp("flowing_run")
    shutil.copytree(trained_run["run"] / "export", run / "export")
    folder = run / "export" / "registration"
    loaded = load_model_folder(folder)
    generator = torch.Generator().manual_seed(5)
    heads = [m for m in loaded.model.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == 2]
    assert heads, "no 2-channel convolution (flow head) found in the registration network"
    with torch.no_grad():
        for head in heads:
            head.weight.copy_(0.1 * torch.randn(head.weight.shape, generator=generator))
            head.bias.copy_(torch.tensor(FLOW_BIAS))
    save_model_folder(
        folder, loaded.model, kind=loaded.kind, architecture=loaded.architecture, preprocessing=loaded.preprocessing,
        labels=loaded.labels, modality=loaded.modality, extra=loaded.config.get("extra"), overwrite=True,
    )
    return run


@pytest.fixture(scope="module")
def exported(flowing_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported")
    files = export_run(flowing_run, "onnx", out=out / "onnx") + export_run(flowing_run, "torchscript", out=out / "torchscript")
    return out, files


def _pytorch_outputs(run, inputs):
    expected = {}
    seg = jointreg.load_model(run / "export" / "segmentor").model
    reg = jointreg.load_model(run / "export" / "registration").model
    with torch.no_grad():
        expected["segmentor/0"] = seg(torch.from_numpy(inputs["segmentor/image"])).numpy()
        result = reg(torch.from_numpy(inputs["registration/moving"]), torch.from_numpy(inputs["registration/fixed"]))
    expected["registration/0"], expected["registration/1"] = result.warped.numpy(), result.flow.numpy()
    return expected


def test_compared_registration_network_has_a_clearly_non_zero_flow(flowing_run):
    reg = jointreg.load_model(flowing_run / "export" / "registration").model
    generator = torch.Generator().manual_seed(1)
    moving, fixed = torch.rand(2, 1, 32, 32, generator=generator), torch.rand(2, 1, 32, 32, generator=generator)
    with torch.no_grad():
        result = reg(moving, fixed)
    magnitude = result.flow.norm(dim=1)
    assert magnitude.mean() > 0.5 and (magnitude > 0.1).float().mean() > 0.9, magnitude.mean()
    assert (result.warped - moving).abs().mean() > 0.05  # the flow moves the image


@pytest.mark.slow
def test_exports_run_without_jointreg_and_match_pytorch(flowing_run, exported, tmp_path):
    folder, files = exported
    assert sorted(p.name for p in files) == ["registration.onnx", "registration.pt", "segmentor.onnx", "segmentor.pt"]
    rng = np.random.default_rng(0)
    inputs = {  # batch 3: the batch axis is free, H × W is the traced training size
        "segmentor/image": rng.random((3, 1, 32, 32), dtype=np.float32),
        "registration/moving": rng.random((3, 1, 32, 32), dtype=np.float32),
        "registration/fixed": rng.random((3, 1, 32, 32), dtype=np.float32),
    }
    np.savez(tmp_path / "inputs.npz", **inputs)
    script = tmp_path / "standalone.py"
    script.write_text(STANDALONE)
    site = sysconfig.get_paths()["purelib"]
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(script), site, str(folder), str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    produced = np.load(tmp_path / "out.npz")
    expected = _pytorch_outputs(flowing_run, inputs)
    flow = np.linalg.norm(expected["registration/1"], axis=1)
    assert flow.mean() > 0.5, f"the compared flow is nearly zero ({flow.mean():.3g} px): the comparison would be vacuous"
    for fmt in ("onnx", "torchscript"):
        for key, want in expected.items():
            got = produced[f"{fmt}/{key}"]
            assert got.shape == want.shape, (fmt, key)
            assert np.abs(got - want).max() <= 1e-4, (fmt, key, np.abs(got - want).max())


def test_metadata_describes_the_tensors(exported, flowing_run):
    folder, _ = exported
    seg = json.loads((folder / "onnx" / "segmentor.json").read_text())
    assert seg["inputs"] == [{"name": "image", "shape": ["batch", 1, 32, 32], "dtype": "float32"}]
    assert seg["outputs"] == [{"name": "logits", "shape": ["batch", 5, 32, 32], "dtype": "float32"}]
    assert seg["fixed_size"] is True and "traced at this spatial size" in seg["note"]
    assert seg["labels"]["liver"] == 1 and seg["preprocessing"]["size"] == [32, 32] and seg["modality"] == "CT"
    assert seg["opset"] == 17 and seg["checked_with_onnxruntime"] is True
    reg = json.loads((folder / "torchscript" / "registration.json").read_text())
    assert [t["name"] for t in reg["inputs"]] == ["moving", "fixed"]
    assert reg["outputs"][1] == {"name": "flow", "shape": ["batch", 2, 32, 32], "dtype": "float32"}
    assert reg["source_model"] == str((flowing_run / "export" / "registration").resolve())


def test_exported_models_carry_their_resolved_preprocessing(exported, flowing_run):
    # The run's model folders record what "auto" resolved to and every rule around it (training/
    # finish.py); the standalone exports recompute the same from the model folder.
    folder, _ = exported
    for kind in ("segmentor", "registration"):
        config = json.loads((flowing_run / "export" / kind / "config.json").read_text())
        assert config["preprocessing"]["normalization"] == "auto"
        pipeline = config["extra"]["pipeline"]
        assert pipeline["normalization"]["method"] == "ct" and pipeline["normalization"]["window"] == [-160.0, 240.0]
        assert pipeline["grid"]["size"] == [32, 32] and pipeline["orientation"]["target"] == "RAS"
        assert json.loads((folder / "onnx" / f"{kind}.json").read_text())["pipeline"] == pipeline
    seg = json.loads((flowing_run / "export" / "segmentor" / "config.json").read_text())["extra"]["pipeline"]
    assert seg["output"]["largest_component_classes"] == []  # no validation cases: nothing decided


def test_another_size_and_one_model_folder(trained_run, tmp_path):
    files = export_run(trained_run["run"] / "export" / "segmentor", "torchscript", out=tmp_path, size=(48, 40))
    assert [p.name for p in files] == ["segmentor.pt"]
    module = torch.jit.load(str(files[0]))
    with torch.no_grad():
        assert module(torch.rand(2, 1, 48, 40)).shape == (2, 5, 48, 40)
    assert json.loads((tmp_path / "segmentor.json").read_text())["inputs"][0]["shape"] == ["batch", 1, 48, 40]


def test_default_folder_and_bad_requests(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run["run"] / "export", run / "export")
    files = export_run(run, "torchscript")
    assert {p.parent for p in files} == {run / "export" / "torchscript"}
    with pytest.raises(InputError, match=r"registration.pt: already exists \(pass --overwrite"):
        export_run(run, "torchscript")
    export_run(run, "torchscript", overwrite=True)
    with pytest.raises(ConfigError, match="unknown export format 'tflite'"):
        export_run(run, "tflite")
    with pytest.raises(ConfigError, match="export size must be two integers >= 8"):
        export_run(run, "onnx", size=(4, 4))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"neither a model folder nor a run folder with exports \(export/registration, export/segmentor\)"):
        model_folders(tmp_path / "empty")


def test_which_folders_are_exported_and_where_by_default(trained_run, tmp_path):
    import shutil

    single = tmp_path / "models" / "liver_seg"
    shutil.copytree(trained_run["run"] / "export" / "segmentor", single)
    assert model_folders(single) == [single]
    files = export_run(single, "torchscript")  # a lone model folder: its siblings
    assert files == [tmp_path / "models" / "torchscript" / "segmentor.pt"]
    assert (tmp_path / "models" / "torchscript" / "segmentor.json").is_file()

    run = tmp_path / "run"
    shutil.copytree(trained_run["run"] / "export" / "registration", run / "export" / "registration")
    (run / "export" / "segmentor").mkdir()  # a folder without config.json is not a model
    assert model_folders(run) == [run / "export" / "registration"]
    with pytest.raises(InputError, match="not found"):
        model_folders(tmp_path / "missing")
