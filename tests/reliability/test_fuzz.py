"""Property-based fuzz of the files a user receives: NIfTI headers and ``dataset.json``.

NIfTI: a small valid image (8 × 8 × 4, float32, spacing 1.5 × 1.5 × 4 mm, qform = sform) has one
to three header fields set to arbitrary values (datatype, bitpix, dim, pixdim, vox_offset,
scl_slope/inter, q/sform codes and parameters, srow, magic, sizeof_hdr, units), header bytes
overwritten, or the file cut or extended, and is stored as ``.nii`` or ``.nii.gz`` as the image
of a one-case dataset (its label unchanged). Properties:

* ``read_image`` / ``read_label`` either load or raise an :class:`~jointreg.errors.InputError`
  whose message is one line starting with the file; never any other exception;
* ``jointreg validate`` exits 0 or 2 with ``PATH: ...`` lines only, and exit 2 naming the
  image when the reader refuses it; nothing else reaches stderr (no nibabel log line, no numpy
  warning: in a real run both are lines that name no file);
* a load that differs from the original (values, shape, or affine beyond validate's 1e-3 mm)
  is reported by ``validate`` (a problem or warning naming the image, or the label that no longer
  fits it), except a change of datatype to another of the same size, which no reader can tell
  from real data (float32 bits read as int32 are valid int32 values); those are counted.

dataset.json: keys set to JSON values of every type (deep nesting, huge numbers, unicode, NaN),
deleted or wrapped, label maps and channel names rewritten, the text cut, spoilt with invalid
UTF-8 or overlong number literals. ``read_spec`` loads (with the types it promises) or raises an
InputError naming the file; ``validate`` exits 0 or 2 without a traceback, with text that can be
written as UTF-8.

The outcomes are counted in ``OUTCOMES`` and printed at the end of the module (``-s``).
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import warnings
import struct
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jointreg.cli.main import main
from jointreg.data.dataset import MAX_LABEL_ID, DatasetSpec, read_spec
from jointreg.data.nifti import read_image, read_label, write_volume
from jointreg.errors import InputError, JointregError

SHAPE = (8, 8, 4)
EXAMPLES = 250
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
OUTCOMES: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_outcomes():
    yield
    print("\nfuzz outcomes:", json.dumps(dict(sorted(OUTCOMES.items())), indent=1))


class _Records(logging.Handler):
    """Records of nibabel's header-fix log, which names no file (jointreg silences it)."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(scope="module")
def nibabel_log():
    handler = _Records()
    nib.imageglobals.logger.addHandler(handler)
    yield handler.records
    nib.imageglobals.logger.removeHandler(handler)


def _one_case_dataset(root: Path, ending: str) -> dict[str, Path]:
    """A dataset of one case (image and label written by jointreg), and the image's bytes."""
    affine = np.diag([1.5, 1.5, 4.0, 1.0])
    affine[:3, 3] = (-6.0, 10.0, 2.0)
    image = np.random.default_rng(0).normal(100, 30, SHAPE).astype(np.float32)
    label = (image > 100).astype(np.uint8)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    spec = DatasetSpec({"0": "CT"}, {"background": 0, "organ": 1}, 1, file_ending=ending)
    (root / "dataset.json").write_text(json.dumps(spec.to_json()), encoding="utf-8")
    image_path = write_volume(root / "imagesTr" / f"case_0000{ending}", image, affine=affine)
    write_volume(root / "labelsTr" / f"case{ending}", label, affine=affine, is_label=True)
    return {"root": root, "image": image_path}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """``{".nii": ..., ".nii.gz": ...}`` one-case datasets and the original, uncompressed image bytes."""
    base = tmp_path_factory.mktemp("fuzz")
    made = {ending: _one_case_dataset(base / ending.strip("."), ending) for ending in (".nii", ".nii.gz")}
    original = made[".nii"]["image"].read_bytes()
    return _Datasets(made=made, bytes=original, volume=read_image(made[".nii"]["image"]))


class _Datasets(dict):
    def __repr__(self) -> str:  # hypothesis prints the fixtures of a failing example
        return "<the one-case datasets>"


# --------------------------------------------------------------------------------------------
# NIfTI-1 header mutations
# --------------------------------------------------------------------------------------------
_QUATERN = ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z")
FIELDS = {  # name -> (byte offset, struct format), little-endian NIfTI-1
    "sizeof_hdr": (0, "<i"), "dim_info": (39, "<B"), "intent_code": (68, "<h"), "datatype": (70, "<h"),
    "bitpix": (72, "<h"), "vox_offset": (108, "<f"), "scl_slope": (112, "<f"), "scl_inter": (116, "<f"),
    "xyzt_units": (123, "<B"), "qform_code": (252, "<h"), "sform_code": (254, "<h"), "magic": (344, "<4s"),
    **{f"dim[{i}]": (40 + 2 * i, "<h") for i in range(8)},
    **{f"pixdim[{i}]": (76 + 4 * i, "<f") for i in range(8)},
    **{name: (256 + 4 * i, "<f") for i, name in enumerate(_QUATERN)},
    **{f"srow_{axis}[{j}]": (280 + 16 * row + 4 * j, "<f") for row, axis in enumerate("xyz") for j in range(4)},
}
DATATYPES = [2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 0, 1, 3, 255, 4321]
_floats = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, 0.5, 1e-3, 1e-38, 1e-45, 1e38, math.inf, -math.inf, math.nan,
                     344.0, 348.0, 352.0, 356.0, 1e9]),
    st.floats(width=32),
)
_values = {
    "<h": st.one_of(st.sampled_from(DATATYPES + [-1, 5, 7, 8, 9, 16, 32, 100, 1000, 32767, -32768]),
                    st.integers(-32768, 32767)),
    "<i": st.one_of(st.sampled_from([348, 540, 0, -1, 349, 1 << 24]), st.integers(-2**31, 2**31 - 1)),
    "<B": st.integers(0, 255),
    "<f": _floats,
    "<4s": st.one_of(st.sampled_from([b"n+1\0", b"ni1\0", b"n+2\0", b"\0\0\0\0"]), st.binary(min_size=4, max_size=4)),
}
_field_values = {"datatype": st.sampled_from(DATATYPES)}  # mostly codes that exist
_set_field = st.sampled_from(sorted(FIELDS)).flatmap(
    lambda name: st.tuples(st.just("set"), st.just(name),
                           st.one_of(_field_values.get(name, _values[FIELDS[name][1]]), _values[FIELDS[name][1]])))
_mutation = st.one_of(
    _set_field, _set_field, _set_field, _set_field,
    st.tuples(st.just("byte"), st.integers(0, 351), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(0, 352 + 4 * math.prod(SHAPE) + 8)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=64)),
)


def _mutated(original: bytes, mutations) -> bytes:
    data = bytearray(original)
    for kind, *args in mutations:
        if kind == "set":
            offset, fmt = FIELDS[args[0]]
            if len(data) >= offset + struct.calcsize(fmt):
                struct.pack_into(fmt, data, offset, args[1])
        elif kind == "byte" and args[0] < len(data):
            data[args[0]] = args[1]
        elif kind == "cut":
            del data[args[0]:]
        elif kind == "append":
            data += args[0]
    return bytes(data)


def _store(path: Path, data: bytes) -> None:
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)


def _read(reader, path: Path):
    """The volume, or ``None`` after checking that the refusal is one line naming the file."""
    try:
        return reader(path)
    except JointregError as exc:
        message = str(exc)
        assert isinstance(exc, InputError) and "\n" not in message, message
        assert message.startswith(f"{path}: "), message
        return None


def _differs(volume, original) -> bool:
    if volume.shape != original.shape or not np.array_equal(volume.array, original.array, equal_nan=True):
        return True
    return float(np.abs(volume.affine - original.affine).max()) > 1e-3


def _validate(capsys, root: Path) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(["validate", str(root)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    captured.out.encode("utf-8")  # what a real stdout must be able to write
    lines = captured.err.strip().splitlines()
    assert code in (0, 2) and (code == 2) == any(": warning: " not in line for line in lines), (code, lines)
    assert all(line.startswith(f"{root}") for line in lines), lines
    return code, lines


@FUZZ
@given(mutations=st.lists(_mutation, min_size=1, max_size=3), ending=st.sampled_from([".nii", ".nii.gz"]))
def test_a_mutated_nifti_header_loads_or_is_refused_and_changes_are_caught(datasets, nibabel_log, capsys, tmp_path,
                                                                            mutations, ending):
    made = datasets["made"][ending]
    path, original = made["image"], datasets["volume"]
    _store(path, _mutated(datasets["bytes"], mutations))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            image = _read(read_image, path)
            label = _read(read_label, path)
            code, lines = _validate(capsys, made["root"])
    finally:
        _store(path, datasets["bytes"])  # the next example starts from the valid image
    # Either would be stray stderr lines naming no file in a real run.
    assert nibabel_log == [], [r.getMessage() for r in nibabel_log]
    assert [str(w.message) for w in caught] == []
    if image is None:
        assert code == 2 and any(line.startswith(f"{path}: ") for line in lines), lines
        OUTCOMES["nifti: refused in one line"] += 1
        return
    OUTCOMES["nifti: loaded as image" + (" and label" if label is not None else "")] += 1
    if not _differs(image, original):
        OUTCOMES["nifti: loaded unchanged"] += 1
        return
    reported = [line for line in lines if line.startswith(f"{path}: ") or path.name in line]
    if reported:
        OUTCOMES["nifti: changed, reported by validate"] += 1
        return
    # Only a same-size datatype change may go unnoticed: the datatype alone explains the load.
    header = nib.Nifti1Header(_mutated(datasets["bytes"], mutations)[:348], check=False)
    code_now = int(header["datatype"])
    alone = tmp_path / "datatype_alone.nii"
    alone.write_bytes(_mutated(datasets["bytes"], [("set", "datatype", code_now)]))
    reinterpreted = _read(read_image, alone)
    assert reinterpreted is not None and not _differs(image, reinterpreted), (mutations, lines)
    assert np.dtype(nib.nifti1.data_type_codes.dtype[code_now]).itemsize == original.array.dtype.itemsize
    OUTCOMES["nifti: changed, same-size datatype (undetectable)"] += 1


# --------------------------------------------------------------------------------------------
# dataset.json mutations
# --------------------------------------------------------------------------------------------
_text = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(["", "ignore", "background", "\ud800", "💥"])
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | _text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=12,
)
_keys = st.sampled_from(["channel_names", "labels", "numTraining", "file_ending", "name"]) | _text
_spec_mutation = st.one_of(
    st.tuples(st.just("set"), _keys, _json),
    st.tuples(st.just("delete"), _keys),
    st.tuples(st.just("wrap"), _keys),
    st.tuples(st.just("label"), st.sampled_from(["background", "organ", "ignore"]) | _text, _json | st.integers(-5, 40)),
    st.tuples(st.just("channel"), st.sampled_from(["0", "1"]) | _text, _json),
)
_text_mutation = st.one_of(
    st.none(),
    st.tuples(st.just("cut"), st.integers(0, 400)),
    st.tuples(st.just("byte"), st.integers(0, 400), st.integers(128, 255)),
    st.tuples(st.just("digits"), st.integers(4000, 6000)),
    st.tuples(st.just("nesting"), st.integers(100, 5000)),
    st.just(("bom",)),
)


def _spec_text(spec: dict, mutations, text_mutation) -> bytes:
    for kind, key, *value in mutations:
        if kind == "set":
            spec[key] = value[0]
        elif kind == "delete":
            spec.pop(key, None)
        elif kind == "wrap" and key in spec:
            spec[key] = [spec[key]]
        elif kind in ("label", "channel"):
            section = "labels" if kind == "label" else "channel_names"
            if not isinstance(spec.get(section), dict):
                spec[section] = {}
            spec[section][key] = value[0]
    data = json.dumps(spec).encode("utf-8")
    if text_mutation is None:
        return data
    kind, *args = text_mutation
    if kind == "cut":
        return data[: args[0]]
    if kind == "byte":
        return data[: args[0]] + bytes([args[1]]) + data[args[0] + 1 :]
    if kind == "digits":
        return data.replace(b'"numTraining": 1', b'"numTraining": ' + b"7" * args[0])
    if kind == "nesting":
        return data.replace(b'"name": ', b'"name": ' + b"[" * args[0] + b"1" + b"]" * args[0] + b', "x": ')
    return b"\xef\xbb\xbf" + data  # a byte-order mark


@FUZZ
@given(mutations=st.lists(_spec_mutation, min_size=1, max_size=4), text_mutation=_text_mutation)
def test_a_mutated_dataset_json_loads_or_is_refused(datasets, capsys, mutations, text_mutation):
    root = datasets["made"][".nii"]["root"]
    path = root / "dataset.json"
    valid = path.read_bytes()
    path.write_bytes(_spec_text(json.loads(valid), mutations, text_mutation))
    try:
        try:
            spec = read_spec(root)
        except InputError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(f"{path}: "), str(exc)
            spec = None
        code, lines = _validate(capsys, root)
    finally:
        path.write_bytes(valid)
    if spec is None:
        assert code == 2 and any(line.startswith(f"{path}: ") for line in lines), lines
        OUTCOMES["dataset.json: refused in one line"] += 1
        return
    assert all(isinstance(n, str) and type(v) is int and 0 <= v <= MAX_LABEL_ID for n, v in spec.labels.items())
    assert all(isinstance(v, str) and v.strip() for v in spec.channel_names.values())
    assert type(spec.num_training) is int and spec.num_training >= 0 and spec.file_ending in (".nii", ".nii.gz")
    OUTCOMES["dataset.json: loaded" + (", validate OK" if code == 0 else ", validate reports problems")] += 1


def test_a_same_size_datatype_change_is_beyond_any_check(datasets, capsys):
    """float32 bits read as int32 are valid int32 values of the same byte count: nothing in the
    file tells them apart, which is why the property above exempts exactly this change."""
    made = datasets["made"][".nii"]
    path = made["image"]
    _store(path, _mutated(datasets["bytes"], [("set", "datatype", 8)]))
    try:
        image = read_image(path)
        code, lines = _validate(capsys, made["root"])
    finally:
        _store(path, datasets["bytes"])
    expected = datasets["volume"].array.view(np.int32).astype(np.float32)
    assert np.array_equal(image.array, expected) and code == 0 and lines == []


def test_the_fuzzed_copies_are_restored(datasets):
    """The examples above write into the shared datasets; each puts the valid files back."""
    for made in datasets["made"].values():
        assert read_spec(made["root"]).labels == {"background": 0, "organ": 1}
    assert read_image(datasets["made"][".nii.gz"]["image"]).array.tobytes() == datasets["volume"].array.tobytes()
