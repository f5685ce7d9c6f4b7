"""Multi-process training on PyTorch's own engine: ``torchrun`` + DistributedDataParallel.

    torchrun --nproc-per-node 2 -m jointreg train RECIPE            # one machine, 2 processes
    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29400 -m jointreg train RECIPE         # two machines

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`start` reads them and
joins the process group (``gloo`` on CPU, ``nccl`` on CUDA, each process on ``cuda:LOCAL_RANK``).
Without them (a plain ``jointreg train``) nothing here does anything.

How N processes follow the schedule of one process with the recipe's batch sizes:

* every rank draws the same global batch (all draws of step ``g`` come from
  ``numpy.random.default_rng([seed, g])``) and keeps its contiguous share of it
  (:meth:`Distributed.share`): rank ``r`` of ``N`` takes items ``r·B/N … (r+1)·B/N − 1``. Batch
  sizes must therefore divide by ``N`` (:func:`check_batch_sizes`);
* both trained networks are wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`,
  which averages the gradients over the ranks: for a loss that is a mean over the batch's
  samples, the average of the N shares' means is the global batch's mean, so every rank takes
  the optimiser step one process would take. What is *not* equal: batch-norm statistics are
  those of each share (not synchronised: ``SyncBatchNorm`` has no CPU kernels), and losses
  that normalise by a count pooled over the batch (cross-entropy over the known pixels when
  some are ``ignore``, soft Dice over the classes present) weigh the shares by their own count;
* the non-finite-loss check is agreed by all ranks before any backward pass (a rank stopping
  alone would leave the others waiting in the gradient all-reduce);
* torch's own RNG (dropout, sampled fields) is reseeded every step from ``(seed, step, rank)``,
  so a run is reproducible and resumes exactly from a checkpoint of any world size;
* only rank 0 writes: the run folder, ``train.log``, TensorBoard, checkpoints, the export and
  the evaluation. It validates alone and sends the outcome (best score, patience, early stop) to
  the others; logged loss terms are averaged over the ranks first, so they are the global
  batch's.

What every rank does in full (redundant, identical work): loading and slicing the data, and
rebuilding the chain-propagated labels (``propagation.method: chain``) after each registration
phase.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from jointreg.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

# rank 0 validates and exports while the others wait in a collective: give it time
TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class Distributed:
    """Where this process stands among the training processes (world size 1: alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's contiguous share of a globally drawn batch (all of it when alone)."""
        if not self.active:
            return list(items)
        n = len(items) // self.world_size
        return list(items[self.rank * n:(self.rank + 1) * n])

    def wrap(self, module, device, *, unused_parameters: bool = True):
        """``module`` in DistributedDataParallel (the module itself when alone).

        Args:
            unused_parameters: the network may leave parameters unused in a step (some registry
                networks' branches); DDP then walks the autograd graph after each forward pass
                to find them. ``False`` for networks that use every parameter (the segmentors).
        """
        if not self.active:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=unused_parameters,
                                       gradient_as_bucket_view=True)

    def all_finite(self, value) -> bool:
        """Whether ``value`` is finite on every rank."""
        import torch

        ok = bool(torch.isfinite(value).all())
        if not self.active:
            return ok
        import torch.distributed as dist

        flag = torch.tensor([1.0 if ok else 0.0], device=value.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() > 0)

    def mean(self, terms: Mapping[str, float]) -> dict[str, float]:
        """Loss terms averaged over the ranks (every rank must call this at the same step)."""
        if not self.active or not terms:
            return dict(terms)
        import torch
        import torch.distributed as dist

        keys = sorted(terms)
        values = torch.tensor([float(terms[k]) for k in keys], dtype=torch.float64)
        if dist.get_backend() == "nccl":  # NCCL reduces on this process's GPU (start() selected it)
            values = values.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(values)
        return dict(zip(keys, (values / self.world_size).cpu().tolist()))

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (JSON-like values)."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def check_same_weights(self, modules: Mapping[str, Any]) -> None:
        """Raise unless every rank holds bit-identical parameters in ``modules`` (name → module):
        DistributedDataParallel keeps them equal; anything that breaks that is a bug to stop on.

        Buffers (batch-norm running statistics, updated by each rank on its own share) are first
        set to rank 0's, as DistributedDataParallel does before each forward pass: rank 0's are
        the ones its checkpoints and export hold.

        Raises:
            JointregError: naming the networks that differ and on which ranks.
        """
        if not self.active:
            return
        import hashlib

        import torch.distributed as dist

        from jointreg.errors import JointregError

        mine = {}
        for name, module in modules.items():
            for buffer in module.buffers():
                dist.broadcast(buffer.data, src=0)
            digest = hashlib.sha256()
            for key, tensor in module.state_dict().items():
                digest.update(key.encode())
                digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
            mine[name] = digest.hexdigest()
        every: list[dict[str, str] | None] = [None] * self.world_size
        dist.all_gather_object(every, mine)
        differ = sorted({name for d in every for name in d if d[name] != every[0].get(name)})
        if differ:
            ranks = [r for r, d in enumerate(every) if any(d[n] != every[0][n] for n in differ)]
            raise JointregError(f"the {', '.join(differ)} weights differ between rank 0 and rank(s) {ranks}; stopping")
        log.info("the %d ranks hold identical weights (sha256 %s)", self.world_size,
                 ", ".join(f"{name} {h[:12]}" for name, h in mine.items()))

    def reseed(self, seed: int, step: int) -> None:
        """Reseed torch's global RNG from ``(seed, step, rank)`` (multi-process runs only)."""
        if self.active:
            import torch

            torch.manual_seed(int(np.random.default_rng([seed, step, self.rank, 1]).integers(2**62)))


def from_environment(env: Mapping[str, str] | None = None) -> Distributed:
    """The process's place from torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``.

    Raises:
        ConfigError: values that are not integers, or a rank outside ``0 .. WORLD_SIZE - 1``.
    """
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return Distributed()
    try:
        world = int(env["WORLD_SIZE"])
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ConfigError(
            f"torchrun environment: RANK={env.get('RANK')!r}, WORLD_SIZE={env.get('WORLD_SIZE')!r} and "
            f"LOCAL_RANK={env.get('LOCAL_RANK')!r} must be integers"
        ) from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"torchrun environment: RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
    return Distributed(rank, world, local)


def start(device_name: Any = "auto"):
    """Join the process group when run under torchrun; returns ``(Distributed, device)``.

    The device follows ``device`` as in a single process, except that CUDA means
    ``cuda:LOCAL_RANK`` (one GPU per process, :func:`~jointreg.utils.device.resolve_device`).
    Ranks other than 0 log warnings only.
    """
    import torch

    from jointreg.utils.device import resolve_device

    ctx = from_environment()
    device = resolve_device(device_name)
    if not ctx.active:
        return ctx, device
    import torch.distributed as dist

    if device.type == "cuda":  # cuda:LOCAL_RANK unless the recipe names a GPU (resolve_device)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    if not ctx.is_main:
        logging.getLogger("jointreg").setLevel(logging.WARNING)
    log.info("process group: %d processes (%s), this is rank %d", ctx.world_size, dist.get_backend(), ctx.rank)
    return ctx, device


def stop(ctx: Distributed, *, finished: bool) -> None:
    """Leave the process group. ``finished``: this rank ended normally, and waits for the others
    (rank 0 exports and evaluates meanwhile) so that all leave together. After an error it
    leaves at once: its non-zero exit makes torchrun stop the other ranks."""
    if ctx.active:
        import torch.distributed as dist

        if dist.is_initialized():
            if finished:
                dist.barrier()
            dist.destroy_process_group()


def check_batch_sizes(recipe, ctx: Distributed) -> None:
    """Every batch a step draws must split evenly over the ranks.

    Raises:
        ConfigError: naming the batch size and a world size that would divide it.
    """
    if not ctx.active:
        return
    sizes = []
    if recipe.registration.enabled:
        sizes.append(("registration.batch_size", recipe.registration.batch_size))
    if recipe.segmentation.enabled:
        b = recipe.segmentation.batch_size
        sizes.append(("segmentation.batch_size", b))
        if recipe.registration.enabled:
            sizes.append(("segmentation.batch_size // 2 (the warped and propagated groups)", max(1, b // 2)))
    for name, size in sizes:
        if size % ctx.world_size:
            raise ConfigError(
                f"{name} = {size} does not split over {ctx.world_size} processes: use a multiple of "
                f"{ctx.world_size} (each process takes an equal share of every batch)"
            )
