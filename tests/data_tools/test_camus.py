"""data_tools/camus.py on tiny CAMUS patients written here (MetaImage and NIfTI variants)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from data_tools import camus
from data_tools._common.metaimage import write_metaimage
from jointreg.cli.main import main
from jointreg.data.dataset import Dataset
from jointreg.data.validate import validate_dataset
from jointreg.errors import InputError

X, Y, FRAMES = 12, 10, 5
SPACING = (0.3, 0.15)
OFFSET = (1.0, 2.0)
# view -> ED, ES (1-based, as the cfg counts), frame rate (None: not in the cfg)
PHASES = {"2CH": (1, 5, 25.0), "4CH": (2, 4, None)}


def sequence(view: str) -> np.ndarray:
    """(X, Y, T): frame k holds 10 k + x + 3 y, plus 100 in the 4-chamber view."""
    x, y, k = np.meshgrid(np.arange(X), np.arange(Y), np.arange(FRAMES), indexing="ij")
    return (10 * k + x + 3 * y + (100 if view == "4CH" else 0)).astype(np.uint8)


def ground_truth(phase: str) -> np.ndarray:
    gt = np.zeros((X, Y), np.uint8)
    gt[3:7, 2:6] = 1
    gt[2:8, 6:8] = 2
    gt[4:6, 8:10] = 3 if phase == "ED" else 1
    if phase == "ES":
        gt[0, 0] = 3
    return gt


def cfg_text(view: str) -> str:
    ed, es, rate = PHASES[view]
    text = f"ED: {ed}\nES: {es}\nNbFrame: {FRAMES}\nSex: F\nAge: 61\nImageQuality: Good\nEF: 54\n"
    return text + (f"FrameRate: {rate:g}\n" if rate else "")


def write_patient(root, pid, *, nifti=False, es_image_changed=True):
    """Both views; the 4CH ES image differs from its sequence frame by 7 at one pixel."""
    folder = root / pid
    folder.mkdir(parents=True)
    for view in ("2CH", "4CH"):
        (folder / f"Info_{view}.cfg").write_text(cfg_text(view))
        frames = sequence(view)
        ed, es, _ = PHASES[view]
        images = {"ED": frames[:, :, ed - 1].copy(), "ES": frames[:, :, es - 1].copy()}
        if view == "4CH" and es_image_changed:
            images["ES"][5, 5] += 7
        files = {"half_sequence": frames}
        for phase in ("ED", "ES"):
            files[phase], files[f"{phase}_gt"] = images[phase], ground_truth(phase)
        for suffix, array in files.items():
            stem = folder / f"{pid}_{view}_{suffix}"
            if nifti:
                affine = np.diag([-SPACING[0], -SPACING[1], 1.0, 1.0])
                affine[:2, 3] = [-OFFSET[0], -OFFSET[1]]
                data = array if array.ndim == 3 else array[:, :, None]
                nib.save(nib.Nifti1Image(data, affine), str(stem) + ".nii.gz")
            else:
                spacing, offset = (*SPACING, 1.0)[: array.ndim], (*OFFSET, 0.0)[: array.ndim]
                write_metaimage(str(stem) + ".mhd", array, spacing=spacing, offset=offset)
    return folder


@pytest.fixture
def camus_root(tmp_path):
    root = tmp_path / "CAMUS"
    write_patient(root, "patient0001")
    write_patient(root, "patient0002", nifti=True)
    return root


def test_info_parsing(tmp_path):
    cfg = tmp_path / "Info_2CH.cfg"
    cfg.write_text(cfg_text("2CH"))
    info = camus.read_info(cfg)
    assert (info.ed, info.es, info.num_frames, info.frame_rate) == (1, 5, 5, 25.0)
    assert info.to_json() == {"ED": 1, "ES": 5, "NbFrame": 5, "Sex": "F", "Age": 61, "ImageQuality": "Good", "EF": 54, "FrameRate": 25}
    for text, message in [
        ("ED: 1\nES 5\n", "line 2 is not 'Key: value'"),
        ("ED: first\nES: 5\n", "'ED: first' is not a whole number"),
        ("ED: 1\n", "has no 'ES:' line"),
        ("ED: 2\nES: 2\n", "same frame"),
        ("ED: 1\nES: 9\nNbFrame: 5\n", "beyond NbFrame 5"),
        ("ED: 1\nES: 5\nFrameRate: fast\n", "'FrameRate: fast' is not a positive number"),
    ]:
        cfg.write_text(text)
        with pytest.raises(InputError, match=message):
            camus.read_info(cfg)


def test_convert(camus_root, tmp_path, capfd):
    out = tmp_path / "out"
    assert main(["prepare", "camus", "--input", str(camus_root), "--out", str(out)]) == 0, capfd.readouterr().err
    ds = Dataset.open(out)
    assert ds.cases("Tr") == ["patient0001_2CH", "patient0001_4CH", "patient0002_2CH", "patient0002_4CH"]
    assert ds.spec.labels == {"background": 0, "lv": 1, "myocardium": 2, "atrium": 3, "ignore": 4}
    assert ds.spec.modality == "echo"
    for pid in ("patient0001", "patient0002"):  # the MetaImage and the NIfTI patient give the same
        for view, (ed, es, rate) in PHASES.items():
            case = f"{pid}_{view}"
            image = ds.read_image(case)
            np.testing.assert_array_equal(image.array, sequence(view).astype(np.float32))
            label = ds.read_label(case).array
            np.testing.assert_array_equal(label[:, :, ed - 1], ground_truth("ED"))
            np.testing.assert_array_equal(label[:, :, es - 1], ground_truth("ES"))
            others = [k for k in range(FRAMES) if k not in (ed - 1, es - 1)]
            assert np.all(label[:, :, others] == 4)
            # ElementSpacing in-plane, the frame interval (ms) as third spacing, Offset in RAS.
            expected = np.diag([-SPACING[0], -SPACING[1], 1000.0 / rate if rate else 1.0, 1.0])
            expected[:2, 3] = [-OFFSET[0], -OFFSET[1]]
            np.testing.assert_allclose(image.affine, expected)
            units = nib.load(str(ds.image_path(case))).header.get_xyzt_units()
            assert units == ("mm", "msec" if rate else "unknown")

    conversion = json.loads((out / "dataset.json").read_text())["conversion"]
    two, four = conversion["cases"]["patient0001_2CH"], conversion["cases"]["patient0001_4CH"]
    assert (two["ed_frame"], two["es_frame"], two["frame_interval_ms"], two["sequence"]) == (1, 5, 40.0, "patient0001_2CH_half_sequence.mhd")
    assert two["checks"] == {"ED": {"identical": True}, "ES": {"identical": True}}
    assert two["info"]["ImageQuality"] == "Good" and two["info"]["FrameRate"] == 25
    assert four["frame_interval_ms"] is None and four["checks"]["ED"] == {"identical": True}
    # The ES image differs from sequence frame 4: recorded, the ground truth is used anyway.
    assert four["checks"]["ES"] == {"identical": False, "max_difference": 7.0, "closest_frame": 4}

    assert main(["validate", str(out)]) == 0, capfd.readouterr().err
    assert validate_dataset(out).ok
    from jointreg.data.slices import SliceSpec, load_sliced_dataset
    from jointreg.data.sparsify import sparsify_dataset

    volumes = load_sliced_dataset(ds, SliceSpec(size=(16, 16)), progress=False)
    assert [(v.axis, v.annotated_indices) for v in volumes[:2]] == [(2, [0, 4]), (2, [1, 3])]
    manifest = sparsify_dataset(out, tmp_path / "one_frame", slices_per_volume=1, progress=False)
    assert all(entry["axis"] == 2 for entry in manifest["cases"].values())
    assert validate_dataset(tmp_path / "one_frame").ok


def test_options(camus_root, tmp_path):
    ds = Dataset.open(camus.convert_camus(camus_root, tmp_path / "a", views=["4ch"], fps=50.0, test_cases=["patient0002_4CH"]))
    assert ds.cases("Tr") == ["patient0001_4CH"] and ds.cases("Ts") == ["patient0002_4CH"]
    assert ds.read_image("patient0001_4CH").spacing == pytest.approx((0.3, 0.15, 20.0))
    assert ds.read_label("patient0002_4CH", "Ts").array[:, :, 1].tolist() == ground_truth("ED").tolist()
    official = tmp_path / "official"
    write_patient(official / "training", "patient0003")
    write_patient(official / "testing", "patient0451")
    both = Dataset.open(camus.convert_camus(official, tmp_path / "b"))
    assert both.cases("Tr") == ["patient0003_2CH", "patient0003_4CH"] and both.cases("Ts") == ["patient0451_2CH", "patient0451_4CH"]
    with pytest.raises(InputError, match="has no testing/ folder"):
        camus.convert_camus(camus_root, tmp_path / "c", split="testing")


def run_prepare(capfd, *argv):
    code = main(["prepare", "camus", *map(str, argv)])
    return code, capfd.readouterr().err


def assert_clean_failure(code, err, names, out):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("jointreg prepare: error: ") and "Traceback" not in err
    for name in names:
        assert name in lines[0], lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp-")]


def test_bad_inputs_one_line_each(tmp_path, capfd):
    out = tmp_path / "out"
    # Each spoils the last patient, so that earlier cases are already written when it fails.
    root = tmp_path / "a"
    write_patient(root, "patient0001")
    (write_patient(root, "patient0002") / "Info_4CH.cfg").write_text("ED: 2\nES = 4\n")
    code, err = run_prepare(capfd, "--input", root, "--out", out)
    assert_clean_failure(code, err, ["patient0002/Info_4CH.cfg", "line 2 is not 'Key: value'"], out)

    root = tmp_path / "b"
    write_patient(root, "patient0001")
    (write_patient(root, "patient0002") / "patient0002_4CH_ES_gt.mhd").unlink()
    code, err = run_prepare(capfd, "--input", root, "--out", out)
    assert_clean_failure(code, err, ["patient0002_4CH_ES_gt", "ground truth of the ES frame 4 not found"], out)

    root = tmp_path / "c"
    write_patient(root, "patient0001")
    header = write_patient(root, "patient0002") / "patient0002_4CH_half_sequence.mhd"
    header.write_text(header.read_text().replace(f"DimSize = {X} {Y} {FRAMES}", f"DimSize = {X} {Y} {FRAMES + 1}"))
    code, err = run_prepare(capfd, "--input", root, "--out", out)
    assert_clean_failure(code, err, ["patient0002_4CH_half_sequence.mhd", "needs 720: truncated (wrong DimSize"], out)

    root = tmp_path / "d"
    folder = write_patient(root, "patient0001")
    bad = ground_truth("ED")
    bad[0, 1] = 5
    write_metaimage(folder / "patient0001_4CH_ED_gt.mhd", bad, spacing=SPACING)
    code, err = run_prepare(capfd, "--input", root, "--out", out)
    assert_clean_failure(code, err, ["patient0001_4CH_ED_gt.mhd", "label values [5] are not CAMUS classes"], out)

    root = tmp_path / "e"
    folder = write_patient(root, "patient0001")
    (folder / "Info_2CH.cfg").write_text(cfg_text("2CH").replace(f"NbFrame: {FRAMES}", "NbFrame: 6"))
    code, err = run_prepare(capfd, "--input", root, "--out", out)
    assert_clean_failure(code, err, ["patient0001_2CH_half_sequence.mhd", "holds 5 frames but Info_2CH.cfg says NbFrame 6"], out)

    root = tmp_path / "f"
    folder = write_patient(root, "patient0001")
    write_metaimage(folder / "patient0001_2CH_ES_gt.mhd", np.zeros((Y, X), np.uint8), spacing=SPACING)
    code, err = run_prepare(capfd, "--input", root, "--out", out)
    assert_clean_failure(code, err, ["patient0001_2CH_ES_gt.mhd", "shape (10, 12) differs from the frames"], out)

    (tmp_path / "empty").mkdir()
    code, err = run_prepare(capfd, "--input", tmp_path / "empty", "--out", out)
    assert_clean_failure(code, err, ["empty", "no CAMUS patientXXXX folders"], out)
