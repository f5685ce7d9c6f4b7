"""Helpers shared by the converters: label maps, case ids, globs, splits and the output dataset.

Every converter turns some raw layout into the canonical dataset (see
:mod:`jointreg.data.dataset`) the same way:

1. check the output folder before reading anything (:func:`check_new_output`);
2. find the cases and give them sortable ids (:func:`match_glob`, :func:`make_case_ids`);
3. choose the test cases (:func:`split_cases`);
4. write every case through a :class:`DatasetBuilder` inside :func:`dataset_output`, which builds
   the folder under a temporary name, so that a failure on the last case leaves nothing behind,
   and writes the final ``dataset.json`` (labels, ``numTraining``) once every case is in.

Only the standard library is imported at module level: ``jointreg --help`` imports every
converter to list it, and must stay fast. numpy and friends are imported inside functions.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jointreg.errors import ConfigError, InputError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from jointreg.data.dataset import DatasetSpec
    from jointreg.data.nifti import Volume

logger = logging.getLogger(__name__)

BACKGROUND = "background"
UNMAPPED_CHOICES = ("error", "background")
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_CLASS = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*):(\d+)$")


# --------------------------------------------------------------------------------------------
# label maps
# --------------------------------------------------------------------------------------------
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
                f"label values {_short_list(missing)} are not in the label map (mapped: {known}); "
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


def _short_list(values: Sequence[Any], limit: int = 8) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"


# --------------------------------------------------------------------------------------------
# case ids and file discovery
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# train / test split
# --------------------------------------------------------------------------------------------
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
                raise ConfigError(f"--test-cases: unknown case '{name}' (cases: {_short_list(list(cases))})")
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


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------
def check_new_output(out: str | os.PathLike[str], *, overwrite: bool, inputs: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """Refuse an output folder that exists (unless ``overwrite``) or that holds an input.

    Called before any input is read, so that a mistake costs nothing.

    Raises:
        InputError: ``out`` exists without ``overwrite``, is a file, or contains an input.
    """
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise InputError(out, "exists and is not a folder")
        if not overwrite:
            raise InputError(out, "already exists; pass --overwrite to replace it")
        resolved = out.resolve()
        for item in inputs:
            source = Path(item).resolve()
            if source == resolved or resolved in source.parents:
                raise InputError(out, f"contains the input {item}; --overwrite would delete it")
    return out


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


@dataclass
class DatasetBuilder:
    """Writes cases into a dataset folder and keeps what ``dataset.json`` needs.

    Use it through :func:`dataset_output`. Images are stored as float32, labels as integers,
    both with the geometry of ``reference`` (NIfTI sources: header kept) or ``affine``.

    An unlabelled training case gets a label that is ``ignore`` everywhere (nnU-Net's label for
    unknown voxels, the highest id), as ``jointreg sparsify`` writes for unlabelled volumes: the
    dataset stays valid and training treats the case as unannotated. Unlabelled test cases get
    no label file.

    Attributes:
        root: the (temporary) dataset folder.
        modality: channel name for ``dataset.json`` (``CT``, ``MR``, ...); may be set after
            construction, must be set before :meth:`finish`.
        labels: class name -> id when known in advance; every written label is checked against
            it. ``None``: take the values found in the labels, named ``label_<value>``.
    """

    root: Path
    modality: str | None
    name: str
    labels: Mapping[str, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: {"Tr": 0, "Ts": 0})
    seen_values: set[int] = field(default_factory=set)
    voxels: dict[int, int] = field(default_factory=dict)
    ignore: int | None = None

    def __post_init__(self) -> None:
        from jointreg.data.dataset import Dataset

        self._dataset = Dataset.create(self.root, self._spec())

    def _spec(self) -> DatasetSpec:
        from jointreg.data.dataset import IGNORE_NAME, DatasetSpec

        if self.labels is not None:
            labels = dict(self.labels)
        else:
            labels = {BACKGROUND: 0}
            labels.update({f"label_{v}": v for v in sorted(self.seen_values) if v != 0})
        if self.ignore is not None:
            labels[IGNORE_NAME] = self.ignore
        return DatasetSpec({"0": self.modality or ""}, labels, self.counts["Tr"], name=self.name, extra=self.extra)

    def add(
        self,
        case: str,
        image: np.ndarray,
        *,
        reference: Volume | None = None,
        affine: np.ndarray | None = None,
        label: np.ndarray | None = None,
        split: str = "Tr",
        label_source: str | os.PathLike[str] | None = None,
    ) -> None:
        """Write one case.

        Args:
            case: final case id.
            image: ``(X, Y, Z)`` intensities.
            reference: volume whose affine and header to copy (or give ``affine``).
            affine: 4×4 voxel-to-RAS affine in mm when there is no reference.
            label: ``(X, Y, Z)`` class ids, or ``None`` for an unlabelled case (``ignore``
                everywhere in the training split, no label file in the test split).
            split: ``"Tr"`` or ``"Ts"``.
            label_source: the file the label came from, for error messages.

        Raises:
            InputError: label values not declared in ``labels``, or a shape mismatch.
        """
        import numpy as np

        given = label is not None
        if label is None and split == "Tr":
            if self.ignore is None:
                self.ignore = max([0, *self.seen_values, *(self.labels or {}).values()]) + 1
            label = np.full(image.shape, self.ignore, dtype=np.int16)
        if label is not None:
            if tuple(label.shape) != tuple(image.shape):
                raise InputError(label_source, f"label shape {label.shape} differs from image shape {image.shape}")
            counts = value_counts(label)
            if given:
                if self.ignore is not None and max(counts) >= self.ignore:
                    raise ValueError("a labelled case after an unlabelled one with a lower ignore id; convert them separately")
                if self.labels is not None:
                    declared = set(self.labels.values())
                    bad = [v for v in counts if v not in declared]
                    if bad:
                        raise InputError(label_source, f"label values {_short_list(bad)} are not declared (declared: {sorted(declared)})")
                self.seen_values.update(counts)
            for v, c in counts.items():
                self.voxels[v] = self.voxels.get(v, 0) + c
        self._dataset.write_image(case, image, reference=reference, affine=affine if reference is None else None, split=split)
        if label is not None:
            self._dataset.write_label(case, label, reference=reference, affine=affine if reference is None else None, split=split)
        self.counts[split] += 1

    def finish(self) -> DatasetSpec:
        """Write the final ``dataset.json``; returns its spec."""
        from jointreg.data.dataset import write_spec

        if sum(self.counts.values()) == 0:
            raise InputError(None, "no case was converted")
        if not self.modality:
            raise ConfigError("a modality is needed (e.g. --modality CT or MR)")
        conversion = self.extra.setdefault("conversion", {})
        conversion["cases_per_split"] = dict(self.counts)
        if self.voxels:
            conversion["label_voxels"] = {str(v): c for v, c in sorted(self.voxels.items())}
        spec = self._spec()
        write_spec(self.root, spec)
        return spec


@contextlib.contextmanager
def dataset_output(
    out: str | os.PathLike[str],
    *,
    modality: str | None,
    name: str = "",
    labels: Mapping[str, int] | None = None,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Iterator[DatasetBuilder]:
    """Build a dataset under a temporary name; it appears at ``out`` only when complete.

    ``modality`` may be ``None`` at first (the DICOM converter learns it from the files) as
    long as it is set on the builder before the block ends.

    Example:
        >>> with dataset_output(out, modality="MR", labels=lmap.labels) as ds:   # doctest: +SKIP
        ...     ds.add("case001", image, reference=volume, label=label)
    """
    from jointreg.utils.atomic import atomic_dir

    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        builder = DatasetBuilder(tmp, modality, name or out.name, labels, dict(extra or {}))
        yield builder
        builder.finish()


def describe(out: str | os.PathLike[str]) -> str:
    """A short description of a converted dataset (from its ``dataset.json``), for the CLI."""
    from jointreg.data.dataset import read_spec

    spec = read_spec(out)
    conversion = spec.extra.get("conversion", {}) if isinstance(spec.extra, Mapping) else {}
    counts = conversion.get("cases_per_split", {"Tr": spec.num_training, "Ts": 0})
    names = {str(v): n for n, v in spec.labels.items()}
    text = (
        f"wrote {out}: {counts.get('Tr', 0)} training case(s), {counts.get('Ts', 0)} test case(s), "
        f"modality {spec.modality}, labels {dict(spec.labels)}"
    )
    voxels = conversion.get("label_voxels")
    if voxels:
        text += "\nlabelled voxels: " + ", ".join(f"{names.get(v, v)}={c}" for v, c in voxels.items())
    return text


# --------------------------------------------------------------------------------------------
# shared command-line options
# --------------------------------------------------------------------------------------------
def add_output_arguments(parser: argparse.ArgumentParser, *, modality_required: bool = True) -> None:
    """``--out``, ``--modality``, ``--name``, ``--case-prefix``, split options, ``--overwrite``."""
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="dataset folder to create")
    parser.add_argument(
        "--modality", required=modality_required, metavar="NAME",
        help="channel name written to dataset.json: CT (HU windowing) or MR/T1/T2/echo (percentile "
        "normalisation)" + ("" if modality_required else "; default: the DICOM Modality tag"),
    )
    parser.add_argument("--name", default="", help="dataset name for dataset.json (default: the folder name)")
    parser.add_argument("--case-prefix", default="", metavar="P", help="put P in front of every case id (e.g. chaos_)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--test-cases", nargs="+", default=[], metavar="ID", help="cases for imagesTs/labelsTs")
    group.add_argument("--test-fraction", type=float, default=0.0, metavar="F", help="random fraction of cases for the test split")
    parser.add_argument("--seed", type=int, default=0, help="seed of --test-fraction's draw (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def add_label_map_arguments(parser: argparse.ArgumentParser) -> None:
    """``--map SRC=NAME:ID ...`` and ``--unmapped error|background``."""
    parser.add_argument(
        "--map", nargs="+", action="extend", default=[], metavar="SRC=NAME:ID",
        help="source label value -> class name and id, e.g. 200=myocardium:2 500=lv:3 600=rv:1; "
        "0 is background unless mapped; without --map the values are kept (named label_<value>)",
    )
    parser.add_argument(
        "--unmapped", choices=UNMAPPED_CHOICES, default="error",
        help="source values missing from --map: stop with an error (default) or make them background",
    )


def label_map_from_args(args: argparse.Namespace) -> LabelMap | None:
    return LabelMap.parse(args.map) if args.map else None
