"""The bad-input corpus: one spoilt input per case, across every subcommand.

Each case takes the valid inputs of ``conftest.py``, spoils one thing (a missing, truncated or
garbage file, a text file named ``.nii.gz``, a folder where a file belongs, a ``dataset.json``
value, a recipe key, a model folder of the wrong kind or with broken files, an option) and runs
the command in-process. It must exit with code 2 and print exactly one line on stderr,
``jointreg CMD: error: ...``, naming the offending file or option and the problem (``validate``
is a report: ``PATH: problem``, one line per problem), with no traceback. It must leave nothing
behind (no output, no temporary), and where the case gives a corrected command, that command,
with the same output path, must then succeed.
"""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from jointreg.cli.main import main


@dataclass
class Case:
    """One bad input.

    Attributes:
        argv: the command line (``str()`` is applied to every item).
        needles: texts the error line must hold: the offending file or option first, then words
            of the problem.
        fix: repairs the input; the corrected command (``then``, by default ``argv``) must then
            exit 0 with the same output path.
        then: the corrected command, when it is not ``argv``.
        leaves: a folder the failure may leave by design, because the corrected command replaces
            it (a run folder that never reached a checkpoint); such a case needs a ``fix``.
    """

    argv: list
    needles: tuple
    fix: Callable[[], object] | None = None
    then: list | None = None
    leaves: Path | None = None


def run_cli(argv: list) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:  # argparse refuses an option by exiting
        return exc.code


def _without(mapping, key):
    return {k: v for k, v in mapping.items() if k != key}


def _labels(spec, **changes):
    return spec | {"labels": {**spec["labels"], **changes}}


def _filled(ws, path, shape, dtype=np.float32, value=0):
    return ws.like_image(path, np.full(shape, value, dtype))


def _shifted(ws, path):
    affine = nib.load(ws.image).affine.copy()
    affine[:3, 3] += 5.0
    return ws.like_image(path, np.asarray(nib.load(ws.label).dataobj), affine)


def _fewer_slices_in_header(ws, path):
    """The header says 6 slices where the file holds 8: nibabel reads the first 6 silently."""
    img = nib.load(path)
    header = img.header.copy()
    header["dim"][3] = 6
    header["vox_offset"] = 352  # nibabel's copy says 0: a loaded image's offset is decided on saving
    data = header.binaryblock + b"\0" * 4 + np.asanyarray(img.dataobj).tobytes(order="F")
    path.write_bytes(gzip.compress(data, mtime=0))


def _restore(source: Path, target: Path) -> Callable[[], object]:
    def fix():
        if target.is_dir():
            shutil.rmtree(target)
        shutil.copyfile(source, target)
    return fix


# --------------------------------------------------------------------------------------------
# validate: dataset.json and the volumes of a dataset
# --------------------------------------------------------------------------------------------
SPEC_ERRORS = {  # dataset.json content -> the problem
    "syntax": (lambda s: json.dumps(s)[:-7], "invalid JSON"),
    "empty": (lambda s: "", "invalid JSON (Expecting value: line 1 column 1"),
    "list": (lambda s: [s], "must hold a JSON object"),
    "null": (lambda s: None, "must hold a JSON object"),
    "no-labels": (lambda s: _without(s, "labels"), "missing key 'labels'"),
    "no-channel-names": (lambda s: _without(s, "channel_names"), "missing key 'channel_names'"),
    "channel-names-list": (lambda s: s | {"channel_names": ["CT"]}, "'channel_names' must be"),
    "channel-name-null": (lambda s: s | {"channel_names": {"0": None}}, "channel_names['0'] must be a name"),
    "two-channels": (lambda s: s | {"channel_names": {"0": "CT", "1": "MR"}}, "single-channel"),
    "labels-list": (lambda s: s | {"labels": ["background", "liver"]}, "'labels' must be"),
    "label-id-string": (lambda s: _labels(s, liver="1"), "label 'liver' has a non-integer id '1'"),
    "label-id-float": (lambda s: _labels(s, liver=1.5), "label 'liver' has a non-integer id 1.5"),
    "label-id-bool": (lambda s: _labels(s, liver=True), "label 'liver' has a non-integer id True"),
    "label-region": (lambda s: _labels(s, liver=[1, 2]), "region-based"),
    "no-background": (lambda s: {**s, "labels": _without(s["labels"], "background")}, "background with id 0"),
    "duplicate-ids": (lambda s: _labels(s, spleen=1), "share the same id"),
    "ignore-not-highest": (lambda s: _labels(s, ignore=4, spleen=5), "'ignore' label must have the highest id"),
    "labels-not-consecutive": (lambda s: _labels(s, gallbladder=9), "not consecutive: 'gallbladder' has id 9, expected 5"),
    "num-training-string": (lambda s: s | {"numTraining": "2"}, "numTraining must be a non-negative integer"),
    "num-training-wrong": (lambda s: s | {"numTraining": 5}, "numTraining is 5 but imagesTr holds 2"),
    "huge-number": (lambda s: json.dumps(s).replace('"numTraining": 2', '"numTraining": ' + "9" * 5000),
                    "a number of more than 4300 digits"),
    "lone-surrogate": (lambda s: s | {"name": "liver \ud800"}, "\\ud800 is a lone surrogate"),
    "file-ending": (lambda s: s | {"file_ending": ".mha"}, "file_ending '.mha' is not supported"),
}
VOLUME_ERRORS = {  # the folder of the spoilt file (its first case), how, and the problem
    "text-as-nifti": ("imagesTr", lambda ws, p: p.write_text("a text file\n"), "named .gz but not gzip-compressed"),
    "truncated-gzip": ("imagesTr", lambda ws, p: ws.truncate(p), "truncated or corrupt compressed NIfTI"),
    "garbage-gzip": ("imagesTr", lambda ws, p: ws.garbage(p), "not a readable NIfTI file"),
    "folder-as-image": ("imagesTr", lambda ws, p: (p.unlink(), p.mkdir()), "is a folder, expected a NIfTI file"),
    "4d-image": ("imagesTr", lambda ws, p: _filled(ws, p, (32, 32, 8, 2)), "expected a 3D volume, found 4D"),
    "nan-image": ("imagesTr", lambda ws, p: _filled(ws, p, (32, 32, 8), value=np.nan), "8192 voxel(s) are NaN"),
    "singular-affine": ("imagesTr", lambda ws, p: ws.like_image(p, np.zeros((32, 32, 8), np.float32), np.array(
        [[1.0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]])), "degenerate affine"),
    "header-shorter-than-data": ("imagesTr", _fewer_slices_in_header, "8,192 byte(s) follow the voxel data"),
    "label-shape": ("labelsTr", lambda ws, p: _filled(ws, p, (32, 32, 6), np.uint8), "shape (32, 32, 6) differs"),
    "label-shifted": ("labelsTr", _shifted, "affine differs by up to 5 mm"),
    "label-undeclared": ("labelsTr", lambda ws, p: _filled(ws, p, (32, 32, 8), np.uint8, 9), "label value(s) 9 not declared"),
    "label-fractional": ("labelsTr", lambda ws, p: _filled(ws, p, (32, 32, 8), value=0.5), "non-integer values"),
    "label-negative": ("labelsTr", lambda ws, p: _filled(ws, p, (32, 32, 8), np.int16, -1), "negative values"),
}


def _no_spec(ws):
    root = ws.dataset()
    (root / "dataset.json").unlink()
    return Case(["validate", root], (str(root / "dataset.json"), "file not found"),
                ws.put_back(ws.full / "dataset.json", root / "dataset.json"))


def _spec_case(change, problem):
    def build(ws):
        root = ws.spec(change)
        return Case(["validate", root], (str(root / "dataset.json"), problem),
                    ws.put_back(ws.full / "dataset.json", root / "dataset.json"))
    return build


def _volume_case(folder, spoil, problem):
    def build(ws):
        root = ws.dataset()
        path = ws.first(root, folder)
        spoil(ws, path)
        return Case(["validate", root], (str(path), problem), _restore(ws.first(ws.full, folder), path))
    return build


CASES: dict[str, Callable] = {  # name -> builder (ws) -> Case
    "validate-missing-folder": lambda ws: Case(["validate", ws.tmp / "no"], (str(ws.tmp / "no"), "dataset folder not found")),
    "validate-file-as-dataset": lambda ws: Case(["validate", ws.text("d.txt")], (str(ws.tmp / "d.txt"), "not a folder")),
    "validate-no-dataset-json": lambda ws: _no_spec(ws),
    **{f"validate-json-{name}": _spec_case(*spec) for name, spec in SPEC_ERRORS.items()},
    **{f"validate-{name}": _volume_case(*volume) for name, volume in VOLUME_ERRORS.items()},
}


# --------------------------------------------------------------------------------------------
# train and study: recipes, --set, and the data they name
# --------------------------------------------------------------------------------------------
RECIPE_ERRORS = {  # recipe text -> the problem
    "yaml-syntax": ("name: x\ndata: [1, 2\n", "invalid YAML at line 3"),
    "yaml-list": ("- name\n- data\n", "a recipe must be a YAML mapping"),
    "unknown-section": ("name: x\nscheduel: {rounds: 1}\n", "scheduel: unknown key"),
    "unknown-key": ("name: x\nschedule: {rouns: 1}\n", "schedule.rouns: unknown key"),
    "wrong-type": ("name: x\nschedule: {rounds: ten}\n", "schedule.rounds: expected an integer, got 'ten'"),
    "wrong-bool": ("name: x\nlogging: {progress: maybe}\n", "logging.progress: expected true or false"),
    "bad-enum": ("name: x\ndata: {normalization: zscore}\n", "data.normalization: 'zscore' is not one of"),
    "unknown-registration": ("name: x\nregistration: {architecture: fmirnot}\n", "unknown registration network 'fmirnot'"),
    "unknown-segmentor": ("name: x\nsegmentation: {architecture: unett}\n", "unknown segmentor 'unett'"),
    "negative-size": ("name: x\ndata: {size: [-32, 32]}\n", "data.size: [-32, 32] is too small"),
    "size-not-a-list": ("name: x\ndata: {size: 32}\n", "data.size: expected a list"),
    "zero-batch": ("name: x\nregistration: {batch_size: 0}\n", "registration.batch_size: must be > 0"),
    "negative-lr": ("name: x\nsegmentation: {lr: -0.001}\n", "segmentation.lr: must be > 0"),
    "zero-threads": ("name: x\nthreads: 0\n", "threads: must be >= 1, got 0"),
    "bad-device": ("name: x\ndevice: cuda:x\n", "device: 'cuda:x' is not valid"),
    "lone-surrogate": ('name: "run\\ud800"\n', "invalid YAML at line 1 (\\ud800 is a lone surrogate"),
    "huge-number": ("name: x\nseed: " + "9" * 5000 + "\n", "invalid YAML value (Exceeds the limit (4300 digits)"),
}
SET_ERRORS = {  # --set item -> the problem
    "without-equals": ("schedule.rounds", "--set 'schedule.rounds': expected key=value"),
    "unknown-key": ("schedule.roundz=2", "schedule.roundz: unknown key"),
    "bad-yaml": ("data.size=[32,", "--set 'data.size=[32,': cannot parse value"),
    "into-a-value": ("name.first=x", "--set 'name.first=x': name is not a section"),
}
STUDY_ERRORS = {  # study text (base.yaml is a valid recipe) -> the problem
    "unknown-key": ("methods: {UNet: {}}\nseedz: [0]\n", "seedz: unknown key"),
    "no-methods": ("", "methods: the study needs at least one method"),
    "base-missing": ("methods: {UNet: {}}\nbase: missing.yaml\n", "base recipe 'missing.yaml' not found"),
    "methods-list": ("methods: [UNet, RUNet]\n", "methods: expected a mapping"),
    "baseline-unknown": ("methods: {UNet: {}}\nbaseline: RUNet\n", "baseline: 'RUNet' is not one of the methods"),
    "method-bad-key": ("methods: {UNet: {schedule.rouns: 1}}\n", "method 'UNet': schedule.rouns: unknown key"),
}


def _train(recipe, *extra):
    return ["train", recipe, "--no-progress", *extra]


def _recipe_case(text, problem):
    return lambda ws: Case(_train(ws.recipe(text=text)), (str(ws.tmp / "recipe.yaml"), problem))


def _set_case(item, problem):
    return lambda ws: Case(_train(ws.recipe(), "--set", item), (str(ws.tmp / "recipe.yaml"), problem))


def _study(ws, text: str) -> Path:
    ws.recipe("base.yaml")
    return ws.text("study.yaml", f"name: s\nbase: base.yaml\noutput: {ws.tmp / 'study_out'}\n{text}")


def _study_case(text, problem):
    return lambda ws: Case(["study", _study(ws, text), "--no-progress"], (str(ws.tmp / "study.yaml"), problem))


def _train_on(ws, spoil, needles, which="sparse"):
    """The recipe is fine, its data is not: the run folder made for it stays (it has no checkpoint,
    so the corrected command replaces it without --overwrite), and the corrected command trains."""
    root = ws.dataset(which)
    named, fix = spoil(root)
    return Case(_train(ws.recipe(dataset=root)), (str(named), *needles), fix, leaves=ws.tmp / "runs")


def _evaluated_train_on(ws, spoil, needles):
    """:func:`_train_on` with the run's evaluation on the test split switched on."""
    root = ws.dataset("sparse")
    named, fix = spoil(root)
    recipe = ws.recipe(dataset=root, evaluation={"enabled": True})
    return Case(_train(recipe), (str(named), *needles), fix, leaves=ws.tmp / "runs")


def _truncated_image(ws, root):
    image = ws.first(root)
    ws.truncate(image)
    return image, ws.put_back(ws.first(ws.sparse), image)


def _undeclared_test_label(ws, root):
    """A test split whose label map holds an id dataset.json does not declare: refused before
    training (the evaluation at the end could not score it)."""
    (root / "imagesTs").mkdir()
    (root / "labelsTs").mkdir()
    image = ws.first(root)
    (root / "imagesTs" / image.name).write_bytes(image.read_bytes())
    label = root / "labelsTs" / image.name.replace("_0000", "")
    _filled(ws, label, (32, 32, 8), np.uint8, 9)
    return label, ws.put_back(ws.label, label)


def _no_labels_key(ws, root):
    ws.edit_json(root / "dataset.json", lambda s: _without(s, "labels"))
    return root / "dataset.json", ws.put_back(ws.sparse / "dataset.json", root / "dataset.json")


CASES.update({
    **{f"train-{name}": _recipe_case(*recipe) for name, recipe in RECIPE_ERRORS.items()},
    **{f"train-set-{name}": _set_case(*item) for name, item in SET_ERRORS.items()},
    **{f"study-{name}": _study_case(*study) for name, study in STUDY_ERRORS.items()},
    "train-missing-recipe": lambda ws: Case(_train(ws.tmp / "no.yaml"), (str(ws.tmp / "no.yaml"), "recipe file not found")),
    "train-recipe-is-folder": lambda ws: Case(_train(ws.tmp), (str(ws.tmp), "is a folder, expected a recipe file")),
    "train-no-recipe": lambda ws: Case(["train"], ("give a recipe file, or --resume RUN",)),
    "train-stop-after-negative": lambda ws: Case(_train(ws.recipe(), "--stop-after", "-1"), ("--stop-after", "got -1")),
    "train-resume-missing": lambda ws: Case(["train", "--resume", ws.tmp / "no"], (str(ws.tmp / "no"), "run folder not found")),
    "train-resume-not-a-run": lambda ws: Case(["train", "--resume", ws.tmp], (str(ws.tmp), "recipe.yaml is missing")),
    "train-dataset-missing": lambda ws: Case(_train(ws.recipe(dataset=ws.tmp / "no")), (str(ws.tmp / "no"), "not found"),
                                             lambda: ws.recipe(), leaves=ws.tmp / "runs"),
    "train-dataset-json-without-labels": lambda ws: _train_on(ws, lambda r: _no_labels_key(ws, r), ("missing key 'labels'",)),
    "train-truncated-image": lambda ws: _train_on(ws, lambda r: _truncated_image(ws, r), ("truncated",)),
    "train-test-label-undeclared": lambda ws: _evaluated_train_on(ws, lambda r: _undeclared_test_label(ws, r),
                                                                  ("label value(s) 9 not declared",)),
    "train-unknown-class": lambda ws: Case(
        _train(ws.recipe(data={"dataset": str(ws.sparse), "size": [32, 32], "classes": ["pancreas"]})),
        ("data.classes", "'pancreas' is not a foreground class"), lambda: ws.recipe(), leaves=ws.tmp / "runs"),
    "study-missing": lambda ws: Case(["study", ws.tmp / "no.yaml"], (str(ws.tmp / "no.yaml"), "study file not found")),
    "study-only-unknown-method": lambda ws: Case(["study", _study(ws, "methods: {UNet: {}}\n"), "--only", "RUNet"],
                                                 ("--only", "unknown method 'RUNet'")),
})


# --------------------------------------------------------------------------------------------
# sparsify and prepare
# --------------------------------------------------------------------------------------------
def _sparsify(ws, root, *amount):
    return ["sparsify", root, "--out", ws.out(), *(amount or ("--slices-per-volume", "1"))]


def _sparsify_label(ws, spoil, problem):
    root = ws.dataset()
    path = ws.first(root, "labelsTr")
    spoil(path)
    return Case(_sparsify(ws, root), (str(path), problem), ws.put_back(ws.label, path))


def _paired(ws, *extra, image_b=None):
    """``prepare paired-nifti`` over two pairs (a, b) in tmp/src; ``image_b`` replaces b's image."""
    for name, source in (("image_a", ws.image), ("label_a", ws.label), ("image_b", ws.image), ("label_b", ws.label)):
        ws.copy(source, f"src/{name}.nii.gz")
    if image_b is not None:
        (ws.tmp / "src" / "image_b.nii.gz").write_bytes(image_b)
    return ["prepare", "paired-nifti", "--images", ws.tmp / "src/image_*.nii.gz", "--labels", ws.tmp / "src/label_*.nii.gz",
            "--modality", "CT", "--out", ws.out(), *extra]


def _phantom(ws, *options):
    return ["prepare", "phantom", "--cases", "1", "--test-cases", "0", "--shape", "16", "16", "4", *options, "--out", ws.out()]


CASES.update({
    "sparsify-missing-dataset": lambda ws: Case(_sparsify(ws, ws.tmp / "no"), (str(ws.tmp / "no"), "dataset folder not found")),
    "sparsify-bad-dataset-json": lambda ws: Case(_sparsify(ws, ws.spec(lambda s: _labels(s, liver="one"))),
                                                 (str(ws.tmp / "full" / "dataset.json"), "non-integer id 'one'"),
                                                 ws.put_back(ws.full / "dataset.json", ws.tmp / "full" / "dataset.json")),
    "sparsify-unknown-class": lambda ws: Case(_sparsify(ws, ws.full, "--slices-per-volume", "1", "--classes", "pancreas"),
                                              ("unknown class(es) pancreas", "valid: liver"),
                                              then=_sparsify(ws, ws.full, "--slices-per-volume", "1", "--classes", "liver")),
    "sparsify-negative-slices": lambda ws: Case(_sparsify(ws, ws.full, "--slices-per-volume", "-1"),
                                                ("slices_per_volume must be an integer >= 1", "got -1"),
                                                then=_sparsify(ws, ws.full)),
    "sparsify-zero-volumes": lambda ws: Case(_sparsify(ws, ws.full, "--volumes", "0"), ("volumes must be", "got 0"),
                                             then=_sparsify(ws, ws.full, "--volumes", "1")),
    "sparsify-too-many-volumes": lambda ws: Case(_sparsify(ws, ws.full, "--volumes", "3"), ("asked for 3 annotated volumes",)),
    "sparsify-truncated-label": lambda ws: _sparsify_label(ws, ws.truncate, "truncated or corrupt"),
    "sparsify-label-shape": lambda ws: _sparsify_label(ws, lambda p: _filled(ws, p, (32, 32, 6), np.uint8),
                                                       "label shape (32, 32, 6) differs from (32, 32, 8)"),
    "prepare-images-match-nothing": lambda ws: Case(
        ["prepare", "paired-nifti", "--images", ws.tmp / "no_*.nii.gz", "--modality", "CT", "--out", ws.out()],
        (str(ws.tmp / "no_*.nii.gz"), "matches no file")),
    "prepare-text-as-image": lambda ws: Case(_paired(ws, image_b=b"text\n"), (str(ws.tmp / "src" / "image_b.nii.gz"),
                                             "not gzip-compressed"), ws.put_back(ws.image, ws.tmp / "src" / "image_b.nii.gz")),
    "prepare-map-syntax": lambda ws: Case(_paired(ws, "--map", "liver"), ("--map item 'liver'", "SRC=NAME:ID")),
    "prepare-phantom-negative-shape": lambda ws: Case(_phantom(ws, "--shape", "-16", "16", "4"), ("shape", "(-16, 16, 4)"),
                                                      then=_phantom(ws)),
    "prepare-phantom-unknown-kind": lambda ws: Case(_phantom(ws, "--kind", "brain-mr"), ("'brain-mr'", "liver-ct")),
    "prepare-phantom-zero-cases": lambda ws: Case(_phantom(ws, "--cases", "0"), ("number of training cases", "got 0")),
    "prepare-dicom-missing-input": lambda ws: Case(["prepare", "dicom", "--input", ws.tmp / "no", "--modality", "CT", "--out",
                                                    ws.out()], (str(ws.tmp / "no"), "not found")),
    "prepare-acdc-missing-input": lambda ws: Case(["prepare", "acdc", "--input", ws.tmp / "no", "--out", ws.out()],
                                                  (str(ws.tmp / "no"), "not found")),
})


# --------------------------------------------------------------------------------------------
# model folders, and the commands that run them: register, segment, export, pseudolabel
# --------------------------------------------------------------------------------------------
def _register(ws, model, *extra, moving=None, fixed=None):
    return ["register", "--model", model, moving or ws.image, fixed or ws.image, "--out", ws.out(), "--device", "cpu", *extra]


def _segment(ws, model, *inputs, device="cpu"):
    return ["segment", "--model", model, *(inputs or (ws.image,)), "--out", ws.out(), "--no-progress", "--device", device]


def _export(ws, model, *extra):
    return ["export", model, "--format", "torchscript", "--out", ws.out(), *extra]


def _pseudolabel(ws, run, dataset, *extra):
    return ["pseudolabel", "--run", run, "--dataset", dataset, "--out", ws.out(), "--no-progress", "--device", "cpu", *extra]


def _config(change):
    return lambda ws, folder: ws.edit_json(folder / "config.json", change)


def _other_weights(ws, folder):
    other = ws.segmentor if folder.name == "registration" else ws.registration
    shutil.copyfile(other / "model.safetensors", folder / "model.safetensors")
    return folder


MODEL_ERRORS = {  # how the copied model folder is spoilt (returns the file named) -> the problem, the command
    "config-missing": (lambda ws, f: ((f / "config.json").unlink(), f)[1], "config.json is missing", "register"),
    "config-invalid-json": (lambda ws, f: ws.text(f"{f.name}/config.json", '{"format": '), "invalid JSON", "segment"),
    "config-huge-number": (_config(lambda c: json.dumps(c).replace('"format_version": 1', '"format_version": ' + "1" * 4400)),
                           "a number of more than 4300 digits", "export"),
    "config-not-an-object": (lambda ws, f: ws.text(f"{f.name}/config.json", "[1, 2]"), "not a jointreg model config", "export"),
    "config-other-version": (_config(lambda c: c | {"format_version": 99}), "model format version 99 is not supported",
                             "register"),
    "config-unknown-kind": (_config(lambda c: c | {"kind": "classifier"}), "unknown model kind 'classifier'", "segment"),
    "config-unknown-architecture": (_config(lambda c: c | {"architecture": "nonet"}), "unknown registration network 'nonet'",
                                    "register"),
    "config-unknown-argument": (_config(lambda c: c | {"arguments": {**c["arguments"], "featurez": 3}}),
                                "unknown argument(s) featurez", "segment"),
    "config-arguments-list": (_config(lambda c: c | {"arguments": [4, 8]}), "'arguments' must be an object", "export"),
    "weights-missing": (lambda ws, f: ((f / "model.safetensors").unlink(), f)[1], "model.safetensors is missing", "segment"),
    "weights-garbage": (lambda ws, f: ws.garbage(f / "model.safetensors", compressed=False), "unreadable weights", "register"),
    "weights-truncated": (lambda ws, f: ws.truncate(f / "model.safetensors"), "unreadable weights", "segment"),
    "weights-of-another-network": (_other_weights, "config.json does not match model.safetensors", "register"),
}


def _model_case(spoil, problem, command):
    def build(ws):
        source = ws.registration if command == "register" else ws.segmentor
        folder = ws.copy(source)
        named = spoil(ws, folder)
        argv = {"register": _register, "segment": _segment, "export": _export}[command](ws, folder)
        return Case(argv, (str(named), problem), lambda: (shutil.rmtree(folder), ws.copy(source)))
    return build


DEVICES = {  # --device value -> the command given it
    "cuda-x": ("cuda:x", "register"), "tpu": ("tpu", "segment"), "gpu": ("gpu", "pseudolabel"),
    "cuda-minus-1": ("cuda:-1", "segment"),
}


def _device_case(device, command):
    def build(ws):
        argv = {"register": lambda: _register(ws, ws.registration), "segment": lambda: _segment(ws, ws.segmentor),
                "pseudolabel": lambda: _pseudolabel(ws, ws.run, ws.sparse)}[command]()
        argv[argv.index("--device") + 1] = device
        return Case(argv, (f"device {device!r} is not valid",))
    return build


def _scan(ws, content: bytes | None = None, name="scan.nii.gz") -> Path:
    path = ws.copy(ws.image, name)
    if content is not None:
        path.write_bytes(content)
    return path


def _segment_scan(ws, path, problem):
    return Case(_segment(ws, ws.segmentor, path), (str(path), problem), ws.put_back(ws.image, path))


def _pseudolabel_on(ws, change, needles):
    root = ws.spec(change, "sparse")
    return Case(_pseudolabel(ws, ws.run, root), (str(root / "dataset.json"), *needles),
                ws.put_back(ws.sparse / "dataset.json", root / "dataset.json"))


def _pseudolabel_truncated(ws):
    root = ws.dataset("sparse")
    label = ws.first(root, "labelsTr")
    ws.truncate(label)
    return Case(_pseudolabel(ws, ws.run, root), (str(label), "truncated or corrupt"),
                ws.put_back(ws.first(ws.sparse, "labelsTr"), label))


def _without_segmentor(ws):
    run = ws.copy(ws.run)
    shutil.rmtree(run / "export" / "segmentor")
    return Case(_pseudolabel(ws, run, ws.sparse), (str(run), "needs a segmentor"),
                then=_pseudolabel(ws, run, ws.sparse, "--mode", "registration"))


CASES.update({
    **{f"{command}-{name}": _model_case(spoil, problem, command) for name, (spoil, problem, command) in MODEL_ERRORS.items()},
    **{f"{command}-device-{name}": _device_case(device, command) for name, (device, command) in DEVICES.items()},
    "register-given-a-segmentor": lambda ws: Case(
        _register(ws, ws.segmentor), (str(ws.segmentor), "is a segmentor model, expected a registration model"),
        then=_register(ws, ws.registration)),
    "register-model-missing": lambda ws: Case(_register(ws, ws.tmp / "no"), (str(ws.tmp / "no"), "model folder not found")),
    "register-moving-missing": lambda ws: Case(_register(ws, ws.registration, moving=ws.tmp / "m.nii.gz"),
                                               (str(ws.tmp / "m.nii.gz"), "file not found")),
    "register-moving-is-folder": lambda ws: Case(_register(ws, ws.registration, moving=ws.copy(ws.sparse, "m.nii.gz")),
                                                 (str(ws.tmp / "m.nii.gz"), "is a folder, expected a NIfTI file")),
    "register-fixed-is-text": lambda ws: Case(_register(ws, ws.registration, fixed=_scan(ws, b"text\n", "f.nii.gz")),
                                              (str(ws.tmp / "f.nii.gz"), "not gzip-compressed"),
                                              ws.put_back(ws.image, ws.tmp / "f.nii.gz")),
    "register-fixed-is-garbage-nii": lambda ws: Case(
        _register(ws, ws.registration, fixed=ws.garbage(ws.tmp / "f.nii", compressed=False)),
        (str(ws.tmp / "f.nii"), "not a readable NIfTI file")),
    "register-labels-shape": lambda ws: Case(
        _register(ws, ws.registration, "--labels", _filled(ws, ws.tmp / "l.nii.gz", (32, 32, 6), np.uint8)),
        (str(ws.tmp / "l.nii.gz"), "label shape (32, 32, 6) differs")),
    "register-slice-map-syntax": lambda ws: Case(
        _register(ws, ws.registration, "--slice-map", "3-x"), ("slice map entry '3-x'", "M:F"),
        then=_register(ws, ws.registration, "--slice-map", "3:4")),
    "register-slice-map-out-of-range": lambda ws: Case(_register(ws, ws.registration, "--slice-map", "99:0"),
                                                       ("slice map pair(s) [(99, 0)] out of range",)),
    "register-2d-image-without-axis": lambda ws: Case(
        _register(ws, ws.registration, moving=ws.nifti("flat.nii.gz", np.zeros((32, 32), np.float32)),
                  fixed=ws.tmp / "flat.nii.gz"),
        (str(ws.tmp / "flat.nii.gz"), "give --axis 2")),
    "segment-given-a-registration-model": lambda ws: Case(
        _segment(ws, ws.registration), (str(ws.registration), "is a registration model, expected a segmentor model"),
        then=_segment(ws, ws.segmentor)),
    "segment-run-without-export": lambda ws: Case(_segment(ws, ws.text("run/recipe.yaml").parent),
                                                  (str(ws.tmp / "run"), "no exported segmentor")),
    "segment-input-missing": lambda ws: Case(_segment(ws, ws.segmentor, ws.tmp / "s.nii.gz"),
                                             (str(ws.tmp / "s.nii.gz"), "not found")),
    "segment-input-text": lambda ws: _segment_scan(ws, _scan(ws, b"text\n"), "not gzip-compressed"),
    "segment-input-truncated": lambda ws: _segment_scan(ws, ws.truncate(_scan(ws)), "truncated or corrupt"),
    "segment-input-4d": lambda ws: _segment_scan(ws, _filled(ws, _scan(ws), (32, 32, 8, 3)), "expected a 3D volume"),
    "segment-input-nan": lambda ws: _segment_scan(ws, _filled(ws, _scan(ws), (32, 32, 8), value=np.nan), "are NaN or infinite"),
    "segment-input-garbage-nii": lambda ws: Case(_segment(ws, ws.segmentor, ws.garbage(ws.tmp / "s.nii", compressed=False)),
                                                 (str(ws.tmp / "s.nii"), "not a readable NIfTI file")),
    "segment-input-empty-folder": lambda ws: Case(_segment(ws, ws.segmentor, ws.text("e/notes.txt").parent),
                                                  (str(ws.tmp / "e"), "holds no .nii or .nii.gz file")),
    "segment-dataset-bad-json": lambda ws: Case(_segment(ws, ws.segmentor, ws.spec(lambda s: s | {"channel_names": {}})),
                                                (str(ws.tmp / "full" / "dataset.json"), "'channel_names' must be"),
                                                ws.put_back(ws.full / "dataset.json", ws.tmp / "full" / "dataset.json")),
    "export-run-missing": lambda ws: Case(_export(ws, ws.tmp / "no"), (str(ws.tmp / "no"), "not found")),
    "export-folder-without-models": lambda ws: Case(_export(ws, ws.text("r/notes.txt").parent),
                                                    (str(ws.tmp / "r"), "neither a model folder")),
    "export-size-negative": lambda ws: Case(_export(ws, ws.segmentor, "--size", "-32", "32"), ("export size", "got [-32, 32]"),
                                            then=_export(ws, ws.segmentor, "--size", "32", "32")),
    "export-size-zero": lambda ws: Case(_export(ws, ws.segmentor, "--size", "0", "32"), ("export size", "got [0, 32]")),
    "pseudolabel-run-missing": lambda ws: Case(_pseudolabel(ws, ws.tmp / "no", ws.sparse),
                                               (str(ws.tmp / "no"), "run folder not found")),
    "pseudolabel-run-without-segmentor": _without_segmentor,
    "pseudolabel-dataset-missing": lambda ws: Case(_pseudolabel(ws, ws.run, ws.tmp / "no"), (str(ws.tmp / "no"), "not found")),
    "pseudolabel-dataset-bad-json": lambda ws: _pseudolabel_on(ws, lambda s: _labels(s, ignore=2),
                                                               ("two labels share the same id",)),
    "pseudolabel-dataset-lacks-a-class": lambda ws: _pseudolabel_on(
        ws, lambda s: {**s, "labels": _without(s["labels"], "spleen")}, ("has no class 'spleen'",)),
    "pseudolabel-truncated-label": _pseudolabel_truncated,
    "pseudolabel-workers-negative": lambda ws: Case(_pseudolabel(ws, ws.run, ws.sparse, "--workers", "-2"),
                                                    ("workers must be an integer >= 1", "got -2")),
    "pseudolabel-source-slices-zero": lambda ws: Case(_pseudolabel(ws, ws.run, ws.sparse, "--source-slices", "0"),
                                                      ("source-slices", "got 0")),
    "pseudolabel-verify-above-one": lambda ws: Case(
        _pseudolabel(ws, ws.run, ws.sparse, "--mode", "registration", "--verify", "1.5"),
        ("verify must be a fraction in [0, 1]", "got 1.5")),
    "pseudolabel-shard-index-equals-count": lambda ws: Case(
        _pseudolabel(ws, ws.run, ws.sparse, "--mode", "segmentor", "--shard", "2/2"), ("--shard 2/2", "must be in 0..1"),
        then=_pseudolabel(ws, ws.run, ws.sparse, "--mode", "segmentor", "--shard", "1/2")),
    "pseudolabel-shard-not-a-fraction": lambda ws: Case(_pseudolabel(ws, ws.run, ws.sparse, "--shard", "x"),
                                                        ("--shard must be I/N", "got 'x'")),
    "pseudolabel-shard-count-zero": lambda ws: Case(_pseudolabel(ws, ws.run, ws.sparse, "--shard", "1/0"),
                                                    ("--shard 1/0", "count must be >= 1")),
    "pseudolabel-merge-with-a-shard": lambda ws: Case(_pseudolabel(ws, ws.run, ws.sparse, "--shard", "0/2", "--merge"),
                                                      ("--merge takes no --shard",)),
    "segment-shard-index-equals-count": lambda ws: Case(_segment(ws, ws.segmentor) + ["--shard", "2/2"],
                                                        ("--shard 2/2", "must be in 0..1"),
                                                        then=_segment(ws, ws.segmentor) + ["--shard", "0/1"]),
    "segment-shard-not-a-fraction": lambda ws: Case(_segment(ws, ws.segmentor) + ["--shard", "x"],
                                                    ("--shard must be I/N", "got 'x'")),
    "segment-shard-count-zero": lambda ws: Case(_segment(ws, ws.segmentor) + ["--shard", "1/0"],
                                                ("--shard 1/0", "count must be >= 1")),
    "segment-merge-with-a-shard": lambda ws: Case(_segment(ws, ws.segmentor) + ["--shard", "0/2", "--merge"],
                                                  ("--merge takes no --shard",)),
})


# --------------------------------------------------------------------------------------------
# evaluate and demo
# --------------------------------------------------------------------------------------------
def _evaluate(ws, pred, gt=None, *extra):
    return ["evaluate", "--pred", pred, "--gt", gt or ws.full, "--out", ws.out(), "--montage-slices", "0", *extra]


def _predictions(ws, spoil, problem):
    pred = ws.copy(ws.full / "labelsTr", "pred")
    path = ws.first(pred, ".")
    spoil(path)
    return Case(_evaluate(ws, pred), (str(path), problem), _restore(ws.label, path))


def _huge_prediction_id(ws):
    pred = ws.copy(ws.full / "labelsTr", "pred")
    ws.text("pred/segmentation.json", json.dumps({"labels": {"background": 0, "liver": 10**12}}))
    return Case(_evaluate(ws, pred), (str(pred / "segmentation.json"), "an id above 32767"))


CASES.update({
    "evaluate-pred-missing": lambda ws: Case(_evaluate(ws, ws.tmp / "no"), (str(ws.tmp / "no"), "folder not found")),
    "evaluate-gt-missing": lambda ws: Case(_evaluate(ws, ws.full / "labelsTr", ws.tmp / "no"),
                                           (str(ws.tmp / "no"), "folder not found")),
    "evaluate-pred-is-a-file": lambda ws: Case(_evaluate(ws, ws.label), (str(ws.label), "not a folder")),
    "evaluate-pred-empty-folder": lambda ws: Case(_evaluate(ws, ws.text("pred/notes.txt").parent),
                                                  (str(ws.tmp / "pred"), "holds no predicted label maps")),
    "evaluate-pred-shape": lambda ws: _predictions(ws, lambda p: _filled(ws, p, (32, 32, 6), np.uint8),
                                                   "shape (32, 32, 6) differs"),
    "evaluate-pred-truncated": lambda ws: _predictions(ws, ws.truncate, "truncated or corrupt"),
    "evaluate-pred-label-map-huge-id": _huge_prediction_id,
    "evaluate-unknown-class": lambda ws: Case(_evaluate(ws, ws.full / "labelsTr", None, "--classes", "pancreas"),
                                              ("unknown class 'pancreas'", "valid classes: liver"),
                                              then=_evaluate(ws, ws.full / "labelsTr", None, "--classes", "liver")),
    "evaluate-workers-negative": lambda ws: Case(_evaluate(ws, ws.full / "labelsTr", None, "--workers", "-1"),
                                                 ("--workers must be at least 1", "got -1")),
    "evaluate-montage-negative": lambda ws: Case(_evaluate(ws, ws.full / "labelsTr", None, "--montage-slices", "-3"),
                                                 ("--montage-slices must be at least 0", "got -3")),
    "evaluate-labels-json-broken": lambda ws: Case(
        _evaluate(ws, ws.full / "labelsTr", None, "--labels", ws.text("l.json", json.dumps(
            {"labels": {"background": 0, "liver": "x"}, "channel_names": {"0": "CT"}}))),
        (str(ws.tmp / "l.json"), "non-integer id 'x'")),
    "evaluate-compare-missing-report": lambda ws: Case(["evaluate", "--compare", ws.tmp / "a", ws.tmp / "b", "--out", ws.out()],
                                                       (str(ws.tmp / "a"), "not found")),
    "demo-negative-train-cases": lambda ws: Case(["demo", "--quick", "--train-cases", "-1", "--out", ws.out()],
                                                 ("--train-cases must be an integer >= 1", "got -1")),
    "demo-negative-test-cases": lambda ws: Case(["demo", "--quick", "--test-cases", "-2", "--out", ws.out()],
                                                ("--test-cases must be an integer >= 0", "got -2")),
    "register-batch-size-zero": lambda ws: Case(_register(ws, ws.registration, "--batch-size", "0"), ("--batch-size", "got 0")),
    "segment-missing-model-option": lambda ws: Case(["segment", ws.image, "--out", ws.out()], ("--model",)),
    "export-unknown-format": lambda ws: Case(["export", ws.segmentor, "--format", "tflite"], ("--format", "'tflite'")),
})


# --------------------------------------------------------------------------------------------
# the tests
# --------------------------------------------------------------------------------------------
def _made(root: Path, before: set[Path]) -> list[str]:
    """Whatever appeared under ``root`` (outputs, run folders, temporaries)."""
    return sorted(str(p) for p in set(root.rglob("*")) - before)


@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_input_is_one_line_and_blocks_nothing(name, ws, capsys, monkeypatch):
    monkeypatch.chdir(ws.tmp)
    bad = CASES[name](ws)
    command = bad.argv[0]
    before = set(ws.tmp.rglob("*"))
    code = run_cli(bad.argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (code, lines)
    prefix = f"{bad.needles[0]}: " if command == "validate" else f"jointreg {command}: error: "
    assert lines[0].startswith(prefix), lines[0]
    assert [n for n in bad.needles if n not in lines[0]] == [], lines[0]
    made = _made(ws.tmp, before)
    if bad.leaves is not None:
        assert bad.fix is not None, "a case that leaves a folder must show that the corrected command runs"
        made = [p for p in made if not Path(p).is_relative_to(bad.leaves)]
    assert made == []
    if bad.fix is not None or bad.then is not None:
        if bad.fix is not None:
            bad.fix()
        assert run_cli(bad.then or bad.argv) == 0, capsys.readouterr().err


def test_a_header_nibabel_changes_on_reading_is_a_warning_naming_the_file(ws, capsys):
    """nibabel takes |pixdim| of a qform with a negative pixdim[1], and logs it without the file."""
    root = ws.dataset()
    path = ws.first(root)
    img = nib.load(path)
    header = img.header.copy()
    header.set_sform(None, code=0)
    header["pixdim"][1] *= -1
    header["vox_offset"] = 352
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + np.asanyarray(img.dataobj).tobytes(order="F"), mtime=0))
    assert main(["validate", str(root)]) == 0
    assert capsys.readouterr().err.strip().splitlines() == [
        f"{path}: warning: invalid header field, changed by nibabel on reading (other readers may differ): "
        "pixdim[1,2,3] should be positive"
    ]


def test_the_corpus_covers_every_subcommand():
    from jointreg.cli.main import _command_modules

    tried = {name.split("-")[0] for name in CASES}
    assert tried == {module.NAME for module in _command_modules()}
    assert len(CASES) >= 60


def test_an_error_is_one_line_and_survives_a_worker_process():
    """Messages quoting a library (nibabel's "...\\n - could the file be damaged?") are made one
    line; an InputError raised in a worker (pseudolabel --workers) unpickles in the parent."""
    import pickle

    from jointreg.errors import ConfigError, InputError

    error = pickle.loads(pickle.dumps(InputError("/data/a b.nii.gz", "cannot read (Expected 8 bytes\n - damaged?)")))
    assert (str(error), error.path, error.problem) == (
        "/data/a b.nii.gz: cannot read (Expected 8 bytes - damaged?)", "/data/a b.nii.gz", "cannot read (Expected 8 bytes - damaged?)")
    assert str(pickle.loads(pickle.dumps(ConfigError("a\n  b")))) == "a b"
