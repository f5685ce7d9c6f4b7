"""Echo videos as jointreg volumes: decoding a video's frames (OpenCV) and the 2D+t volume the
echo converters write (frames along axis 2, the frame interval in ms as its spacing)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from jointreg.errors import ConfigError, InputError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from jointreg.data.nifti import Volume

TIME_UNIT = "ms"


def time_series_volume(array: np.ndarray, affine: np.ndarray, frame_interval_ms: float | None) -> Volume:
    """A 2D+t volume as the echo converters write it.

    Args:
        array: ``(X, Y, T)``: frame ``k`` is ``array[:, :, k]``.
        affine: 4×4 affine whose first two columns give the in-plane geometry (mm, RAS+).
        frame_interval_ms: time between frames; ``None`` when unknown (then 1 per frame).

    Returns:
        A :class:`~jointreg.data.nifti.Volume` whose affine's third column has the length of
        the frame interval (ms), with a header that says so (``descrip``; units mm and ms).
    """
    import nibabel as nib
    import numpy as np

    from jointreg.data.nifti import TIME_SERIES_MARK, Volume

    affine = np.array(affine, dtype=np.float64)
    step = 1.0 if frame_interval_ms is None else float(frame_interval_ms)
    column = affine[:3, 2]
    norm = float(np.linalg.norm(column))
    affine[:3, 2] = column / norm * step if norm > 0 else np.array([0.0, 0.0, step])
    header = nib.Nifti1Header()
    header.set_xyzt_units("mm", "msec" if frame_interval_ms is not None else "unknown")
    known = "frame interval in ms" if frame_interval_ms is not None else "frame interval unknown, 1 per frame"
    header["descrip"] = f"{TIME_SERIES_MARK}: axis 2 is time, spacing = {known}".encode("ascii")
    return Volume(array, affine, header)


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence the C-level stderr while OpenCV parses a video: its AVI parser prints lines that
    name no file ("Unexpected element ..."); the converter reports the file itself."""
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 2)
        finally:
            os.close(null)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def read_video(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode every frame of a video as grey levels: ``(T, H, W)`` uint8.

    Raises:
        ConfigError: OpenCV is not installed.
        InputError: missing file, a file OpenCV cannot open or that holds no decodable frame.
    """
    import numpy as np

    try:
        import cv2
    except ImportError:
        raise ConfigError("reading AVI videos needs OpenCV: pip install opencv-python-headless") from None
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "video not found")
    frames = []
    with _quiet_native_stderr():
        capture = cv2.VideoCapture(str(path))
        try:
            if not capture.isOpened():
                raise InputError(path, "cannot be opened as a video (damaged, or a codec OpenCV cannot decode)")
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                if frame.ndim == 3:
                    frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2GRAY if frame.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
                frames.append(np.asarray(frame, dtype=np.uint8))
        finally:
            capture.release()
    if not frames:
        raise InputError(path, "holds no frame that can be decoded (damaged, or a codec OpenCV cannot decode)")
    return np.stack(frames)
