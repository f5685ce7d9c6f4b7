"""Per-case figures of a finished study, kept as JSON so that a later seed can be paired with them.

A study's tables pool each method's test volumes; the run folders behind them (per-case CSVs) are
large and not part of the repository. This script writes what later comparisons need, small
enough for ``results/``:

    .venv/bin/python benchmarks/study_cases.py collect runs/study_chaos_seed2 --seed 2 \\
        --label "seed 2" --out results/chaos_t2_liver_cases.json

adds the study's methods to the entry ``"seed 2"`` (replacing those it already holds; methods of
another study collected under the same label stay): for every method, each test volume's Dice /
HD95 / ASSD of one class (``--class``, default the first foreground class in the CSVs) from
``OUTPUT/pooled/<method>_seed<S>/per_case.csv``, and in 3D mode each volume's registration and
identity Dice from the fold runs' ``evaluation/registration.json``. Then

    .venv/bin/python benchmarks/study_cases.py pair results/chaos_t2_liver_cases.json \\
        --entries "seed 0" "seed 2" --methods RUNet IUNet-refine

prints paired Wilcoxon tests over the volumes both entries hold: each method against the other
within every entry, the per-volume mean over the entries, and each method's entry-to-entry shift
(JSON on stdout). Trainings run outside a study (one run per fold, with a study method's
settings) are added with

    .venv/bin/python benchmarks/study_cases.py collect-runs RUN_FOLD1 RUN_FOLD2 --method RUNet-chain \
        --label "seed 0" --class mean --out results/ms_cmr_cv_cases.json

``--class mean`` keeps the mean over each case's classes (the cardiac figure) instead of one class.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from jointreg.metrics.compare import paired_wilcoxon  # noqa: E402
from jointreg.utils.atomic import write_text  # noqa: E402

METRICS = ("dice", "hd95", "assd")
MEAN = "mean"  # --class mean: the mean over the classes of each case
CLASS_HELP = "the class to keep (default: the first in the CSV); 'mean': each case's mean over its classes"


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return round(value, 4) if value == value else None  # NaN (an empty prediction's distance) -> None


def segmentation_cases(csv_path: Path, class_name: str | None) -> tuple[str, dict[str, dict]]:
    """``(class, {case: {dice, hd95, assd}})`` of one per-case report. ``class_name`` ``"mean"``
    averages each case's classes (a distance over the classes where it is defined)."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{csv_path}: no rows")
    if class_name == MEAN:
        by_case: dict[str, list[dict]] = {}
        for r in rows:
            by_case.setdefault(r["case"], []).append({m: _number(r[m]) for m in METRICS})
        return MEAN, {case: {m: _mean([v[m] for v in values]) for m in METRICS} for case, values in by_case.items()}
    chosen = class_name or rows[0]["class"]
    cases = {r["case"]: {m: _number(r[m]) for m in METRICS} for r in rows if r["class"] == chosen}
    if not cases:
        raise ValueError(f"{csv_path}: no rows of class {chosen!r}")
    return chosen, cases


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.fmean(known), 4) if known else None


def registration_cases(study: Path, method_slug: str, seed: int) -> dict[str, dict] | None:
    """3D mode: each volume's fused-atlas Dice and the identity's, over the fold runs (``None``
    for a method without that evaluation)."""
    pooled: dict[str, dict] = {}
    for run in sorted(study.glob(f"{method_slug}_seed{seed}_fold*")):
        path = run / "evaluation" / "registration.json"
        if not path.is_file():
            continue
        report = json.loads(path.read_text(encoding="utf-8"))
        for group in ("training", "Ts"):
            for case, values in (report.get(group) or {}).get("per_case", {}).items():
                pooled.setdefault(group, {})[case] = {k: round(v, 4) for k, v in values.items()}
    return pooled or None


def collect(args: argparse.Namespace) -> int:
    from jointreg.training.study import load_study

    config, _ = load_study(args.study_yaml, args.set) if args.study_yaml else (None, None)
    study = Path(args.study)
    pooled = sorted((study / "pooled").glob(f"*_seed{args.seed}"))
    if not pooled:
        print(f"error: {study / 'pooled'}: no pooled reports of seed {args.seed}", file=sys.stderr)
        return 2
    names = {}
    if config is not None:
        from jointreg.training.study import slug

        names = {slug(m): m for m in config.methods}
    entry: dict = {"segmentation": {}, "registration": {}}
    for folder in pooled:
        method_slug = folder.name.rsplit("_seed", 1)[0]
        method = names.get(method_slug, method_slug)
        class_name, cases = segmentation_cases(folder / "per_case.csv", args.class_name)
        entry["segmentation"][method] = cases
        entry["class"] = class_name
        registration = registration_cases(study, method_slug, args.seed)
        if registration is not None:
            entry["registration"][method] = registration
    if not entry["registration"]:
        del entry["registration"]
    _store(Path(args.out), args.label, entry, args.protocol)
    return 0


def collect_runs(args: argparse.Namespace) -> int:
    """One method's per-case figures from single runs (one per fold), e.g. trainings run outside
    a study with a study method's settings."""
    cases: dict[str, dict] = {}
    class_name = None
    for run in map(Path, args.runs):
        path = run / "evaluation" / "per_case.csv"
        if not path.is_file():
            print(f"error: {path}: no per-case report (has the run finished its evaluation?)", file=sys.stderr)
            return 2
        class_name, found = segmentation_cases(path, args.class_name)
        twice = sorted(set(found) & set(cases))
        if twice:
            print(f"error: {path}: case {twice[0]} is already in another of the runs given", file=sys.stderr)
            return 2
        cases.update(found)
    _store(Path(args.out), args.label, {"segmentation": {args.method: cases}, "class": class_name}, args.protocol)
    return 0


def _store(out: Path, label: str, entry: dict, protocol: str | None) -> None:
    """Adds ``entry`` to the JSON's entry ``label``; methods it does not hold stay."""
    document = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {"studies": {}}
    if protocol:
        document["protocol"] = protocol
    previous = document.setdefault("studies", {}).get(label, {})
    for part in ("segmentation", "registration"):  # methods of another study under the same label are kept
        if part in previous or part in entry:
            entry[part] = {**previous.get(part, {}), **entry.get(part, {})}
    document["studies"][label] = {**previous, **entry}
    write_text(out, json.dumps(document, indent=1) + "\n")
    print(f"{out}: {label}: {len(entry['segmentation'])} method(s)")


def _summary(a: list[float], b: list[float]) -> dict:
    p, _ = paired_wilcoxon(a, b)
    return {"n": len(a), "mean": round(statistics.fmean(b), 4), "other_mean": round(statistics.fmean(a), 4),
            "difference": round(statistics.fmean(y - x for x, y in zip(a, b)), 4),
            "better": sum(y > x for x, y in zip(a, b)), "worse": sum(y < x for x, y in zip(a, b)),
            "p": None if p is None else round(p, 4)}


def pair(args: argparse.Namespace) -> int:
    path = Path(args.json)
    if not path.is_file():
        print(f"error: {path}: no such file", file=sys.stderr)
        return 2
    studies = json.loads(path.read_text(encoding="utf-8")).get("studies", {})
    for name in args.entries:
        missing = [m for m in args.methods if m not in studies.get(name, {}).get("segmentation", {})]
        if name not in studies or missing:
            what = f"no entry {name!r} (entries: {', '.join(studies)})" if name not in studies else \
                f"entry {name!r} has no method {missing[0]!r} (methods: {', '.join(studies[name]['segmentation'])})"
            print(f"error: {path}: {what}", file=sys.stderr)
            return 2
    entries = [studies[e]["segmentation"] for e in args.entries]
    first, second = args.methods
    cases = sorted(set.intersection(*(set(e[m]) for e in entries for m in args.methods)))
    if not cases:
        print("error: no test volume is in every entry for both methods", file=sys.stderr)
        return 2

    def values(entry: dict, method: str) -> list[float]:
        return [entry[method][c][args.metric] for c in cases]

    report: dict = {"metric": args.metric, "cases": cases, f"{second} - {first}": {}, "shift": {}}
    for name, entry in zip(args.entries, entries):
        report[f"{second} - {first}"][name] = _summary(values(entry, first), values(entry, second))
    mean = {m: [statistics.fmean(v) for v in zip(*(values(e, m) for e in entries))] for m in args.methods}
    report[f"{second} - {first}"]["mean of the entries per volume"] = _summary(mean[first], mean[second])
    for method in args.methods:
        report["shift"][method] = {
            f"{later} - {args.entries[0]}": _summary(values(entries[0], method), values(entry, method))
            for later, entry in zip(args.entries[1:], entries[1:])}
    print(json.dumps(report, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="a study's per-case figures into a results JSON")
    c.add_argument("study", help="the study's output folder")
    c.add_argument("--seed", type=int, required=True, help="the study seed whose runs to collect")
    c.add_argument("--label", required=True, help="the entry's name in the JSON (e.g. 'seed 2')")
    c.add_argument("--out", required=True, help="the results JSON (created, or updated in place)")
    c.add_argument("--class", dest="class_name", default=None, help=CLASS_HELP)
    c.add_argument("--protocol", default=None, help="the JSON's protocol line (where the figures are read)")
    c.add_argument("--study-yaml", default=None, help="the study YAML, to name the methods as it does")
    c.add_argument("--set", action="append", default=[], help="the study's --set overrides (method names)")
    r = sub.add_parser("collect-runs", help="one method's per-case figures from single runs (one per fold)")
    r.add_argument("runs", nargs="+", help="run folders with evaluation/per_case.csv")
    r.add_argument("--method", required=True, help="the method's name in the JSON")
    r.add_argument("--label", required=True, help="the entry's name in the JSON (e.g. 'seed 0')")
    r.add_argument("--out", required=True, help="the results JSON (created, or updated in place)")
    r.add_argument("--class", dest="class_name", default=None, help=CLASS_HELP)
    r.add_argument("--protocol", default=None, help="the JSON's protocol line (where the figures are read)")
    p = sub.add_parser("pair", help="paired tests between two methods over one or more entries")
    p.add_argument("json", help="a results JSON written by collect / collect-runs")
    p.add_argument("--entries", nargs="+", required=True,
                   help="the entries (seeds) to pair within, and to average per volume when there are several")
    p.add_argument("--methods", nargs=2, required=True, metavar=("BASELINE", "OTHER"),
                   help="the two methods, as named in the JSON; differences are OTHER - BASELINE")
    p.add_argument("--metric", default="dice", choices=METRICS, help="the per-volume figure to compare (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        return {"collect": collect, "collect-runs": collect_runs, "pair": pair}[args.command](args)
    except ValueError as error:  # a report without rows, or without the class asked for
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
