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


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported")
    files = export_run(trained_run["run"], "onnx", out=out / "onnx") + export_run(trained_run["run"], "torchscript", out=out / "torchscript")
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


@pytest.mark.slow
def test_exports_run_without_jointreg_and_match_pytorch(trained_run, exported, tmp_path):
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
    expected = _pytorch_outputs(trained_run["run"], inputs)
    for fmt in ("onnx", "torchscript"):
        for key, want in expected.items():
            got = produced[f"{fmt}/{key}"]
            assert got.shape == want.shape, (fmt, key)
            assert np.abs(got - want).max() <= 1e-4, (fmt, key, np.abs(got - want).max())


def test_metadata_describes_the_tensors(exported, trained_run):
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
    assert reg["source_model"] == str((trained_run["run"] / "export" / "registration").resolve())


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
    with pytest.raises(InputError, match="neither a model folder nor a run folder with exports"):
        model_folders(tmp_path / "empty")
