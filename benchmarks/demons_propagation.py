"""Classical peer for registration-only pseudo-labels: SimpleITK demons on the same slice pairs.

Figure (a) of the "registration that earns its place" study (results/chaos_t2_liver_cv.md)
labels each training volume from its annotated slice(s) with `jointreg pseudolabel --mode
registration`. This script does the same with SimpleITK's diffeomorphic demons instead of the
trained network, on the same pairs, so the learned registration has a classical reference:

* **direct**: the nearest annotated slice is registered onto every other slice of its volume
  (jointreg's default pairs) and its label is warped (nearest neighbour);
* **chain**: each slice is registered onto its neighbour one step further from the annotated
  slice and the label propagated so far is warped on (labelprop's composition);
* each with and without jointreg's appearance check (`jointreg.inference.verify`, the default of
  `pseudolabel --mode registration`: a class stops at the first slice where fewer than 60 % of
  its propagated pixels have the annotated class's 5–95th percentile intensities).

Pairs are registered on the training grid of the jointreg recipe (``--size``, default 64², as
`pseudolabel` does with a 64² model) after per-volume percentile normalisation to [0, 1]; the
displacement is resampled to the source grid and applied to the label there, and the 3D labels
are scored at the source resolution with `jointreg evaluate`'s metrics against the full labels.

With ``--run RUN`` the same demons also run *inside* jointreg's own `pseudolabel --mode
registration` (the run's slicing, normalisation and grid, the chain, the check, the gate and, with
``--step-gates``, the gate at every step; refinement off: demons is the optimiser): the network's
interface (``net(moving, fixed).flow``) is served by demons, nothing else changes, so the
variants ``pipeline_step{Q}`` compare with FMIRNet's registration-only labels setting for
setting. Any finished run of the recipe serves (its registration is replaced; an identity run
needs no registration training).

Input: sparse fold datasets as written by `jointreg study` with a ``folds:`` section
(``FOLD/labelsTr`` sparse, ``FOLD/labelsTr_full`` full, ``FOLD/sparsify.json``). Optional
``--compare NAME=REPORT`` adds paired Wilcoxon tests against other per-case reports (per_case.csv
of `jointreg evaluate`) over the same cases.

Usage (SimpleITK is an optional dependency: pip install "jointreg[peers]"):
  .venv/bin/python benchmarks/demons_propagation.py \\
      --folds runs/study_chaos_t2_liver/folds/fold0 runs/study_chaos_t2_liver/folds/fold1 \\
      --classes liver --out runs/demons_chaos --write results/demons_chaos_t2
  # demons inside pseudolabel, without and with the gate at every step:
  .venv/bin/python benchmarks/demons_propagation.py --folds ... --classes liver --out runs/demons_chaos \
      --run runs/study_chaos_t2_liver/iunet-refine_seed0_fold0 --step-gates 0 2
Prints JSON (per variant: pooled Dice / HD95 over the cases, seconds per pair, paired tests).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = (("direct", False), ("direct", True), ("chain", False), ("chain", True))


def _sitk():
    try:
        import SimpleITK as sitk
    except ImportError:
        sys.exit('this benchmark needs SimpleITK: pip install "jointreg[peers]"')
    return sitk


def normalise(volume: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    lo, hi = np.percentile(volume, percentiles)
    return np.clip((volume - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)


class Demons:
    """Diffeomorphic demons between two 2D slices on a ``size`` grid; displacement in source pixels."""

    def __init__(self, size: int, iterations: int = 100, smoothing: float = 1.5):
        sitk = _sitk()
        self.size = size
        self.filter = sitk.DiffeomorphicDemonsRegistrationFilter()
        self.filter.SetNumberOfIterations(iterations)
        self.filter.SetStandardDeviations(smoothing)
        self.filter.SetSmoothDisplacementField(True)
        self.pairs = 0
        self.seconds = 0.0

    def _small(self, image: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        t = torch.from_numpy(image)[None, None]
        return F.interpolate(t, size=(self.size, self.size), mode="bilinear", align_corners=False)[0, 0].numpy()

    def displacement(self, moving: np.ndarray, fixed: np.ndarray) -> np.ndarray:
        """``(2, H, W)`` displacement (rows, columns) in source pixels: warped(x) = moving(x + u(x))."""
        import torch
        import torch.nn.functional as F

        sitk = _sitk()
        start = time.perf_counter()
        field = self.filter.Execute(sitk.GetImageFromArray(self._small(fixed)), sitk.GetImageFromArray(self._small(moving)))
        # SimpleITK arrays are (y, x, component) with components in (x, y) order.
        u = sitk.GetArrayFromImage(field).astype(np.float32)
        u = np.stack([u[..., 1], u[..., 0]])
        h, w = moving.shape
        up = F.interpolate(torch.from_numpy(u)[None], size=(h, w), mode="bilinear", align_corners=False)[0].numpy()
        up[0] *= h / self.size
        up[1] *= w / self.size
        self.pairs += 1
        self.seconds += time.perf_counter() - start
        return up


def warp_nearest(label: np.ndarray, u: np.ndarray) -> np.ndarray:
    h, w = label.shape
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    r = np.clip(np.rint(rows + u[0]), 0, h - 1).astype(np.intp)
    c = np.clip(np.rint(cols + u[1]), 0, w - 1).astype(np.intp)
    return label[r, c]


def propagate(image: np.ndarray, label: np.ndarray, annotated: list[int], method: str, demons: Demons) -> np.ndarray:
    """``(S, H, W)`` labels for every slice from the annotated ones (nearest annotated slice wins)."""
    out = np.zeros_like(label)
    n = image.shape[0]
    for a in annotated:
        out[a] = label[a]
    for s in range(n):
        if s in annotated:
            continue
        a = min(annotated, key=lambda k: (abs(k - s), k))
        if method == "direct":
            out[s] = warp_nearest(label[a], demons.displacement(image[a], image[s]))
    if method == "chain":
        for a in annotated:
            for step in (-1, 1):
                prev, s = a, a + step
                while 0 <= s < n and min(annotated, key=lambda k: (abs(k - s), k)) == a:
                    out[s] = warp_nearest(out[prev], demons.displacement(image[prev], image[s]))
                    prev, s = s, s + step
    return out


def demons_network(demons: Demons):
    """``demons`` behind a registration network's interface: ``net(moving, fixed).flow``
    ``(B, 2, H, W)`` in pixels, one demons registration per pair (on the inputs' own grid)."""
    import torch

    from jointreg.nets.registration.output import RegistrationOutput
    from jointreg.spatial.warp import warp

    class DemonsRegistration(torch.nn.Module):
        def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> RegistrationOutput:
            flows = [torch.from_numpy(demons.displacement(m[0].float().cpu().numpy(), f[0].float().cpu().numpy()))
                     for m, f in zip(moving, fixed)]
            flow = torch.stack(flows).to(moving.device)
            return RegistrationOutput(warped=warp(moving, flow), flow=flow)

    return DemonsRegistration()


def run_pipeline(run_dir: Path, folds: list[Path], classes: list[str], out: Path, iterations: int,
                 step_gates: list[float]) -> dict:
    """Label every fold's training cases with `pseudolabel --mode registration` (its defaults,
    refinement off) and demons as the registration; one output folder of labels per step gate."""
    import jointreg.inference.onnx_runtime as backends
    from jointreg.inference.pseudolabel import pseudolabel_dataset
    from jointreg.inference.pseudolabel_case import PseudolabelSettings
    from jointreg.training.config import load_recipe

    size = load_recipe(run_dir / "recipe.yaml").data.size
    if len(set(size)) != 1:
        sys.exit(f"{run_dir / 'recipe.yaml'}: demons runs on a square grid, got data.size {list(size)}")
    demons = Demons(int(size[0]), iterations)
    network = demons_network(demons)
    original = backends.registration_backend
    backends.registration_backend = lambda net, backend: network
    variants: dict[str, list[tuple[Path, Path]]] = {}
    timing: dict[str, tuple[int, float]] = {}
    try:
        for q in step_gates:
            name = f"pipeline_step{q:g}"
            pairs, seconds = demons.pairs, demons.seconds
            for fold in folds:
                target = out / name / fold.name
                settings = PseudolabelSettings(mode="registration", refine=0, step_gate=q)
                # overwrite: a resumed output would register no pair, and the timing would be empty
                pseudolabel_dataset(run_dir, fold, target, settings=settings, workers=1, overwrite=True, progress=False)
                variants.setdefault(name, []).append((target / "labelsTr", fold))
            timing[name] = (demons.pairs - pairs, demons.seconds - seconds)
    finally:
        backends.registration_backend = original
    return {name: {"report": str(score(predictions, classes, out / f"report_{name}")),
                   "pairs": timing[name][0], "seconds_per_pair": timing[name][1] / max(timing[name][0], 1)}
            for name, predictions in variants.items()}


def score(predictions: list[tuple[Path, Path]], classes: list[str], report: Path) -> Path:
    """Score each ``(labels folder, fold)`` against the fold's full labels (extra cases in a folder
    are not scored); one report over all of them; its per_case.csv returned."""
    from jointreg.metrics.folders import evaluate_folders
    from jointreg.metrics.report import write_report

    rows = []
    for folder, fold in predictions:
        rows.extend(evaluate_folders(folder, fold / "labelsTr_full", labels=fold, classes=classes, progress=False).rows)
    write_report(rows, report, overwrite=True, plots=False)
    return report / "per_case.csv"


def run(folds: list[Path], classes: list[str], out: Path, size: int, iterations: int) -> dict:
    import nibabel as nib

    from jointreg.data.dataset import read_spec
    from jointreg.inference.verify import stop_at_appearance_change

    demons = Demons(size, iterations)
    written: dict[str, list[Path]] = {}
    for fold in folds:
        spec = read_spec(fold / "dataset.json")
        ids = [spec.class_labels[c] for c in classes]
        sparsify = json.loads((fold / "sparsify.json").read_text())
        for case, info in sorted(sparsify["cases"].items()):
            axis = int(info["axis"])
            img_nii = nib.load(next((fold / "imagesTr").glob(f"{case}_0000.nii*")))
            lab_nii = nib.load(next((fold / "labelsTr").glob(f"{case}.nii*")))
            image = normalise(np.moveaxis(np.asarray(img_nii.dataobj, dtype=np.float32), axis, 0))
            sparse = np.moveaxis(np.asarray(lab_nii.dataobj), axis, 0)
            annotated = [int(s) for s in info["slices"]]
            label = np.where(np.isin(sparse, ids), sparse, 0).astype(np.uint8)
            for method, verify in VARIANTS:
                name = f"{method}{'+verify' if verify else ''}"
                if not verify:
                    labels = propagate(image, label, annotated, method, demons)
                    cache = labels
                else:
                    propagated = np.ones(cache.shape, dtype=bool)
                    propagated[annotated] = False
                    labels = stop_at_appearance_change(cache, image, annotated, ids, propagated=propagated)
                target = out / name.replace("+", "_") / f"{case}.nii.gz"
                target.parent.mkdir(parents=True, exist_ok=True)
                nib.save(nib.Nifti1Image(np.moveaxis(labels, 0, axis).astype(np.uint8), lab_nii.affine, lab_nii.header), target)
                written.setdefault(name, []).append(fold)
    results: dict = {"size": size, "iterations": iterations, "variants": {}}
    for name in written:
        folder = out / name.replace("+", "_")
        csv_path = score([(folder, fold) for fold in folds], classes, folder.parent / f"report_{folder.name}")
        results["variants"][name] = {"report": str(csv_path)}
    results["seconds_per_pair"] = demons.seconds / max(demons.pairs, 1)
    results["pairs"] = demons.pairs
    return results


def per_case(csv_path: Path, class_name: str) -> dict[str, dict[str, float]]:
    with open(csv_path, newline="") as f:
        return {r["case"]: {"dice": float(r["dice"]), "hd95": float(r["hd95"]) if r["hd95"] else float("nan")}
                for r in csv.DictReader(f) if r["class"] == class_name}


def summarise(results: dict, classes: list[str], compare: dict[str, list[Path]]) -> dict:
    from jointreg.metrics.compare import paired_wilcoxon

    references = {name: {} for name in compare}
    for name, paths in compare.items():
        for path in paths:
            for c in classes:
                for case, row in per_case(path, c).items():
                    references[name][(case, c)] = row
    for name, variant in results["variants"].items():
        rows = {}
        for c in classes:
            rows.update({(case, c): row for case, row in per_case(Path(variant["report"]), c).items()})
        # A case's score is the mean over the classes (one class for liver).
        cases = sorted({case for case, _ in rows})
        dice = {case: float(np.mean([rows[(case, c)]["dice"] for c in classes])) for case in cases}
        hd95 = {case: float(np.nanmean([rows[(case, c)]["hd95"] for c in classes])) for case in cases}
        variant.update(cases=len(cases), dice=float(np.mean(list(dice.values()))), hd95=float(np.nanmean(list(hd95.values()))))
        variant["paired"] = {}
        for ref, ref_rows in references.items():
            common = [case for case in cases if all((case, c) in ref_rows for c in classes)]
            theirs = [float(np.mean([ref_rows[(case, c)]["dice"] for c in classes])) for case in common]
            ours = [dice[case] for case in common]
            p, note = paired_wilcoxon(theirs, ours)
            variant["paired"][ref] = {
                "cases": len(common), "reference_dice": float(np.mean(theirs)) if theirs else None,
                "difference": float(np.mean(ours) - np.mean(theirs)) if theirs else None,
                "better": int(sum(o > t for o, t in zip(ours, theirs))), "p": p, "note": note,
            }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", nargs="+", type=Path, required=True, help="sparse fold datasets")
    parser.add_argument("--classes", nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for the labels and reports")
    parser.add_argument("--size", type=int, default=64, help="registration grid (default 64, as the recipe)")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--compare", nargs="*", default=[], metavar="NAME=CSV[,CSV]",
                        help="per_case.csv reports to test against (paired Wilcoxon over common cases)")
    parser.add_argument("--run", type=Path,
                        help="a finished run of the recipe: run demons inside its `pseudolabel --mode registration` "
                             "instead of the stand-alone variants (--size is then the run's grid)")
    parser.add_argument("--step-gates", nargs="+", type=float, default=[0.0], metavar="Q",
                        help="with --run: one variant per `--step-gate Q` (default 0)")
    parser.add_argument("--write", type=Path, help="also write PREFIX.json")
    args = parser.parse_args()
    compare = {}
    for item in args.compare:
        name, _, paths = item.partition("=")
        compare[name] = [Path(p) for p in paths.split(",")]
    if args.run is not None:
        variants = run_pipeline(args.run, args.folds, args.classes, args.out, args.iterations, args.step_gates)
        raw = {"run": str(args.run), "iterations": args.iterations, "variants": variants}
    else:
        raw = run(args.folds, args.classes, args.out, args.size, args.iterations)
    results = summarise(raw, args.classes, compare)
    text = json.dumps(results, indent=2)
    print(text)
    if args.write:
        args.write.with_suffix(".json").write_text(text + "\n")


if __name__ == "__main__":
    main()
