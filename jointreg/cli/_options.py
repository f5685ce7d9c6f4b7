"""Options shared by the commands that run networks (segment, pseudolabel, register).

Not a subcommand (no ``NAME``); argparse only, so importing it keeps ``jointreg --help`` instant.
"""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_inference_options(parser: argparse.ArgumentParser, *, batch_unit: str) -> None:
    """``--batch-size N`` (``batch_unit`` per forward pass, default 16) and ``--device``."""
    parser.add_argument("--batch-size", type=positive_int, default=16, metavar="N",
                        help=f"{batch_unit} per forward pass (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")


def add_backend_option(parser: argparse.ArgumentParser) -> None:
    """``--backend torch|torch-bfloat16|onnxruntime`` (:mod:`jointreg.inference.onnx_runtime`,
    :mod:`jointreg.inference.autocast`)."""
    parser.add_argument("--backend", choices=("torch", "torch-bfloat16", "onnxruntime"), default="torch",
                        help="what runs the networks: torch (default); torch-bfloat16 (bfloat16 autocast, outputs "
                             "in float32; only where bfloat16 is computed in hardware: CPUs with AMX or "
                             "AVX512-BF16, recent GPUs); or onnxruntime (CPU; each network exported in memory "
                             "once per input size and checked against torch; needs pip install 'jointreg[export]')")


def add_shard_options(parser: argparse.ArgumentParser, *, finished: str) -> None:
    """``--shard I/N`` and ``--merge`` of the bulk commands (:mod:`jointreg.inference.shards`).

    Args:
        finished: what the last shard, or ``--merge``, writes once every case is finished.
    """
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="process only shard I of N (0 <= I < N) of the sorted cases (case k goes to shard k %% N) "
                             "into the same DIR as the other shards; default under torchrun: RANK/WORLD_SIZE")
    parser.add_argument("--merge", action="store_true",
                        help=f"process nothing: check that every shard's cases are finished, then write {finished}")


def chosen_shard(args: argparse.Namespace):
    """The :class:`~jointreg.inference.shards.Shard` of this process (``None``: every case), from
    ``--shard`` or torchrun's environment; ``--merge`` takes none and no ``--overwrite``.

    Raises:
        ConfigError: a malformed ``--shard``, or one given with ``--merge``; ``--merge`` with
            ``--overwrite``.
    """
    from jointreg.errors import ConfigError
    from jointreg.inference.shards import resolve_shard

    if args.merge:
        if args.shard is not None:
            raise ConfigError("--merge takes no --shard: it checks the cases of every shard")
        if args.overwrite:
            raise ConfigError("--merge deletes nothing and takes no --overwrite")
        return None
    return resolve_shard(args.shard)


def shard_line(line: str, shard, missing: list, total: int, *, unit: str, complete: str) -> str:
    """A bulk command's summary ``line``, for a shard prefixed with it and followed by where the
    whole job stands (how many of ``total`` are still missing, or what completed it)."""
    if shard is None:
        return line
    state = (f"{len(missing)} of {total} {unit} still missing (other shards)" if missing
             else f"all {total} {unit} finished, {complete}")
    return f"shard {shard}: {line}; {state}"

