"""An ONNX segmentor deployed with numpy + onnxruntime only gives `jointreg segment`'s labels.

``examples/deploy_onnx.py`` implements the pipeline recorded in the export's JSON; these tests
check each of its steps against jointreg's own code, then the whole of it, run in a Python that
cannot import jointreg (or torch's model code), against ``jointreg segment`` on synthetic volumes.
"""

import builtins
import importlib.util
import json
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "deploy_onnx.py"
_spec = importlib.util.spec_from_file_location("deploy_onnx", SCRIPT)
deploy_onnx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(deploy_onnx)
from jointreg.data.slices import PlaneGeometry, SliceSpec, normalize_intensities, through_plane_axis
from jointreg.data.slices.resample import resize_bilinear
from jointreg.errors import ConfigError, InputError
from jointreg.export.preprocessing import PIPELINE, describe_pipeline, pipeline_of
from jointreg.inference.postprocess import keep_largest_component

LABELS = {"background": 0, "organ": 1, "other": 2}


# --------------------------------------------------------------------------------------------
# each step against jointreg's own code (fast)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(40, 50), (17, 23), (100, 31), (7, 9), (32, 32), (250, 200)])
@pytest.mark.parametrize("size", [(32, 32), (20, 45), (64, 17), (100, 120)])
@pytest.mark.parametrize("antialias", [True, False])
def test_resize_is_jointregs_bilinear(shape, size, antialias):
    # Within a few float32 ulps of 1, not bit for bit: where torch's compiled kernels fuse
    # multiply-adds depends on their vectorisation. (Without emulating the fused source
    # coordinate the error grows to ~3e-6, 50 ulps.)
    x = np.random.default_rng(sum(shape) + sum(size)).random((2, 3, *shape), dtype=np.float32)
    ours, theirs = deploy_onnx.resize_bilinear(x, size, antialias=antialias), resize_bilinear(x, size, antialias=antialias)
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() <= 2.5e-7


@pytest.mark.parametrize("shape,spacing,size", [
    ((48, 40), (1.2, 1.5), (32, 32)), ((200, 100), (1.0, 2.0), (128, 128)), ((20, 26), (1.8, 1.8), (32, 32)),
    ((512, 384), (0.7, 0.7), (96, 160)), ((9, 300), (5.0, 0.3), (16, 64)),
])
def test_grid_geometry_is_plane_geometry(shape, spacing, size):
    plane = PlaneGeometry(shape, spacing, size)
    top, _, left, _ = plane.padding
    assert deploy_onnx.grid_geometry(shape, spacing, size) == (plane.resized_shape, (top, left))


@pytest.mark.parametrize("method", ["ct", "mr", "none"])
def test_normalization_is_jointregs_bit_for_bit(method):
    rng = np.random.default_rng(3)
    volume = (rng.normal(40, 300, (20, 18, 6))).astype(np.float32)
    spec = SliceSpec(ct_window=(-100.0, 200.0), mr_percentiles=(2.0, 97.0))
    recorded = describe_pipeline("segmentor", spec.to_dict(), {"ct": "CT", "mr": "T2", "none": "noNorm"}[method])
    assert recorded["normalization"]["method"] == method
    assert np.array_equal(deploy_onnx.normalize(volume, recorded["normalization"]), normalize_intensities(volume, method, spec))


@pytest.mark.parametrize("spacing", [(1.5, 1.5, 4.0), (3.0, 1.0, 1.0), (1.0, 1.0, 1.0), (2.0, 2.0005, 1.0)])
def test_slice_axis_is_through_plane_axis(spacing):
    assert deploy_onnx.slice_axis(spacing, None) == through_plane_axis(spacing)
    assert deploy_onnx.slice_axis(spacing, 1) == 1


@pytest.mark.parametrize("seed", range(6))
def test_largest_component_is_jointregs(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, (9, 8, 7)).astype(np.int16)  # many small components
    assert np.array_equal(deploy_onnx.keep_largest_component(labels, [1, 2]), keep_largest_component(labels, [1, 2]))
    moved = np.moveaxis(labels, 2, 0)  # a view that is not C-contiguous
    assert np.array_equal(deploy_onnx.keep_largest_component(moved, [1]), keep_largest_component(moved, [1]))
    ties = np.zeros((6, 6, 3), np.int16)
    ties[0, 0:2, 0] = 1
    ties[4, 2:4, 2] = 1  # two components of 2 voxels: the first in C order stays
    assert np.array_equal(deploy_onnx.keep_largest_component(ties, [1]), keep_largest_component(ties, [1]))
    assert deploy_onnx.keep_largest_component(ties, [1]).sum() == 2 and deploy_onnx.keep_largest_component(ties, [1])[0, 0, 0] == 1


def test_pipeline_resolves_auto_normalization_and_states_the_rules():
    extra = {"training_geometry": {"orientations": {"RAS": 3}}, "postprocessing": {"largest_component": [1]}}
    ct = describe_pipeline("segmentor", SliceSpec(size=(64, 48)).to_dict(), "CT", extra)
    assert ct["normalization"] == {
        "method": "ct", "setting": "auto", "modality": "CT", "window": [-160.0, 240.0],
        "formula": ct["normalization"]["formula"], "note": ct["normalization"]["note"],
    }
    assert "clip(x, low, high)" in ct["normalization"]["formula"]
    assert ct["grid"]["size"] == [64, 48] and "align_corners=False" in ct["grid"]["interpolation"]
    assert "centred" in ct["grid"]["padding"] and "0.0" in ct["grid"]["padding"]
    assert ct["orientation"]["target"] == "RAS" and ct["slice_axis"]["axis"] is None
    assert ct["output"]["largest_component_classes"] == [1] and "argmax" in ct["output"]["labels"]
    mr = describe_pipeline("registration", SliceSpec(axis=1, mr_percentiles=(1.0, 99.0)).to_dict(), "T2")
    assert mr["normalization"]["method"] == "mr" and mr["normalization"]["percentiles"] == [1.0, 99.0]
    assert mr["slice_axis"] == {"axis": 1, "rule": "always array axis 1", "slices": mr["slice_axis"]["slices"]}
    assert mr["orientation"]["target"] is None and "output" not in mr and "flow" in mr["network"]["output"]
    assert pipeline_of({"kind": "segmentor", "preprocessing": SliceSpec(size=(64, 48)).to_dict(), "modality": "CT",
                        "extra": extra}) == ct
    with pytest.raises(InputError, match=r"model/config.json: preprocessing: unknown normalization 'zscore'"):
        pipeline_of({"kind": "segmentor", "preprocessing": {"normalization": "zscore"}}, Path("model"))


# --------------------------------------------------------------------------------------------
# onnx / onnxruntime missing
# --------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_model_folder(tmp_path):
    from jointreg.export.model_folder import save_model_folder
    from jointreg.nets.segmentation import create_segmentor

    torch.manual_seed(0)
    net = create_segmentor("fcn", in_channels=1, classes=3, features=[4, 8, 8, 8, 8], head_channels=8, dropout=0.0)
    return save_model_folder(tmp_path / "segmentor", net, kind="segmentor", architecture="fcn",
                             preprocessing=SliceSpec(size=(32, 32)).to_dict(), labels=LABELS, modality="CT")


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime"])
@pytest.mark.parametrize("how", ["sys.modules", "__import__"])
def test_export_without_the_onnx_packages_is_one_clear_line(tiny_model_folder, tmp_path, monkeypatch, capsys, missing, how):
    from jointreg.cli.main import main
    from jointreg.export.standalone import export_run

    if how == "sys.modules":
        monkeypatch.setitem(sys.modules, missing, None)
    else:
        real_import = builtins.__import__

        def refuse(name, *args, **kwargs):
            if name == missing or name.startswith(missing + "."):
                raise ModuleNotFoundError(f"No module named {missing!r}")
            return real_import(name, *args, **kwargs)

        monkeypatch.delitem(sys.modules, missing, raising=False)
        monkeypatch.setattr(builtins, "__import__", refuse)
    expected = f"ONNX export needs the {missing} package: pip install 'jointreg[export]'"
    with pytest.raises(ConfigError) as caught:
        export_run(tiny_model_folder, "onnx", out=tmp_path / "onnx")
    assert str(caught.value) == expected
    assert main(["export", str(tiny_model_folder), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines
    assert not (tmp_path / "onnx").exists()  # nothing half-written


# --------------------------------------------------------------------------------------------
# the whole pipeline against `jointreg segment`
# --------------------------------------------------------------------------------------------
# Runs the script in `python -I -S`: no user site, no .pth files (so not the editable install of
# jointreg), sys.path = the standard library + site-packages (numpy, onnxruntime, nibabel).
RUNNER = textwrap.dedent(
    """
    import runpy, sys
    sys.path.append(sys.argv[1])
    try:
        import jointreg
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("jointreg is importable in the standalone check: " + jointreg.__file__)
    script = sys.argv[2]
    sys.argv = [script, *sys.argv[3:]]
    runpy.run_path(script, run_name="__main__")
    if "torch" in sys.modules:
        raise SystemExit("the deployment script imported torch")
    """
)


def _phantom(shape, spacing, affine_signs, modality, seed, distractor=False):
    """A body with two organs and noise (CT in HU, MR in arbitrary positive units), its labels
    and its affine; ``distractor`` adds a small organ-like blob away from the organ, which the
    largest-component rule is there to remove."""
    rng = np.random.default_rng(seed)
    size = np.array(shape, np.float32)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"), -1)
    centre = size / 2 + rng.uniform(-1, 1, 3)

    def ellipsoid(offset, fraction):
        return (((grid - centre - offset) / np.maximum(fraction * size, 2.0)) ** 2).sum(-1) <= 1

    body = ellipsoid(0, 0.45)
    organ = ellipsoid(size * [0.08, 0.05, 0.0], 0.28)
    other = ellipsoid(size * [0.0, -0.27, 0.0], 0.14) & ~organ
    if distractor:
        organ = organ | (ellipsoid(size * [-0.3, 0.25, 0.0], 0.12) & body)
    if modality == "CT":
        image = np.where(body, 30.0, -1000.0) + 90.0 * organ - 60.0 * other + rng.normal(0, 25, shape)
    else:
        image = np.where(body, 300.0, 5.0) + 500.0 * organ + 250.0 * other + np.abs(rng.normal(0, 40, shape))
    affine = np.diag([*(s * sign for s, sign in zip(spacing, affine_signs)), 1.0])
    affine[:3, 3] = (-20.0, 15.0, 4.0)
    labels = np.where(other, 2, np.where(organ, 1, 0)).astype(np.int16)
    return image.astype(np.float32), labels, affine


CASES = {
    # CT window; the slices shrink onto the grid (antialiased); odd padding; largest components.
    "ct-shrink": dict(modality="CT", spec=SliceSpec(size=(32, 32)), shape=(48, 40, 6), spacing=(1.2, 1.5, 4.0),
                      signs=(1, 1, 1), largest=[1, 2]),
    # MR percentiles; an LPS input for a model trained on RAS (reoriented and back); slices
    # enlarged; no post-processing.
    "mr-lps-enlarge": dict(modality="T2", spec=SliceSpec(size=(32, 32), mr_percentiles=(1.0, 99.0)),
                           shape=(20, 26, 5), spacing=(1.8, 1.8, 5.0), signs=(-1, -1, 1), largest=[]),
    # A fixed slicing axis (0), a non-square grid, the largest component of class 2.
    "mr-axis0": dict(modality="MR", spec=SliceSpec(axis=0, size=(24, 40)), shape=(5, 30, 44), spacing=(4.0, 1.0, 1.0),
                     signs=(1, 1, 1), largest=[2]),
}


def _fcn():
    from jointreg.nets.segmentation import create_segmentor

    torch.manual_seed(1)
    return create_segmentor("fcn", in_channels=1, classes=3, features=[4, 8, 8, 8, 8], head_channels=8, dropout=0.0)


@pytest.fixture(scope="module")
def trained_weights():
    """A tiny FCN trained here for a few seconds on every case's slices (other phantoms than the
    compared ones), so that its labels have the organs' structure: a random network labels
    everything background. The distractor is labelled as organ, so that the network marks it
    and the largest-component rule has something to remove."""
    from jointreg.data.nifti import Volume
    from jointreg.data.slices import slice_volume

    batches = []
    for case in CASES.values():
        for seed in (10, 11):
            image, labels, affine = _phantom(case["shape"], case["spacing"], case["signs"], case["modality"], seed,
                                             distractor=True)
            sliced = slice_volume(Volume(image, affine), Volume(labels, affine), case["spec"], modality=case["modality"],
                                  ignore_label=None, case="train")
            batches.append((torch.from_numpy(sliced.images).unsqueeze(1), torch.from_numpy(sliced.labels).long()))
    # A fixed seed and one thread: the weights (and so whether the distractor is marked) must not
    # depend on the tests that ran before or on the machine's thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            net = _fcn().train()
            optimiser = torch.optim.Adam(net.parameters(), lr=0.02)
            weights = torch.tensor([1.0, 2.0, 6.0])  # the small organs count more
            for step in range(150):
                images, labels = batches[step % len(batches)]
                optimiser.zero_grad()
                torch.nn.functional.cross_entropy(net(images), labels, weight=weights).backward()
                optimiser.step()
    finally:
        torch.set_num_threads(threads)
    return net.eval().state_dict()


def _model(folder, case, weights):
    """The trained tiny FCN as a model folder with every recorded setting of ``case``."""
    from jointreg.export.model_folder import save_model_folder
    from jointreg.export.preprocessing import with_pipeline

    net = _fcn()
    net.load_state_dict(weights)
    preprocessing = case["spec"].to_dict()
    extra = {"training_geometry": {"orientations": {"RAS": 3}}, "postprocessing": {"largest_component": case["largest"]}}
    return save_model_folder(folder, net, kind="segmentor", architecture="fcn", preprocessing=preprocessing,
                             labels=LABELS, modality=case["modality"],
                             extra=with_pipeline("segmentor", preprocessing, case["modality"], extra))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_numpy_onnxruntime_deployment_reproduces_jointreg_segment(name, trained_weights, tmp_path):
    from jointreg.cli.main import main
    from jointreg.export.standalone import export_run

    case = CASES[name]
    folder = _model(tmp_path / "model" / "segmentor", case, trained_weights)
    config = json.loads((folder / "config.json").read_text())
    assert config["extra"][PIPELINE] == pipeline_of(config)  # written at export, what segment does
    [onnx_file] = export_run(folder, "onnx", out=tmp_path / "onnx")
    assert json.loads(onnx_file.with_suffix(".json").read_text())[PIPELINE] == config["extra"][PIPELINE]

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i in range(2):
        image, _, affine = _phantom(case["shape"], case["spacing"], case["signs"], case["modality"], seed=i,
                                    distractor=True)
        nib.save(nib.Nifti1Image(image, affine), str(inputs / f"scan{i}.nii.gz"))
    assert main(["segment", "--model", str(folder), str(inputs), "--out", str(tmp_path / "jointreg"),
                 "--no-progress", "--device", "cpu"]) == 0
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    site = sysconfig.get_paths()["purelib"]
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(runner), site, str(SCRIPT), str(onnx_file),
         *sorted(str(p) for p in inputs.iterdir()), "--out", str(tmp_path / "deployed")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    removed = 0
    for i in range(2):
        expected = np.asanyarray(nib.load(str(tmp_path / "jointreg" / f"scan{i}.nii.gz")).dataobj)
        deployed = nib.load(str(tmp_path / "deployed" / f"scan{i}.nii.gz"))
        got = np.asanyarray(deployed.dataobj)
        assert np.array_equal(deployed.affine, nib.load(str(inputs / f"scan{i}.nii.gz")).affine)
        counts = np.bincount(expected.ravel(), minlength=3)
        assert (counts > 20).all(), counts  # every class present: the comparison is not vacuous
        assert got.shape == expected.shape and np.array_equal(got, expected), int((got != expected).sum())
        if case["largest"]:  # how much the largest-component rule changed: it must be exercised
            raw = dict(config["extra"][PIPELINE])
            raw["output"] = {**raw["output"], "largest_component_classes": []}
            array, affine, _ = deploy_onnx.read_volume(inputs / f"scan{i}.nii.gz")
            removed += int((deploy_onnx.segment_array(deploy_onnx.open_session(onnx_file), raw, array, affine) != got).sum())
    assert removed > 0 or not case["largest"]
