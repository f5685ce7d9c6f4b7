"""Segment NIfTI volumes with a trained 2D segmentor, slice by slice along its training axis.

Examples:
  jointreg segment --model runs/chaos/export/segmentor scans/*.nii.gz --out predictions
  jointreg segment --model runs/chaos data/chaos_t2 --out predictions --probabilities
  jointreg segment --model runs/chaos data/chaos_t2 --out predictions --shard 1/4   # one of 4 jobs
  jointreg segment --model runs/chaos data/chaos_t2 --out predictions --merge       # after the 4

MODEL is a segmentor model folder or a run folder (its export/segmentor). INPUTS are NIfTI files,
folders of them, or dataset folders (the cases of imagesTr/ and imagesTs/, normalised with the
dataset's channel name; other inputs use the model's modality). Each input gives OUT/{case}.nii.gz
with the input's affine and header ({case}_0000.nii.gz is named {case}); --probabilities adds
OUT/probabilities/{case}.nii.gz, float32 (X, Y, Z, K) with class k in volume k. An input whose
orientation differs from the training data is segmented in the training orientation and written
back in its own; a very different spacing is resampled like any input, with a warning.
Existing outputs are never replaced without --overwrite. The job is resumable: the same command
run again (after an interruption, or a failure on one input) keeps the volumes already done and
segments the others; OUT/segmentation.json lists the finished volumes ("complete": false until
the last one).

Sharded bulk jobs: --shard I/N segments only shard I of N of the volumes (sorted case names, case
k goes to shard k % N, whatever is already finished) into the same OUT as the other shards, at
the same time (several processes, a cluster job array: --shard $SLURM_ARRAY_TASK_ID/N) or one
after the other. Under torchrun every process takes shard RANK/WORLD_SIZE by itself. The first
shard writes segmentation.json; a shard with other settings or inputs is refused, and a shard
replaces nothing (no --overwrite). Each shard records its volumes in
OUT/segmentation.shard-I-of-N.json; the shard that finds every volume finished writes the complete
segmentation.json (and removes those records). --merge (the same command, without --shard) does
that once all shards have run, or names the missing volumes. Details: docs/inference.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jointreg.cli._options import add_backend_option, add_inference_options, add_shard_options, chosen_shard, shard_line

NAME = "segment"
HELP = "segment NIfTI volumes with a trained segmentor (labels keep the input geometry)"
ORDER = 70


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, metavar="MODEL",
                        help="segmentor model folder, or a run folder (uses RUN/export/segmentor)")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="NIfTI files, folders of them, or dataset folders")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder for {case}.nii.gz")
    parser.add_argument("--probabilities", action="store_true", help="also write class probabilities (4D float NIfTI)")
    add_inference_options(parser, batch_unit="slices")
    add_backend_option(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    add_shard_options(parser, finished="the complete segmentation.json")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from jointreg.inference.segment import merge_segmentations, segment_inputs

    shard = chosen_shard(args)
    if args.merge:
        manifest = merge_segmentations(args.model, args.inputs, args.out, probabilities=args.probabilities,
                                       backend=args.backend)
        print(f"merged {len(manifest['cases'])} volume(s) in {args.out}: every volume is finished, segmentation.json complete")
        return 0
    manifest = segment_inputs(
        args.model, args.inputs, args.out, probabilities=args.probabilities, batch_size=args.batch_size,
        device=args.device, overwrite=args.overwrite, shard=shard, progress=not args.no_progress, backend=args.backend,
    )
    warned = sum(1 for case in manifest["cases"].values() if case["warnings"])
    done = len(manifest["already_done"])
    line = (f"segmented {len(manifest['cases']) - done} volume(s)" + (f", {done} already done," if done else "")
            + f" into {args.out}" + (f" ({warned} with geometry warnings)" if warned else ""))
    print(shard_line(line, manifest["shard"], manifest["missing"], manifest["total"], unit="volume(s)",
                     complete="segmentation.json complete"))
    return 0
