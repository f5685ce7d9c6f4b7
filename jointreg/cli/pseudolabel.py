"""Complete the labels of a sparse dataset with a trained run, as a new nnU-Net v2 dataset.

Examples:
  jointreg pseudolabel --run runs/chaos_t2_1slice --dataset data/chaos_t2_1slice --out data/chaos_t2_pseudo
  jointreg pseudolabel --run RUN --dataset DATASET --out DIR --mode registration --propagation chain --workers 2
  jointreg pseudolabel --run RUN --dataset DATASET --out DIR --shard 0/4      # one of 4 jobs into one DIR
  jointreg pseudolabel --run RUN --dataset DATASET --out DIR --merge         # after the 4: dataset.json

Every voxel labelled 'ignore' in DATASET/labelsTr gets a label; annotated voxels are copied
unchanged. Modes: 'registration' warps the nearest annotated slice(s) on each side onto the slice
(--propagation direct, or chain: slice by slice through the neighbours) and averages them with
weights exp(-distance / pair radius); 'segmentor' uses the segmentor alone; 'fusion' (default)
mixes both, trusting registration near annotated slices and where it agrees with the segmentor.
Cases without any annotated voxel are labelled by the segmentor alone. A run of 3D mode
(volumes.enabled) instead registers every case annotated on every voxel (the atlases) onto each
other case in its box and fuses their labels; voxels no atlas reaches get the segmentor's label.

DIR receives imagesTr/ (hard links or copies), labelsTr/, dataset.json (labels without ignore),
provenance/{case}.json and pseudolabel.json, and DATASET's test split (imagesTs/, labelsTs/ in the
run's classes), so that `jointreg train` on DIR trains a segmentor on the pseudo-labels and
evaluates it on the same test cases as a run on DATASET (two stages instead of the joint loop). The job is resumable: rerun the same command after an
interruption or a failure and finished cases are skipped; the result is the same as an
uninterrupted run. dataset.json is written last, once every case is finished (a DIR without it is
an unfinished job); a job that finished no case leaves nothing behind, and a rerun with other
settings simply starts over. --overwrite starts over in a DIR made by an earlier pseudolabel run
that holds finished cases (other folders are never deleted).

Sharded bulk jobs: --shard I/N labels only shard I of N of the cases (sorted names, case k goes
to shard k % N, whatever is already finished) into the same DIR as the other shards, at the same
time (several processes, a cluster job array: --shard $SLURM_ARRAY_TASK_ID/N) or one after the
other; each can use --workers. Under torchrun every process takes shard RANK/WORLD_SIZE by itself.
The first shard writes pseudolabel.json; a shard with other settings is refused, and a shard
never deletes anything (no --overwrite). The shard that finds every case finished writes
dataset.json; --merge (the same command, without --shard) checks that every case is finished and
writes dataset.json, or names the missing cases. Formulas: docs/inference.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jointreg.cli._options import add_backend_option, add_inference_options, add_shard_options, chosen_shard, shard_line

NAME = "pseudolabel"
HELP = "write complete pseudo-labels for a sparse dataset (resumable, parallel)"
ORDER = 75


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", "--run-folder", dest="run", required=True, type=Path, metavar="RUN",
                        help="finished run folder (uses RUN/export/*); spell it --run-folder under torchrun, "
                             "whose own options make --run ambiguous")
    parser.add_argument("--dataset", required=True, type=Path, metavar="DATASET", help="sparse dataset (labelsTr with 'ignore')")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output dataset folder")
    parser.add_argument("--mode", choices=("registration", "segmentor", "fusion"), default="fusion",
                        help="how unannotated voxels are labelled (default: %(default)s)")
    parser.add_argument("--propagation", choices=("direct", "chain"), default=None,
                        help="registration from the source slices directly, or through the neighbours "
                             "(default: chain in registration mode, direct otherwise)")
    parser.add_argument("--refine", type=int, default=None, metavar="STEPS",
                        help="instance optimisation: Adam steps that refine each registered pair's field on "
                             "the pair itself (default: 100 in registration mode, 0 otherwise; 0: off)")
    parser.add_argument("--refine-smoothness", type=float, default=None, metavar="L",
                        help="weight of the refinement's diffusion term (default: 0.001, best on the liver; "
                             "0.01 suits the heart)")
    parser.add_argument("--source-slices", type=int, default=1, metavar="K",
                        help="annotated source slices per side for direct propagation (default: %(default)s)")
    parser.add_argument("--verify", type=float, default=0.6, metavar="F",
                        help="registration mode: stop a propagated structure at the first slice where fewer than "
                             "this fraction of its pixels have the annotated structure's intensities (default: %(default)s)")
    parser.add_argument("--no-verify", action="store_true", help="registration mode: propagate onto every slice")
    parser.add_argument("--gate", type=float, default=None, metavar="Q",
                        help="registration mode: propagated pixels of a structure whose intensity lies outside the "
                             "Q..100-Q percentiles of its annotated voxels become background, holes filled "
                             "(default: 1 in registration mode; 0: off)")
    parser.add_argument("--step-gate", type=float, default=0.0, metavar="Q",
                        help="chain propagation: the same gate after every step of the chain, so that the label "
                             "shrinks with the organ (for large organs of even intensity such as the liver; it "
                             "costs thin or drifting structures such as the heart's; default: 0, off)")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes (default: %(default)s)")
    add_inference_options(parser, batch_unit="pairs/slices")
    add_backend_option(parser)
    parser.add_argument("--overwrite", action="store_true", help="start over in an existing pseudolabel output")
    add_shard_options(parser, finished="dataset.json and the montages")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from jointreg.inference.pseudolabel import PseudolabelSettings, merge_pseudolabels, pseudolabel_dataset

    shard = chosen_shard(args)
    settings = PseudolabelSettings(
        mode=args.mode, propagation=args.propagation, source_slices=args.source_slices,
        batch_size=args.batch_size, device=args.device, verify=None if args.no_verify else args.verify,
        refine=args.refine, refine_smoothness=args.refine_smoothness, backend=args.backend, gate=args.gate, step_gate=args.step_gate,
    )
    if args.merge:
        summary = merge_pseudolabels(args.run, args.dataset, args.out, settings=settings, progress=not args.no_progress)
        print(f"merged {summary['cases']} case(s) in {summary['out']}: every case is finished, dataset.json written")
        return 0
    summary = pseudolabel_dataset(
        args.run, args.dataset, args.out, settings=settings, workers=args.workers,
        overwrite=args.overwrite, shard=shard, progress=not args.no_progress,
    )
    methods = ", ".join(f"{n} {m}" for m, n in sorted(summary["methods"].items()))
    skipped = f", {summary['skipped']} already done" if summary["skipped"] else ""
    line = f"pseudo-labelled {summary['labelled']} case(s){skipped} into {summary['out']}" + (f" ({methods})" if methods else "")
    print(shard_line(line, summary["shard"], summary["missing"], summary["cases"], unit="case(s)",
                     complete="dataset.json written"))
    return 0
