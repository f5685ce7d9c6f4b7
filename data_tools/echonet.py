"""Convert EchoNet-Dynamic (echocardiography videos with LV tracings) into a 2D+t dataset.

Expected layout (the official download; --input is the folder holding these):

  FileList.csv          FileName, EF, ESV, EDV, FrameHeight, FrameWidth, FPS, NumberOfFrames, Split
  VolumeTracings.csv    FileName, X1, Y1, X2, Y2, Frame: the LV traced on two frames per video
  Videos/0X1A0A263B22CCD966.avi

Every video becomes one case (its FileName) whose image is a 2D+t volume: array[x, y, k] is
pixel (column x, row y) of frame k (0-based, as in VolumeTracings.csv), grey levels 0-255 (colour
frames are made grey). The frames are the slices along axis 2, so the slice workflow (sparsify,
train, pseudolabel, evaluate) runs on them unchanged. The header's third spacing is the frame
interval in milliseconds (1000 / FPS); EchoNet gives no pixel size, so the in-plane spacing is
1.0 (distances are in pixels; a warning says so and dataset.json records it).

Labels: 0 background, 1 lv, 2 ignore. The traced frames (end-diastole and end-systole) hold the
LV mask, every other frame is ignore (not background). Each traced frame has ~21 rows: the first
is the long axis (apex to mitral annulus), the others are chords across the LV from the (X1, Y1)
wall to the (X2, Y2) wall. The mask is the polygon through the (X1, Y1) points in file order,
then the (X2, Y2) points in reverse order, long axis left out (as EchoNet's own loader builds it);
a pixel is inside when its centre is (the vertices are not rounded). ED and ES are told apart by
the traced area (larger = ED) and recorded per case in dataset.json with FPS, EF, ESV and EDV.

Splits: TRAIN and VAL go to imagesTr/labelsTr (dataset.json lists the VAL cases under
conversion.validation_cases, for a recipe's data.validation_cases); TEST goes to imagesTs with
labelsTs, since EchoNet traces test videos too (sparse like the training labels: evaluation
skips ignore). --split chooses the splits to convert, --limit the first N videos of them.
Videos with fewer than two traced frames are skipped, as EchoNet's loader does, and listed.

Needs OpenCV (cv2, installed with albumentations) to decode the AVI files.

Example:
  jointreg prepare echonet --input ~/data/EchoNet-Dynamic --out data/echonet
  jointreg prepare echonet --input ~/data/EchoNet-Dynamic --split TRAIN --limit 200 --out data/echonet_200
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_tools import _common
from data_tools._common.cfg import positive_number
from data_tools._common.video import TIME_UNIT, read_video, time_series_volume
from jointreg.errors import ConfigError, InputError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

logger = logging.getLogger(__name__)

SOURCE = "echonet"
HELP = "EchoNet-Dynamic echo videos (AVI) with LV tracings at ED and ES, as 2D+t volumes"

ECHONET_LABELS = {"background": 0, "lv": 1, "ignore": 2}
SPLITS = {"TRAIN": "Tr", "VAL": "Tr", "TEST": "Ts"}
FILE_LIST_COLUMNS = ("FileName", "FPS", "Split")
TRACING_COLUMNS = ("FileName", "X1", "Y1", "X2", "Y2", "Frame")


# --------------------------------------------------------------------------------------------
# the two CSV files
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoEntry:
    """One row of ``FileList.csv``.

    Attributes:
        name: FileName without ``.avi``.
        split: ``TRAIN``, ``VAL`` or ``TEST``.
        fps: frames per second.
        fields: every column as given (EF, ESV, EDV, FrameHeight, ...).
        line: line number in the file.
    """

    name: str
    split: str
    fps: float
    fields: dict[str, str] = field(default_factory=dict)
    line: int = 0

    def number(self, column: str) -> float | None:
        """A numeric column, ``None`` when absent or not a number."""
        try:
            return float(self.fields[column])
        except (KeyError, ValueError):
            return None


@dataclass
class Tracing:
    """The rows of ``VolumeTracings.csv`` for one frame of one video.

    Attributes:
        segments: ``(x1, y1, x2, y2)`` per row, in file order.
        line: line number of the first row.
    """

    segments: list[tuple[float, float, float, float]]
    line: int


def _strip_avi(name: str) -> str:
    name = name.strip()
    return name[:-4] if name.lower().endswith(".avi") else name


@contextlib.contextmanager
def _csv_rows(path: Path, columns: Sequence[str]) -> Iterator[Iterator[tuple[int, dict[str, str]]]]:
    """``(line number, row)`` pairs of a CSV file with the given columns (checked first)."""
    if not path.is_file():
        raise InputError(path, "file not found (an EchoNet-Dynamic folder has FileList.csv and VolumeTracings.csv)")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in columns if c not in header]
            if missing:
                raise InputError(path, f"has no column {', '.join(repr(c) for c in missing)} (columns: {', '.join(header) or 'none'})")
            reader.fieldnames = header

            def rows() -> Iterator[tuple[int, dict[str, str]]]:
                for row in reader:
                    if None in row or any(row.get(c) is None for c in columns):
                        raise InputError(path, f"line {reader.line_num} does not have the {len(header)} columns of the header")
                    yield reader.line_num, {k: (v or "").strip() for k, v in row.items()}

            yield rows()
    except UnicodeDecodeError as exc:
        raise InputError(path, f"is not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        raise InputError(path, f"is not a readable CSV file ({exc})") from None


def read_file_list(path: str | os.PathLike[str]) -> list[VideoEntry]:
    """Parse ``FileList.csv``.

    Raises:
        InputError: missing file or column, an unknown Split, an FPS that is not a positive
            number, a FileName given twice.
    """
    path = Path(path)
    entries: list[VideoEntry] = []
    seen: dict[str, int] = {}
    with _csv_rows(path, FILE_LIST_COLUMNS) as rows:
        for line, row in rows:
            name = _strip_avi(row["FileName"])
            if not name:
                raise InputError(path, f"line {line}: empty FileName")
            if name in seen:
                raise InputError(path, f"line {line}: video {name} is listed twice (first on line {seen[name]})")
            seen[name] = line
            split = row["Split"].upper()
            if split not in SPLITS:
                raise InputError(path, f"line {line}: Split {row['Split']!r} is not one of {', '.join(SPLITS)}")
            fps = positive_number(row["FPS"])
            if fps is None:
                raise InputError(path, f"line {line}: FPS {row['FPS']!r} is not a positive number")
            entries.append(VideoEntry(name, split, fps, row, line))
    if not entries:
        raise InputError(path, "lists no video")
    return entries


def read_tracings(path: str | os.PathLike[str]) -> dict[str, dict[int, Tracing]]:
    """Parse ``VolumeTracings.csv``: video name -> frame -> its rows, in file order.

    Raises:
        InputError: missing file or column, coordinates that are not finite numbers, a Frame
            that is not a whole number >= 0.
    """
    import math

    path = Path(path)
    traces: dict[str, dict[int, Tracing]] = {}
    with _csv_rows(path, TRACING_COLUMNS) as rows:
        for line, row in rows:
            try:
                coords = tuple(float(row[c]) for c in ("X1", "Y1", "X2", "Y2"))
            except ValueError:
                coords = (float("nan"),)
            if not all(math.isfinite(v) for v in coords):
                shown = ", ".join(row[c] for c in ("X1", "Y1", "X2", "Y2"))
                raise InputError(path, f"line {line}: X1, Y1, X2, Y2 ({shown}) are not four finite numbers")
            frame_text = row["Frame"]
            if not frame_text.isdigit():
                raise InputError(path, f"line {line}: Frame {frame_text!r} is not a whole number >= 0")
            frames = traces.setdefault(_strip_avi(row["FileName"]), {})
            frames.setdefault(int(frame_text), Tracing([], line)).segments.append(coords)  # type: ignore[arg-type]
    return traces


# --------------------------------------------------------------------------------------------
# tracing -> mask
# --------------------------------------------------------------------------------------------
def trace_polygon(segments: Sequence[Sequence[float]]) -> np.ndarray:
    """The LV polygon of one traced frame: ``(N, 2)`` vertices ``(x, y)`` in pixels.

    The first row of a frame is the long axis, not a chord, and is left out; the outline then
    runs down one wall through the ``(X1, Y1)`` ends of the chords and back up the other through
    the ``(X2, Y2)`` ends.

    Raises:
        ValueError: fewer than two chords (no area to enclose).
    """
    import numpy as np

    rows = np.asarray(segments, dtype=np.float64).reshape(-1, 4)[1:]
    if len(rows) < 2:
        raise ValueError(f"{len(rows) + 1} row(s): a tracing needs the long axis and at least two chords")
    return np.concatenate([rows[:, 0:2], rows[::-1, 2:4]])


def polygon_area(vertices: np.ndarray) -> float:
    """Area (pixels²) enclosed by a simple polygon (shoelace formula)."""
    import numpy as np

    x, y = np.asarray(vertices, dtype=np.float64).T
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def rasterize_polygon(vertices: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies inside the polygon (even-odd rule), as ``mask[x, y]``.

    Args:
        vertices: ``(N, 2)`` points ``(x, y)``; pixel ``(x, y)`` has its centre at ``(x, y)``.
        shape: ``(width, height)`` of the frame.

    Returns:
        Boolean ``(width, height)`` mask; points outside the frame are clipped.
    """
    import numpy as np

    vertices = np.asarray(vertices, dtype=np.float64)
    xs = np.arange(shape[0], dtype=np.float64)[:, None]
    ys = np.arange(shape[1], dtype=np.float64)[None, :]
    inside = np.zeros(shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0)):
        if y0 == y1:
            continue  # a horizontal edge crosses no row in the half-open rule
        spans = (y0 > ys) != (y1 > ys)
        crossing = x0 + (ys - y0) * (x1 - x0) / (y1 - y0)
        inside ^= spans & (xs < crossing)
    return inside


# --------------------------------------------------------------------------------------------
# the conversion
# --------------------------------------------------------------------------------------------
def _label_volume(
    video: VideoEntry, tracings: dict[int, Tracing], width: int, height: int, count: int, tracings_path: Path,
) -> tuple[np.ndarray, dict[str, Any]]:
    """``(X, Y, T)`` label (lv on the traced frames, ignore elsewhere) and what to record."""
    import numpy as np

    label = np.full((width, height, count), ECHONET_LABELS["ignore"], dtype=np.int16)
    areas: dict[int, float] = {}
    notes: list[str] = []
    for frame, tracing in sorted(tracings.items()):
        if frame >= count:
            raise InputError(tracings_path, f"line {tracing.line}: frame {frame} of video {video.name} is beyond its {count} frames")
        try:
            polygon = trace_polygon(tracing.segments)
        except ValueError as exc:
            raise InputError(tracings_path, f"line {tracing.line}: frame {frame} of video {video.name}: {exc}") from None
        mask = rasterize_polygon(polygon, (width, height))
        if not mask.any():
            notes.append(f"the tracing of frame {frame} covers no pixel centre")
        label[:, :, frame] = mask.astype(np.int16) * ECHONET_LABELS["lv"]
        areas[frame] = polygon_area(polygon)
    ed = max(areas, key=lambda f: areas[f])
    es = min(areas, key=lambda f: areas[f])
    info = {
        "traced_frames": sorted(areas),
        "ed_frame": ed,
        "es_frame": es,
        "traced_area_px": {str(f): round(a, 2) for f, a in sorted(areas.items())},
        "notes": notes,
    }
    return label, info


def convert_echonet(
    input_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    splits: Sequence[str] = tuple(SPLITS),
    limit: int | None = None,
    name: str = "",
    overwrite: bool = False,
) -> Path:
    """Convert EchoNet-Dynamic videos and tracings into a 2D+t dataset (module docstring).

    Args:
        input_dir: the folder with ``FileList.csv``, ``VolumeTracings.csv`` and ``Videos/``.
        out: dataset folder to create.
        splits: official splits to convert (``TRAIN``, ``VAL``, ``TEST``).
        limit: convert only the first ``limit`` videos (FileList order) of those splits.
        name: dataset name (default: the folder name).
        overwrite: replace an existing ``out``.

    Returns:
        The dataset folder.

    Raises:
        InputError: a missing file or column, a malformed row, a tracing of a video that
            FileList.csv does not list or of a frame the video does not have, a missing or
            undecodable AVI, frames of another size than FileList.csv says.
        ConfigError: an unknown split, a limit below 1.
    """
    import numpy as np
    from tqdm import tqdm

    from jointreg.data.slices import through_plane_axis

    input_dir, out = Path(input_dir), Path(out)
    wanted = [s.upper() for s in splits]
    unknown = [s for s in wanted if s not in SPLITS]
    if unknown or not wanted:
        raise ConfigError(f"--split must name some of {', '.join(SPLITS)}, got {', '.join(splits) or 'nothing'}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    if not input_dir.is_dir():
        raise InputError(input_dir, "folder not found")
    _common.check_new_output(out, overwrite=overwrite, inputs=[input_dir])
    list_path, tracings_path = input_dir / "FileList.csv", input_dir / "VolumeTracings.csv"
    videos = read_file_list(list_path)
    tracings = read_tracings(tracings_path)
    listed = {v.name for v in videos}
    for video_name, frames in tracings.items():
        if video_name not in listed:
            first = min(t.line for t in frames.values())
            raise InputError(tracings_path, f"line {first}: tracing of video {video_name}, which FileList.csv does not list")
    case_ids = _common.make_case_ids([v.name for v in videos])

    skipped: dict[str, str] = {}
    selected: list[VideoEntry] = []
    for video in videos:
        if video.split not in wanted:
            continue
        traced = len(tracings.get(video.name, {}))
        if traced < 2:
            skipped[case_ids[video.name]] = f"{traced} traced frame(s), EchoNet traces two"
            continue
        selected.append(video)
    if limit is not None:
        selected = selected[:limit]
    if not selected:
        raise InputError(list_path, f"no video with two traced frames in split(s) {', '.join(wanted)}")

    pixel_note = "EchoNet gives no pixel size: in-plane spacing 1.0, distances are in pixels"
    cases: dict[str, dict[str, Any]] = {}
    extra = {
        "conversion": {
            "source": SOURCE,
            "layout": "2D+t: axis 2 is time, slice k = frame k of the AVI (0-based, as in VolumeTracings.csv)",
            "time_spacing_unit": TIME_UNIT,
            "in_plane_spacing": pixel_note,
            "tracing_polygon": "(X1, Y1) in file order then (X2, Y2) reversed, first row (long axis) left out; "
                               "pixels whose centre is inside",
            "splits": {s: SPLITS[s] for s in wanted},
            "validation_cases": [case_ids[v.name] for v in selected if v.split == "VAL"],
            "skipped": skipped,
            "cases": cases,
        }
    }
    recount = misordered = 0
    with _common.dataset_output(out, modality="echo", name=name, labels=ECHONET_LABELS, extra=extra, overwrite=overwrite) as ds:
        for video in tqdm(selected, desc="echonet", unit="video", disable=None):
            case = case_ids[video.name]
            avi = input_dir / "Videos" / f"{video.name}.avi"
            frames = read_video(avi)
            count, height, width = frames.shape
            expected = (video.number("FrameWidth"), video.number("FrameHeight"))
            if None not in expected and expected != (width, height):
                raise InputError(
                    avi, f"frames are {width}x{height} pixels but FileList.csv line {video.line} says "
                    f"{expected[0]:g}x{expected[1]:g} (FrameWidth x FrameHeight)"
                )
            label, info = _label_volume(video, tracings[video.name], width, height, count, tracings_path)
            declared = video.number("NumberOfFrames")
            if declared is not None and declared != count:
                info["notes"].append(f"FileList.csv says NumberOfFrames {declared:g}, the AVI holds {count}")
                recount += 1
            interval = 1000.0 / video.fps
            affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # ITK's identity orientation: the frame as displayed
            volume = time_series_volume(np.ascontiguousarray(frames.transpose(2, 1, 0), dtype=np.float32), affine, interval)
            cases[case] = {
                "file": f"Videos/{avi.name}",
                "split": video.split,
                "fps": video.fps,
                "frame_interval_ms": round(interval, 6),
                "frames": count,
                **{k: video.number(k) for k in ("EF", "ESV", "EDV") if k in video.fields},
                **info,
            }
            if through_plane_axis(volume.spacing) != 2:
                info["notes"].append("the frame interval is not the largest spacing: slice along axis 2 explicitly")
                misordered += 1
            if not cases[case]["notes"]:
                del cases[case]["notes"]
            ds.add(case, volume.array, reference=volume, label=label, split=SPLITS[video.split], label_source=tracings_path)
    # Said after the conversion: a failed one prints its one error line and nothing else.
    logger.warning("%s", pixel_note)
    if recount:
        logger.warning("%d video(s) hold another number of frames than FileList.csv says (see dataset.json)", recount)
    if misordered:
        logger.warning("%d video(s) whose frame interval is not their largest spacing: set the slice axis to 2", misordered)
    if skipped:
        logger.warning("skipped %d video(s) with fewer than two traced frames (listed in dataset.json)", len(skipped))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, type=Path, metavar="DIR", help="EchoNet-Dynamic folder (FileList.csv, VolumeTracings.csv, Videos/)")
    parser.add_argument(
        "--split", nargs="+", type=str.upper, choices=tuple(SPLITS), default=list(SPLITS), metavar="SPLIT",
        help="official splits to convert: TRAIN VAL (imagesTr) TEST (imagesTs); default all",
    )
    parser.add_argument("--limit", type=int, metavar="N", help="convert only the first N videos (FileList order) of those splits")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="dataset folder to create")
    parser.add_argument("--name", default="", help="dataset name for dataset.json (default: the folder name)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def run(args: argparse.Namespace) -> int:
    out = convert_echonet(args.input, args.out, splits=args.split, limit=args.limit, name=args.name, overwrite=args.overwrite)
    print(_common.describe(out))
    return 0
