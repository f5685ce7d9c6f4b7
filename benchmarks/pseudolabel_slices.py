"""Where registration pseudo-labels go wrong, slice by slice, and two label edits measured on them.

For a ``jointreg pseudolabel`` output (``PL/labelsTr``) of a sparse dataset (``DATASET``, with
``labelsTr`` holding the annotated slices and ``labelsTr_full`` the complete labels), one class:

* ``profile``: per volume and slice, the class's pixel count in the complete label, in the
  pseudo-label and in both; the slices the propagation stopped at (first and last with the class)
  and how many slices with the class lie beyond them. Shows whether the propagated structure
  shrinks where the organ does, and what the stop leaves out.
* ``gate``: 3D Dice of the pseudo-labels before and after an intensity gate: pixels of the class
  whose intensity lies outside the ``q``-th to ``(100 - q)``-th percentile of the class on the
  volume's annotated slice are dropped, then a 3 × 3 in-plane opening (one line per ``q``).
* ``uncertain``: writes a copy of the pseudo-label dataset in which, beyond each stop, the last
  propagated footprint dilated by ``--radius`` pixels is ``ignore`` for ``--slices`` slices
  (background beyond), for training a segmentor on labels that do not claim what the stop cannot
  know. The images and the test split are linked, not copied.

Each prints one JSON object. Run::

    .venv/bin/python benchmarks/pseudolabel_slices.py profile PL DATASET --class-id 1
    .venv/bin/python benchmarks/pseudolabel_slices.py gate PL DATASET --class-id 1 --percentiles 0 0.1 1 2 5 10
    .venv/bin/python benchmarks/pseudolabel_slices.py uncertain PL DATASET --class-id 1 --radius 12 --slices 8 --out OUT

The slicing axis is the last array axis (the through-plane axis of the prepared volumes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from jointreg.data.dataset import IGNORE_NAME, Dataset  # noqa: E402
from jointreg.errors import JointregError  # noqa: E402
from jointreg.metrics.overlap import dice  # noqa: E402


def annotated_slices(sparse: np.ndarray, ignore: int) -> list[int]:
    """Slices (last axis) on which no voxel is ``ignore``."""
    return [z for z in range(sparse.shape[-1]) if not (sparse[..., z] == ignore).any()]


def slice_profile(pseudo: np.ndarray, truth: np.ndarray) -> dict:
    """Per-slice pixel counts of two masks ``(X, Y, Z)``, the pseudo-label's extent and the
    slices with the structure that lie beyond it."""
    areas = [(int(t), int(p), int(b)) for t, p, b in zip(truth.sum((0, 1)), pseudo.sum((0, 1)), (truth & pseudo).sum((0, 1)))]
    present = [z for z, (_, p, _) in enumerate(areas) if p]
    if not present:
        return {"slices": areas, "extent": None, "missed_below": None, "missed_above": None}
    lo, hi = present[0], present[-1]
    return {"slices": areas, "extent": [lo, hi],
            "missed_below": sum(1 for z in range(lo) if areas[z][0]),
            "missed_above": sum(1 for z in range(hi + 1, len(areas)) if areas[z][0])}


def gated(pseudo: np.ndarray, image: np.ndarray, reference: np.ndarray, q: float) -> np.ndarray:
    """``pseudo`` without the pixels whose intensity is outside the ``q``..``100 - q``
    percentiles of ``image[reference]``, then opened in-plane by a 3 × 3 square (``q = 0``:
    unchanged)."""
    if q <= 0:
        return pseudo
    from scipy import ndimage

    lo, hi = np.percentile(image[reference], [q, 100.0 - q])
    kept = pseudo & (image >= lo) & (image <= hi)
    return ndimage.binary_opening(kept, np.ones((3, 3, 1), bool))


def uncertain_beyond_stop(label: np.ndarray, class_id: int, ignore: int, radius: int, slices: int) -> np.ndarray:
    """``label`` with the footprint of the class's first and last slice, dilated by ``radius``
    pixels, set to ``ignore`` on the ``slices`` slices beyond each end."""
    from scipy import ndimage

    present = [z for z in range(label.shape[-1]) if (label[..., z] == class_id).any()]
    out = label.copy()
    if not present:
        return out
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    disk = yy ** 2 + xx ** 2 <= radius ** 2
    for end, beyond in ((present[0], range(max(0, present[0] - slices), present[0])),
                        (present[-1], range(present[-1] + 1, min(label.shape[-1], present[-1] + 1 + slices)))):
        footprint = ndimage.binary_dilation(label[..., end] == class_id, disk)
        for z in beyond:
            out[..., z][footprint] = ignore
    return out


def _volumes(pl: Path, dataset: Path):
    source, pseudo = Dataset.open(dataset), Dataset.open(pl)
    ignore = source.spec.ignore_label
    if ignore is None:
        raise JointregError(f"{dataset / 'dataset.json'}: no 'ignore' label: not a sparse dataset")
    for case in pseudo.cases():
        yield (case, source, pseudo.read_label(case).array, source.read_label(case).array,
               source.read_label(case, full=True).array, ignore)


def run_profile(args) -> dict:
    out = {}
    for case, _, pseudo, sparse, full, ignore in _volumes(args.pl, args.dataset):
        out[case] = {"annotated": annotated_slices(sparse, ignore),
                     **slice_profile(pseudo == args.class_id, full == args.class_id)}
    return out


def run_gate(args) -> dict:
    scores: dict[str, dict[str, float]] = {}
    for case, source, pseudo, sparse, full, ignore in _volumes(args.pl, args.dataset):
        image = source.read_image(case).array
        reference = sparse == args.class_id
        scores[case] = {str(q): float(dice(gated(pseudo == args.class_id, image, reference, q), full == args.class_id))
                      for q in args.percentiles}
    means = {str(q): float(np.mean([d[str(q)] for d in scores.values()])) for q in args.percentiles}
    return {"dice": scores, "mean": means}


def run_uncertain(args) -> dict:
    pseudo_ds = Dataset.open(args.pl)
    labels = dict(pseudo_ds.spec.labels)
    ignore = labels.setdefault(IGNORE_NAME, max(labels.values()) + 1)
    if args.out.exists():
        raise JointregError(f"{args.out}: exists; give a new folder")
    out = Dataset.create(args.out, pseudo_ds.spec.replace(labels=labels))
    for name in ("imagesTr", "imagesTs", "labelsTs"):
        if (args.pl / name).exists():
            target = args.out / name
            if target.exists():
                target.rmdir()
            target.symlink_to((args.pl / name).resolve())
    ignored = {}
    for case in pseudo_ds.cases():
        label = pseudo_ds.read_label(case)
        edited = uncertain_beyond_stop(label.array, args.class_id, ignore, args.radius, args.slices)
        out.write_label(case, edited, reference=label)
        ignored[case] = int((edited == ignore).sum())
    return {"out": str(args.out), "ignore": ignore, "ignored_voxels": ignored}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("profile", "per-slice areas of truth and pseudo-label"),
                            ("gate", "Dice of the pseudo-labels after an intensity gate"),
                            ("uncertain", "a copy with the slices beyond each stop ignored")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("pl", type=Path, help="jointreg pseudolabel output folder")
        p.add_argument("dataset", type=Path, help="the sparse dataset it completed (labelsTr, labelsTr_full)")
        p.add_argument("--class-id", type=int, default=1, help="the class, as an id of both datasets (default: 1)")
        if name == "gate":
            p.add_argument("--percentiles", type=float, nargs="+", default=[0, 0.1, 1, 2, 5, 10],
                           help="gates to measure: keep the q..100-q percentiles (0: no gate)")
        if name == "uncertain":
            p.add_argument("--radius", type=int, default=12, help="footprint dilation in pixels (default: 12)")
            p.add_argument("--slices", type=int, default=8, help="slices beyond each stop to ignore (default: 8)")
            p.add_argument("--out", type=Path, required=True, help="new dataset folder")
    args = parser.parse_args(argv)
    try:
        result = {"profile": run_profile, "gate": run_gate, "uncertain": run_uncertain}[args.command](args)
    except JointregError as exc:
        print(f"pseudolabel_slices.py: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
