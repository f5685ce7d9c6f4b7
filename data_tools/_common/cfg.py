"""``Info.cfg`` files of the cardiac challenges (ACDC, CAMUS): ``Key: value`` lines, with the
end-diastolic and end-systolic frame numbers every converter of such data needs."""

from __future__ import annotations

import math
from pathlib import Path

from jointreg.errors import InputError


def read_key_values(path: Path, missing: str) -> dict[str, str]:
    """The ``Key: value`` lines of ``path`` (blank lines skipped; values stripped).

    Args:
        missing: what the error says after "file not found" (where such a file is expected).

    Raises:
        InputError: no such file, an unreadable one, or a line that is not ``Key: value``.
    """
    if not path.is_file():
        raise InputError(path, f"file not found ({missing})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read ({exc})") from None
    fields: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep or not key.strip():
            raise InputError(path, f"line {number} is not 'Key: value': {line.strip()!r}")
        fields[key.strip()] = value.strip()
    return fields


def whole_number(fields: dict[str, str], path: Path, key: str, *, required: bool) -> int | None:
    """``fields[key]`` as a whole number >= 1 (``12`` or ``12.0``); ``None`` when absent and not required."""
    if key not in fields:
        if required:
            raise InputError(path, f"has no '{key}:' line")
        return None
    value = fields[key]
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number.is_integer():
        raise InputError(path, f"'{key}: {value}' is not a whole number")
    if number < 1:
        raise InputError(path, f"'{key}: {value}' must be at least 1")
    return int(number)


def ed_es_frames(fields: dict[str, str], path: Path) -> tuple[int, int, int | None]:
    """``(ED, ES, NbFrame)``: frame numbers counted from 1; NbFrame ``None`` when absent.

    Raises:
        InputError: ED or ES missing or not whole numbers >= 1, ED equal to ES, a frame beyond NbFrame.
    """
    ed, es = whole_number(fields, path, "ED", required=True), whole_number(fields, path, "ES", required=True)
    frames = whole_number(fields, path, "NbFrame", required=False)
    if ed == es:
        raise InputError(path, f"ED and ES are the same frame ({ed})")
    if frames is not None and max(ed, es) > frames:
        raise InputError(path, f"ED {ed} / ES {es} beyond NbFrame {frames}")
    return ed, es, frames


def positive_number(text: str) -> float | None:
    """``text`` as a finite number > 0, else ``None`` (the caller names the file and the field)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None
