"""Label maps: how the integer values of source label files become class ids.

Only the standard library is imported at module level (see :mod:`data_tools._common`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jointreg.errors import ConfigError, InputError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

BACKGROUND = "background"
UNMAPPED_CHOICES = ("error", "background")
# NAME:ID, e.g. liver:1.
_CLASS = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*):(\d+)$")


def parse_class(text: str) -> tuple[str, int]:
    """Parse ``NAME:ID`` (e.g. ``liver:1``) into ``("liver", 1)``.

    Raises:
        ConfigError: not of that form.
    """
    match = _CLASS.match(text.strip())
    if not match:
        raise ConfigError(f"'{text}' is not NAME:ID (e.g. liver:1); names start with a letter")
    return match.group(1), int(match.group(2))


@dataclass(frozen=True)
class LabelMap:
    """How the integer values of source label files become class ids.

    Attributes:
        values: source value -> (class name, class id). Source value 0 is background unless
            mapped explicitly. Several source values may share one class (they are merged).

    Example:
        >>> m = LabelMap.parse(["200=myocardium:2", "500=lv:3", "600=rv:1"])
        >>> m.labels
        {'background': 0, 'rv': 1, 'myocardium': 2, 'lv': 3}
    """

    values: Mapping[int, tuple[str, int]]

    @classmethod
    def parse(cls, items: Iterable[str]) -> LabelMap:
        """Parse ``SRC=NAME:ID`` items (the ``--map`` option).

        Raises:
            ConfigError: malformed item, a source value given twice, one name with two ids or
                one id with two names, a class other than background with id 0.
        """
        values: dict[int, tuple[str, int]] = {}
        for item in items:
            source, sep, target = item.partition("=")
            if not sep or not source.strip().isdigit():
                raise ConfigError(f"--map item '{item}' is not SRC=NAME:ID (e.g. 200=myocardium:2)")
            value = int(source)
            if value in values:
                raise ConfigError(f"--map gives source value {value} twice")
            values[value] = parse_class(target)
        return cls(values)

    def __post_init__(self) -> None:
        by_name: dict[str, int] = {}
        by_id: dict[int, str] = {0: BACKGROUND}
        for value, (name, class_id) in self.values.items():
            if class_id == 0 and name != BACKGROUND:
                raise ConfigError(f"class id 0 is reserved for background; '{name}' (source {value}) needs another id")
            if by_name.setdefault(name, class_id) != class_id:
                raise ConfigError(f"class '{name}' is given two ids ({by_name[name]} and {class_id})")
            if by_id.setdefault(class_id, name) != name:
                raise ConfigError(f"class id {class_id} is given to both '{by_id[class_id]}' and '{name}'")

    @property
    def labels(self) -> dict[str, int]:
        """Class name -> id for ``dataset.json``, background included, sorted by id."""
        table = {BACKGROUND: 0}
        table.update({name: class_id for name, class_id in self.values.values()})
        return dict(sorted(table.items(), key=lambda kv: kv[1]))

    def lookup(self) -> dict[int, int]:
        """Source value -> class id, with the implicit ``0 -> background``."""
        table = {0: 0}
        table.update({value: class_id for value, (_, class_id) in self.values.items()})
        return table

    def apply(self, array: np.ndarray, *, unmapped: str = "error", source: str | os.PathLike[str] | None = None) -> np.ndarray:
        """Map source values to class ids.

        Args:
            array: integer source label values, any shape.
            unmapped: ``"error"`` (default) raises on values the map does not name;
                ``"background"`` sets them to 0.
            source: the file the values came from, for the error message.

        Returns:
            int16 array of class ids, same shape.

        Raises:
            InputError: values not in the map when ``unmapped == "error"``.
        """
        import numpy as np

        if unmapped not in UNMAPPED_CHOICES:
            raise ConfigError(f"unmapped must be one of {UNMAPPED_CHOICES}, got {unmapped!r}")
        table = self.lookup()
        array = np.asarray(array)
        present = list(value_counts(array))
        missing = [v for v in present if v not in table]
        if missing and unmapped == "error":
            known = ", ".join(str(v) for v in sorted(table))
            raise InputError(
                source,
                f"label values {short_list(missing)} are not in the label map (mapped: {known}); "
                "add them to --map or pass --unmapped background",
            )
        if not present:
            return np.zeros(array.shape, dtype=np.int16)
        if present[0] >= 0 and present[-1] < 1 << 16:
            # A lookup table indexed by the source value: linear time, unlike a sort.
            lut = np.zeros(present[-1] + 1, dtype=np.int16)
            for v in present:
                lut[v] = table.get(v, 0)
            return lut[array]
        keys = np.array(present)
        ids = np.array([table.get(v, 0) for v in present], dtype=np.int16)
        return ids[np.searchsorted(keys, array)]

    def to_json(self) -> dict[str, str]:
        """``{"200": "myocardium:2", ...}`` for provenance in ``dataset.json``."""
        return {str(v): f"{name}:{class_id}" for v, (name, class_id) in sorted(self.values.items())}


def short_list(values: Sequence[Any], limit: int = 8) -> str:
    """``[a, b, c, ...]`` showing at most ``limit`` values, for error messages."""
    shown = ", ".join(str(v) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"


def value_counts(array: np.ndarray) -> dict[int, int]:
    """Label value -> voxel count, sorted by value (non-negative integer labels)."""
    import numpy as np

    flat = np.asarray(array).ravel()
    if flat.size and 0 <= int(flat.min()) and int(flat.max()) < 1 << 16:
        counts = np.bincount(flat.astype(np.int64, copy=False))
        present = np.flatnonzero(counts)
        return dict(zip(present.tolist(), counts[present].tolist()))
    values, counts = np.unique(flat, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))
