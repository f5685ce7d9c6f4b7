"""Case ids, file discovery and the train/test split.

Only the standard library is imported at module level (see :mod:`data_tools._common`).
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from data_tools._common.labels import short_list
from jointreg.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

# What a final case id may look like: it becomes part of file names.
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key that orders ``image_2`` before ``image_10``."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text))


def make_case_ids(raw_ids: Iterable[str], prefix: str = "") -> dict[str, str]:
    """Final case ids for raw ids taken from file or folder names.

    When every raw id is a number, numbers are zero-padded to a common width (at least 3) so
    that case ids sort like the numbers: ``{"3": "003", "12": "012"}``. ``prefix`` is put in front
    of every id (``chaos_`` gives ``chaos_003``).

    Raises:
        ConfigError: an id with characters other than letters, digits, ``._-``, or two raw ids
            that give the same final id (``3`` and ``003``).
    """
    raw = list(raw_ids)
    if raw and all(r.isdigit() for r in raw):
        width = max(3, max(len(str(int(r))) for r in raw))
        formatted = {r: f"{prefix}{int(r):0{width}d}" for r in raw}
    else:
        formatted = {r: f"{prefix}{r}" for r in raw}
    seen: dict[str, str] = {}
    for r, case in formatted.items():
        if not _CASE_ID.match(case):
            raise ConfigError(
                f"case id '{case}' (from '{r}') may only hold letters, digits, '.', '_' and '-' "
                "and must start with a letter or digit; use --case-prefix or rename the files"
            )
        if case in seen:
            raise ConfigError(f"'{seen[case]}' and '{r}' both give case id '{case}'")
        seen[case] = r
    return formatted


def match_glob(pattern: str, *, what: str = "files", folders: bool = False) -> dict[str, Path]:
    """Expand a glob with exactly one ``*`` and key each match by the text the ``*`` matched.

    ``data/image_*.nii.gz`` matching ``data/image_3.nii.gz`` gives ``{"3": Path(...)}``; the
    ``*`` may also stand for a folder (``data/*/t2.nii.gz``). When the ``*`` ends the pattern
    (``data/image_*``), the NIfTI suffix is dropped from the id and non-NIfTI files are skipped.
    With ``folders=True`` only folders match (``CHAOS/MR/*/T2SPIR``).

    Raises:
        ConfigError: the pattern has no ``*``, several, or other wildcards.
        InputError: the folder does not exist, or nothing matches.
    """
    from jointreg.data.nifti import is_nifti, strip_nifti_suffix

    pattern = os.path.expanduser(str(pattern))
    if pattern.count("*") != 1 or any(c in pattern for c in "?["):
        raise ConfigError(
            f"--{what} pattern '{pattern}' must contain exactly one '*' (standing for the case id) "
            "and no other wildcard; quote it so that the shell does not expand it"
        )
    head, tail = pattern.split("*")
    fixed_dir = Path(head).parent if not head.endswith(os.sep) else Path(head)
    if not fixed_dir.is_dir():
        raise InputError(fixed_dir, f"folder not found (from --{what} '{pattern}')")
    regex = re.compile(re.escape(head) + r"(.+)" + re.escape(tail) + r"\Z")
    found: dict[str, Path] = {}
    for path in sorted(glob.glob(pattern)):
        match = regex.match(path)
        if not match or not (Path(path).is_dir() if folders else Path(path).is_file()):
            continue
        key = match.group(1)
        if not tail and not folders:
            if not is_nifti(path):
                logger.debug("skipping non-NIfTI file %s", path)
                continue
            key = strip_nifti_suffix(key)
        found[key] = Path(path)
    if not found:
        raise InputError(pattern, f"matches no {'folder' if folders else 'file'} (--{what})")
    return dict(sorted(found.items(), key=lambda kv: natural_key(kv[0])))


def pair_files(images: Mapping[str, Path], labels: Mapping[str, Path]) -> list[str]:
    """Raw ids present in both mappings, in natural order.

    Raises:
        InputError: an image without a label or a label without an image, naming the file.
    """
    lonely_images = [images[k] for k in images if k not in labels]
    lonely_labels = [labels[k] for k in labels if k not in images]
    if lonely_images:
        more = f" (and {len(lonely_images) - 1} more)" if len(lonely_images) > 1 else ""
        raise InputError(lonely_images[0], f"image has no matching label file{more}")
    if lonely_labels:
        more = f" (and {len(lonely_labels) - 1} more)" if len(lonely_labels) > 1 else ""
        raise InputError(lonely_labels[0], f"label file has no matching image{more}")
    return sorted(images, key=natural_key)


def split_cases(
    cases: Sequence[str],
    *,
    test_cases: Sequence[str] = (),
    test_fraction: float = 0.0,
    seed: int = 0,
    aliases: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Assign every case to ``"Tr"`` or ``"Ts"``.

    Args:
        cases: final case ids.
        test_cases: ids for the test split; final ids or raw ids (via ``aliases``).
        test_fraction: fraction of cases drawn at random for the test split (rounded, at least
            one when > 0); exclusive with ``test_cases``.
        seed: seed of the random draw; the same seed gives the same split.
        aliases: raw id -> final id, so that ``--test-cases 3`` finds ``chaos_003``.

    Returns:
        case -> ``"Tr"`` | ``"Ts"``, in the order of ``cases``.

    Raises:
        ConfigError: both options, an unknown test case, a fraction outside [0, 1), or a split
            that leaves no training case.
    """
    import numpy as np

    aliases = dict(aliases or {})
    split = {case: "Tr" for case in cases}
    if test_cases and test_fraction:
        raise ConfigError("give --test-cases or --test-fraction, not both")
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    chosen: list[str] = []
    if test_cases:
        for name in test_cases:
            case = name if name in split else aliases.get(name)
            if case is None:
                raise ConfigError(f"--test-cases: unknown case '{name}' (cases: {short_list(list(cases))})")
            chosen.append(case)
    elif test_fraction:
        count = max(1, int(round(test_fraction * len(cases))))
        order = np.random.default_rng(seed).permutation(len(cases))
        chosen = [sorted(cases)[i] for i in order[:count]]
    for case in chosen:
        split[case] = "Ts"
    if cases and all(s == "Ts" for s in split.values()):
        raise ConfigError("the test split would take every case; keep at least one for training")
    return split


CHALLENGE_SPLITS = {"training": "Tr", "testing": "Ts"}


def find_patient_folders(root: str | Path, split: str, *, database: str, patients, source: str,
                         pattern: str) -> dict[Path, str]:
    """Patient folders of a challenge layout (ACDC, CAMUS), each with its split (``"Tr"``/``"Ts"``).

    Args:
        root: the ``database`` folder, its parent, the folder holding ``training/`` and
            ``testing/``, or a folder of patient folders.
        split: ``"all"``, ``"training"`` or ``"testing"``.
        database: the name of the folder the challenge ships its data in (``database``,
            ``database_nifti``); entered when ``root`` holds it.
        patients: ``folder -> sorted patient folders in it``.
        source, pattern: the challenge's and its patient folders' names, for messages.

    Raises:
        ConfigError: an unknown ``split``.
        InputError: no patient folders where expected.
    """
    if split not in ("all", *CHALLENGE_SPLITS):
        raise ConfigError(f"--split must be all, training or testing, got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "folder not found")
    if (root / database).is_dir() and not patients(root) and not any((root / f).is_dir() for f in CHALLENGE_SPLITS):
        root = root / database
    official = [f for f in CHALLENGE_SPLITS if (root / f).is_dir()]
    if not official:
        if split != "all":
            raise InputError(root, f"has no {split}/ folder (asked for by --split)")
        found = patients(root)
        if not found:
            raise InputError(root, f"holds no {source} {pattern} folders and no training/ or testing/ folder")
        return {p: "Tr" for p in found}
    result: dict[Path, str] = {}
    for folder in official if split == "all" else [split]:
        if not (root / folder).is_dir():
            raise InputError(root / folder, "folder not found (asked for by --split)")
        found = patients(root / folder)
        if not found:
            raise InputError(root / folder, f"holds no {pattern} folders")
        result.update({p: CHALLENGE_SPLITS[folder] for p in found})
    return result
