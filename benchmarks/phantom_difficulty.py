"""How hard is slice-to-slice label propagation on the phantoms, compared with real data?

The figure is the Dice of *copying* one annotated slice's label, unchanged, onto the other slices
of its volume (the identity "registration"), measured as in docs/design.md:

* per volume, the axial (axis 2) slice with the largest structure area is the moving slice;
* every other slice that holds the structure, or lies within ±6 slices of the moving one, is a
  fixed slice;
* each pair scores the Dice of the moving mask against the fixed mask (a fixed slice without the
  structure scores 0 against the non-empty moving mask);
* ``dice_mean`` is the mean over all pairs of all volumes, ``dice_mean_structure_slices`` the
  mean over the pairs whose fixed slice holds the structure.

The echo cine loops (``echo-a4c``, frames on axis 2) follow the echo datasets' setting instead:
the end-diastolic (ED) frame, the largest LV area, is the annotated one; its label is copied onto
every other frame and each class scores its Dice per frame. ``dice_ed_to_es`` is the mean over
volumes of the ED → ES pair (the smallest LV area), the pair CAMUS and EchoNet evaluate.

Run (prints JSON; ``--out`` also writes it atomically; ``--kinds`` restricts the phantoms)::

    .venv/bin/python benchmarks/phantom_difficulty.py --data ../shared/data \\
        --out results/phantom_difficulty.json
    .venv/bin/python benchmarks/phantom_difficulty.py --kinds echo-a4c --cases 16

Real data are read from ``--data`` when present (``chaos_t2``: liver = 1; ``ms_cmr``: LV
myocardium = 200, LV blood pool = 500) and reported as skipped otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from jointreg.data.phantoms import case_seed, ed_es_frames, make_phantom  # noqa: E402

WINDOW = 6
KINDS = ("liver-ct", "cardiac-mr", "echo-a4c")
OFFSETS = 10  # the per-offset profile reported, ±1..±OFFSETS


def slice_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two 2D boolean masks; two empty masks agree perfectly (1.0)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def copy_label_pairs(mask: np.ndarray, *, axis: int = 2, window: int = WINDOW) -> list[tuple[int, float, bool]]:
    """Copy-the-label pairs of one volume.

    Args:
        mask: ``(X, Y, Z)`` boolean structure mask.
        axis: slicing axis.
        window: fixed slices also include every slice within ``±window`` of the moving one.

    Returns:
        ``(offset, dice, fixed_has_structure)`` per fixed slice, offset = fixed − moving index;
        empty when the structure is absent.
    """
    mask = np.moveaxis(np.asarray(mask, dtype=bool), axis, 0)
    areas = mask.reshape(mask.shape[0], -1).sum(axis=1)
    if areas.max() == 0:
        return []
    moving = int(np.argmax(areas))
    pairs = []
    for k in range(mask.shape[0]):
        if k != moving and (areas[k] > 0 or abs(k - moving) <= window):
            pairs.append((k - moving, slice_dice(mask[moving], mask[k]), bool(areas[k] > 0)))
    return pairs


def summarise(pairs_per_volume: list[list[tuple[int, float, bool]]], **info) -> dict:
    pairs = [p for v in pairs_per_volume for p in v]
    dice = np.array([d for _, d, _ in pairs])
    with_structure = np.array([d for _, d, has in pairs if has])
    by_offset = {}
    for off in range(-OFFSETS, OFFSETS + 1):
        values = [d for o, d, _ in pairs if o == off]
        if off and values:
            by_offset[str(off)] = round(float(np.mean(values)), 3)
    return {
        **info,
        "volumes": len(pairs_per_volume),
        "pairs": len(pairs),
        "dice_mean": round(float(dice.mean()), 4),
        "dice_mean_structure_slices": round(float(with_structure.mean()), 4),
        "dice_per_volume": [round(float(np.mean([d for _, d, _ in v])), 3) for v in pairs_per_volume],
        "dice_by_offset": by_offset,
    }


def phantom_figures(kind: str, structures: dict[str, int], cases: int, seed: int) -> dict[str, dict]:
    per_structure: dict[str, list] = {name: [] for name in structures}
    start = time.perf_counter()
    for i in range(cases):
        label = make_phantom(kind, case_seed(seed, i)).label
        for name, value in structures.items():
            per_structure[name].append(copy_label_pairs(label == value))
    seconds = time.perf_counter() - start
    return {
        name: summarise(pairs, source=f"{kind} phantom", structure=f"{name} (label {structures[name]})",
                        seed=seed, generate_seconds=round(seconds, 2))
        for name, pairs in per_structure.items()
    }


def ed_copy_pairs(label: np.ndarray, value: int, ed: int) -> list[tuple[int, float, bool]]:
    """Copy the ED frame's mask of class ``value`` onto every other frame (axis 2).

    Returns:
        ``(offset, dice, fixed_has_structure)`` per other frame, offset = frame − ED index.
    """
    mask = np.asarray(label) == value
    return [(k - ed, slice_dice(mask[..., ed], mask[..., k]), bool(mask[..., k].any()))
            for k in range(mask.shape[2]) if k != ed]


def frame_figures(kind: str, structures: dict[str, int], cases: int, seed: int, lv: int = 1) -> dict[str, dict]:
    """ED-to-every-frame label copying on cine-loop phantoms, per class (see the module docstring)."""
    per_structure: dict[str, list] = {name: [] for name in structures}
    to_es: dict[str, list[float]] = {name: [] for name in structures}
    start = time.perf_counter()
    for i in range(cases):
        label = make_phantom(kind, case_seed(seed, i)).label
        ed, es = ed_es_frames(label, lv)
        for name, value in structures.items():
            pairs = ed_copy_pairs(label, value, ed)
            per_structure[name].append(pairs)
            to_es[name].append(next(d for off, d, _ in pairs if off == es - ed))
    seconds = time.perf_counter() - start
    return {
        name: {
            **summarise(pairs, source=f"{kind} phantom", structure=f"{name} (label {structures[name]})",
                        seed=seed, generate_seconds=round(seconds, 2), moving="ED frame (largest lv area)"),
            "dice_ed_to_es": round(float(np.mean(to_es[name])), 4),
        }
        for name, pairs in per_structure.items()
    }


def real_figures(folder: Path, structures: dict[str, int]) -> dict[str, dict]:
    if not folder.is_dir():
        return {name: {"source": str(folder), "skipped": "folder not found"} for name in structures}
    import nibabel as nib

    per_structure: dict[str, list] = {name: [] for name in structures}
    files = sorted(folder.glob("label_*.nii.gz"), key=lambda p: int(p.name[6:-7]))
    for path in files:
        label = np.rint(np.asarray(nib.load(str(path)).dataobj)).astype(np.int32)
        for name, value in structures.items():
            per_structure[name].append(copy_label_pairs(label == value))
    return {
        name: summarise(pairs, source=str(folder), structure=f"{name} (label {structures[name]})",
                        files=[p.name for p in files])
        for name, pairs in per_structure.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                        help="folder with chaos_t2/ and ms_cmr/ (default ../shared/data)")
    parser.add_argument("--cases", type=int, default=16, help="phantom volumes per kind (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed, as `jointreg prepare phantom --seed`")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS),
                        help="phantom kinds to measure, with their real-data rows (default: all)")
    args = parser.parse_args(argv)

    result: dict = {}
    if {"liver-ct", "cardiac-mr"} & set(args.kinds):
        result["protocol"] = (
            "copy the label of the largest-area axial slice unchanged onto every slice that holds the "
            f"structure or lies within ±{WINDOW} slices; Dice per pair (empty fixed slice vs non-empty copy "
            "= 0); mean over pairs"
        )
    if "liver-ct" in args.kinds:
        liver_phantom = phantom_figures("liver-ct", {"liver": 1}, args.cases, args.seed)["liver"]
        chaos = real_figures(args.data / "chaos_t2", {"liver": 1})["liver"]
        result["liver"] = {"liver-ct phantom": liver_phantom, "chaos_t2": chaos}
    if "cardiac-mr" in args.kinds:
        cardiac_phantom = phantom_figures("cardiac-mr", {"myocardium": 2, "lv": 3}, args.cases, args.seed)
        ms_cmr = real_figures(args.data / "ms_cmr", {"myocardium": 200, "lv": 500})
        result["cardiac (primary structure: LV myocardium)"] = {
            "cardiac-mr phantom": cardiac_phantom["myocardium"], "ms_cmr": ms_cmr["myocardium"],
        }
        result["cardiac (LV blood pool)"] = {"cardiac-mr phantom": cardiac_phantom["lv"], "ms_cmr": ms_cmr["lv"]}
    if "echo-a4c" in args.kinds:
        result["echo protocol"] = (
            "copy the ED frame's label (largest lv area) unchanged onto every other frame of the loop; "
            "Dice per frame and class; mean over frames; dice_ed_to_es: the ED -> ES frame pair"
        )
        result["echo (frames of a cine loop)"] = {
            f"echo-a4c phantom, {name}": figures
            for name, figures in frame_figures("echo-a4c", {"lv": 1, "myocardium": 2, "atrium": 3}, args.cases, args.seed).items()
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        from jointreg.utils.atomic import write_text

        write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
