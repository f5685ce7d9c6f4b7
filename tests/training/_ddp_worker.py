"""Run by ``torchrun --nproc-per-node 2`` from test_distributed.py: the collectives of
:class:`jointreg.training.distributed.Distributed` on two gloo processes. Each rank writes what
it saw to ``OUT/rank{R}.json``."""

import json
import sys
from pathlib import Path

import torch

from jointreg.errors import JointregError
from jointreg.training.distributed import start, stop


def main(out: Path) -> None:
    ctx, device = start("cpu")
    seen = {"rank": ctx.rank, "world_size": ctx.world_size}
    nan_on_rank_1 = torch.tensor(float("nan") if ctx.rank == 1 else 1.0)
    seen["finite_when_one_rank_has_nan"] = ctx.all_finite(nan_on_rank_1)
    seen["finite_when_all_finite"] = ctx.all_finite(torch.tensor([1.0, 2.0]))
    seen["mean"] = ctx.mean({"loss": float(ctx.rank), "other": 2.0 + 4.0 * ctx.rank})
    seen["broadcast"] = ctx.broadcast({"from": ctx.rank})
    seen["share"] = ctx.share(list(range(8)))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    net[1].running_mean.fill_(float(ctx.rank))  # buffers differ: rank 0's are taken
    ctx.check_same_weights({"net": net})
    seen["buffer_after_check"] = net[1].running_mean.tolist()
    with torch.no_grad():
        if ctx.rank == 1:
            net[0].weight[0, 0] += 1e-6
    try:
        ctx.check_same_weights({"net": net})
        seen["differing_weights"] = None
    except JointregError as exc:
        seen["differing_weights"] = str(exc)
    ctx.reseed(5, 3)
    seen["draw"] = torch.rand(2).tolist()
    (out / f"rank{ctx.rank}.json").write_text(json.dumps(seen))
    stop(ctx, finished=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
