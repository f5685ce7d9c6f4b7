"""data_tools/echonet.py on a tiny EchoNet-Dynamic folder written here (AVI, FileList, tracings)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from data_tools import echonet
from jointreg.cli.main import main
from jointreg.data.dataset import Dataset
from jointreg.data.validate import validate_dataset

cv2 = pytest.importorskip("cv2")

WIDTH, HEIGHT, FRAMES = 20, 16, 6
FILE_LIST_HEADER = "FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split"
# The first row of a traced frame is the long axis: reaching the frame's corners, it would
# change the mask if it were taken as a vertex.
LONG_AXIS = (0.0, 0.0, 19.0, 15.0)
# Chords across an 8 x 7 pixel box: centres x 5..12, y 4..10 inside (56 pixels).
BOX = [(4.5, y, 12.5, y) for y in np.arange(3.5, 11.0, 1.0)]
# A tapering LV: chords that narrow from 8 px to 2 px wide, on non-integer coordinates.
TAPER = [(8.3 - 0.6 * i, 4.2 + i, 10.1 + 0.6 * i, 4.4 + i) for i in range(6)]


def frame_pattern(k: int) -> np.ndarray:
    """Frame k: grey 10 with a 3x3 square of grey 40 + 30 k whose left column is x = 2 + 2 k."""
    frame = np.full((HEIGHT, WIDTH), 10, np.uint8)
    frame[1:4, 2 + 2 * k: 5 + 2 * k] = 40 + 30 * k
    return frame


def write_avi(path, frames, fourcc="FFV1", fps=50.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (frames[0].shape[1], frames[0].shape[0]), True)
    if not writer.isOpened():
        pytest.skip(f"this OpenCV cannot write {fourcc} AVI files")
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def write_echonet(root, *, videos=None, tracings=None, file_list_header=FILE_LIST_HEADER):
    """Four videos: A (TRAIN), B (VAL), C (TEST) traced on two frames, D (TRAIN) on one only."""
    videos = videos if videos is not None else [
        ("0XAAA", "TRAIN", 50.0), ("0XBBB", "VAL", 25.0), ("0XCCC", "TEST", 50.0), ("0XDDD", "TRAIN", 50.0),
    ]
    traced = tracings if tracings is not None else {
        "0XAAA": {1: BOX, 4: TAPER}, "0XBBB": {0: TAPER, 2: BOX}, "0XCCC": {5: BOX, 3: TAPER}, "0XDDD": {2: BOX},
    }
    rows = [file_list_header]
    for name, split, fps in videos:
        write_avi(root / "Videos" / f"{name}.avi", [frame_pattern(k) for k in range(FRAMES)])
        rows.append(f"{name},55.5,40.1,90.2,{HEIGHT},{WIDTH},{fps:g},{FRAMES},{split}")
    (root / "FileList.csv").write_text("\n".join(rows) + "\n")
    lines = ["FileName,X1,Y1,X2,Y2,Frame"]
    for name, frames in traced.items():
        for frame, chords in frames.items():
            for x1, y1, x2, y2 in [LONG_AXIS, *chords]:
                lines.append(f"{name}.avi,{x1:.4f},{y1:.4f},{x2:.4f},{y2:.4f},{frame}")
    (root / "VolumeTracings.csv").write_text("\n".join(lines) + "\n")
    return root


def reference_mask(chords) -> np.ndarray:
    """The polygon rule, rasterised by matplotlib (a second implementation), as mask[x, y]."""
    from matplotlib.path import Path as PolygonPath

    rows = np.asarray(chords, dtype=float)
    outline = np.concatenate([rows[:, 0:2], rows[::-1, 2:4]])
    x, y = np.meshgrid(np.arange(WIDTH), np.arange(HEIGHT), indexing="ij")
    inside = PolygonPath(outline).contains_points(np.stack([x.ravel(), y.ravel()], axis=1))
    return inside.reshape(WIDTH, HEIGHT)


@pytest.fixture
def echo_root(tmp_path):
    return write_echonet(tmp_path / "EchoNet-Dynamic")


def test_polygon_rule_and_rasterisation():
    polygon = echonet.trace_polygon([LONG_AXIS, *BOX])
    # Down the X1 wall, back up the X2 wall; the long axis is not a vertex.
    assert polygon[0].tolist() == [4.5, 3.5] and polygon[7].tolist() == [4.5, 10.5]
    assert polygon[8].tolist() == [12.5, 10.5] and polygon[-1].tolist() == [12.5, 3.5]
    assert echonet.polygon_area(polygon) == pytest.approx(8 * 7)
    mask = echonet.rasterize_polygon(polygon, (WIDTH, HEIGHT))
    expected = np.zeros((WIDTH, HEIGHT), bool)
    expected[5:13, 4:11] = True
    np.testing.assert_array_equal(mask, expected)
    taper = echonet.trace_polygon([LONG_AXIS, *TAPER])
    mask = echonet.rasterize_polygon(taper, (WIDTH, HEIGHT))
    np.testing.assert_array_equal(mask, reference_mask(TAPER))
    perimeter = float(np.linalg.norm(np.diff(np.vstack([taper, taper[:1]]), axis=0), axis=1).sum())
    assert abs(int(mask.sum()) - echonet.polygon_area(taper)) <= perimeter / 2
    # Clipped at the frame's edges.
    assert echonet.rasterize_polygon(np.array([[-5.0, -5.0], [30.0, -5.0], [30.0, 30.0], [-5.0, 30.0]]), (4, 3)).all()
    with pytest.raises(ValueError, match="at least two chords"):
        echonet.trace_polygon([LONG_AXIS, BOX[0]])


def test_read_video_frames_in_order(tmp_path):
    path = write_avi(tmp_path / "v.avi", [frame_pattern(k) for k in range(FRAMES)])
    frames = echonet.read_video(path)
    assert frames.shape == (FRAMES, HEIGHT, WIDTH) and frames.dtype == np.uint8
    for k in range(FRAMES):
        np.testing.assert_array_equal(frames[k], frame_pattern(k))  # FFV1 is lossless


def test_read_mjpg_video_within_tolerance(tmp_path):
    path = write_avi(tmp_path / "m.avi", [frame_pattern(k) for k in range(FRAMES)], fourcc="MJPG")
    frames = echonet.read_video(path)
    assert frames.shape == (FRAMES, HEIGHT, WIDTH)
    for k in range(FRAMES):
        assert np.abs(frames[k].astype(int) - frame_pattern(k)).max() <= 16  # lossy
        assert np.argmax(frames[k][2]) in (2 + 2 * k, 3 + 2 * k, 4 + 2 * k)


def test_convert(echo_root, tmp_path, capfd):
    code = main(["prepare", "echonet", "--input", str(echo_root), "--out", str(tmp_path / "out")])
    assert code == 0, capfd.readouterr().err
    out = tmp_path / "out"
    ds = Dataset.open(out)
    assert ds.cases("Tr") == ["0XAAA", "0XBBB"] and ds.cases("Ts") == ["0XCCC"]
    assert ds.spec.labels == {"background": 0, "lv": 1, "ignore": 2}
    assert ds.spec.modality == "echo" and ds.spec.num_training == 2
    image = ds.read_image("0XAAA")
    assert image.shape == (WIDTH, HEIGHT, FRAMES)
    for k in range(FRAMES):  # array[x, y, k] is pixel (column x, row y) of frame k
        np.testing.assert_array_equal(image.array[:, :, k], frame_pattern(k).T)
    # In-plane 1 (no pixel size in EchoNet), time 1000 / FPS ms.
    np.testing.assert_allclose(image.affine, np.diag([-1.0, -1.0, 20.0, 1.0]))
    header = nib.load(str(ds.image_path("0XAAA"))).header
    assert header.get_zooms() == pytest.approx((1.0, 1.0, 20.0)) and header.get_xyzt_units() == ("mm", "msec")
    assert b"axis 2 is time" in header["descrip"].tobytes()
    assert ds.read_image("0XBBB").spacing == pytest.approx((1.0, 1.0, 40.0))

    label = ds.read_label("0XAAA").array
    box = np.zeros((WIDTH, HEIGHT), bool)
    box[5:13, 4:11] = True
    np.testing.assert_array_equal(label[:, :, 1], box.astype(np.int16))
    np.testing.assert_array_equal(label[:, :, 4] == 1, reference_mask(TAPER))
    assert set(np.unique(label[:, :, [1, 4]]).tolist()) == {0, 1}
    assert np.all(label[:, :, [0, 2, 3, 5]] == 2)  # every other frame: ignore
    test_label = ds.read_label("0XCCC", "Ts").array
    assert np.all(test_label[:, :, [0, 1, 2, 4]] == 2) and int((test_label[:, :, 5] == 1).sum()) == 56
    np.testing.assert_array_equal(nib.load(str(ds.label_path("0XAAA"))).affine, image.affine)

    conversion = json.loads((out / "dataset.json").read_text())["conversion"]
    assert conversion["validation_cases"] == ["0XBBB"]
    assert list(conversion["skipped"]) == ["0XDDD"]
    case = conversion["cases"]["0XAAA"]
    assert (case["ed_frame"], case["es_frame"], case["traced_frames"]) == (1, 4, [1, 4])
    assert case["split"] == "TRAIN" and case["frame_interval_ms"] == 20.0 and case["EF"] == 55.5
    assert conversion["cases"]["0XBBB"]["ed_frame"] == 2 and conversion["cases"]["0XCCC"]["split"] == "TEST"
    assert conversion["time_spacing_unit"] == "ms"

    # The data contract holds (jointreg validate), and the slice workflow reads frames as slices.
    assert main(["validate", str(out)]) == 0, capfd.readouterr().err
    report = validate_dataset(out)
    assert report.ok and report.problems == []
    from jointreg.data.slices import SliceSpec, load_sliced_dataset
    from jointreg.data.sparsify import sparsify_dataset

    volumes = load_sliced_dataset(ds, SliceSpec(size=(16, 16)), progress=False)
    assert [(v.axis, v.num_slices, v.annotated_indices) for v in volumes] == [(2, FRAMES, [1, 4]), (2, FRAMES, [0, 2])]
    manifest = sparsify_dataset(out, tmp_path / "one_frame", slices_per_volume=1, progress=False)
    assert manifest["cases"]["0XAAA"]["axis"] == 2 and manifest["cases"]["0XAAA"]["slices"] == [1]
    assert validate_dataset(tmp_path / "one_frame").ok


def test_split_and_limit_options(echo_root, tmp_path):
    only_test = Dataset.open(echonet.convert_echonet(echo_root, tmp_path / "t", splits=["test"]))
    assert only_test.cases("Tr") == [] and only_test.cases("Ts") == ["0XCCC"]
    first = Dataset.open(echonet.convert_echonet(echo_root, tmp_path / "l", splits=["TRAIN", "VAL"], limit=1))
    assert first.cases("Tr") == ["0XAAA"] and first.cases("Ts") == []


def run_prepare(capfd, *argv):
    code = main(["prepare", "echonet", *map(str, argv)])
    return code, capfd.readouterr().err


def assert_clean_failure(code, err, names, out):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # nothing else, OpenCV's own messages included
    assert lines[0].startswith("jointreg prepare: error: ") and "Traceback" not in err
    for name in names:
        assert name in lines[0], lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp-")]


def test_bad_inputs_one_line_each(tmp_path, capfd):
    root = write_echonet(tmp_path / "a", file_list_header=FILE_LIST_HEADER.replace("FPS", "Rate"))
    code, err = run_prepare(capfd, "--input", root, "--out", tmp_path / "out")
    assert_clean_failure(code, err, ["FileList.csv", "has no column 'FPS'"], tmp_path / "out")

    root = write_echonet(tmp_path / "b", tracings={"0XAAA": {1: BOX, 4: TAPER}, "0XZZZ": {0: BOX, 1: BOX}})
    code, err = run_prepare(capfd, "--input", root, "--out", tmp_path / "out")
    assert_clean_failure(code, err, ["VolumeTracings.csv", "line 18", "0XZZZ", "FileList.csv does not list"], tmp_path / "out")

    root = write_echonet(tmp_path / "c")
    (root / "Videos" / "0XCCC.avi").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    code, err = run_prepare(capfd, "--input", root, "--out", tmp_path / "out")
    assert_clean_failure(code, err, ["0XCCC.avi", "cannot be opened as a video"], tmp_path / "out")
    # A truncated AVI: OpenCV's parser complains on the C stderr; only our line may show.
    mjpg = write_avi(tmp_path / "m.avi", [frame_pattern(k) for k in range(FRAMES)], fourcc="MJPG").read_bytes()
    (root / "Videos" / "0XCCC.avi").write_bytes(mjpg[: len(mjpg) * 2 // 3])
    code, err = run_prepare(capfd, "--input", root, "--out", tmp_path / "out")
    assert_clean_failure(code, err, ["0XCCC.avi"], tmp_path / "out")
    (root / "Videos" / "0XCCC.avi").unlink()
    code, err = run_prepare(capfd, "--input", root, "--out", tmp_path / "out")
    assert_clean_failure(code, err, ["0XCCC.avi", "video not found"], tmp_path / "out")

    root = write_echonet(tmp_path / "d", tracings={"0XAAA": {1: BOX, 9: TAPER}})
    code, err = run_prepare(capfd, "--input", root, "--out", tmp_path / "out")
    assert_clean_failure(code, err, ["VolumeTracings.csv", "frame 9 of video 0XAAA is beyond its 6 frames"], tmp_path / "out")

    root = write_echonet(tmp_path / "e")
    (root / "FileList.csv").write_text((root / "FileList.csv").read_text().replace(f",{WIDTH},50,", ",112,50,", 1))
    code, err = run_prepare(capfd, "--input", root, "--out", tmp_path / "out")
    assert_clean_failure(code, err, ["0XAAA.avi", "frames are 20x16 pixels", "says 112x16"], tmp_path / "out")

    root = write_echonet(tmp_path / "f")
    (root / "VolumeTracings.csv").write_text("FileName,X1,Y1,X2,Y2,Frame\n0XAAA.avi,1,2,three,4,1\n")
    code, err = run_prepare(capfd, "--input", root, "--out", tmp_path / "out")
    assert_clean_failure(code, err, ["VolumeTracings.csv", "line 2", "not four finite numbers"], tmp_path / "out")

    code, err = run_prepare(capfd, "--input", tmp_path / "nowhere", "--out", tmp_path / "out")
    assert_clean_failure(code, err, ["nowhere", "folder not found"], tmp_path / "out")
