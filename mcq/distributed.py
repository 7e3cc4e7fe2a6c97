"""Data-parallel calibration over torch.distributed (any backend whose all-reduce takes CPU tensors:
gloo; mcq calibrates on the CPU).

Every process runs the same graph on its own shard of the calibration batches (batch i goes to
rank i % world size, so each batch is computed exactly as one process would compute it); the
statistics are then all-reduced:

- min / max (and abs-max, derived from them): MIN / MAX, exact;
- histograms: calibration runs node by node (`mcq.pipeline`), so every rank holds its batches'
  values at the node and replays the one-process histogram exactly: the batches' extremes are
  all-reduced, every rank widens its partial counts at the same steps as one process would
  (the rebinning is linear in the counts) and counts only its own batches; the summed counts
  are the one-process histogram, exactly;
- the SmoothQuant alpha search's errors: summed;
- GPTQ Hessians: sums and token counts are summed (float64, equal up to summation order).
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence, TypeVar

import torch

from mcq.config import ConfigError

T = TypeVar("T")


def world(enabled: bool) -> tuple[int, int]:
    """(rank, world size): (0, 1) unless `enabled`, which needs an initialized process group."""
    if not enabled:
        return 0, 1
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError("distributed calibration needs torch.distributed.init_process_group(...) first "
                          "(torchrun and `mcq quantize` under torchrun do it; backend gloo)")
    return dist.get_rank(), dist.get_world_size()


def shard(batches: Sequence[T], rank: int, size: int) -> list[T]:
    """This rank's calibration batches: every `size`-th from `rank` on."""
    if len(batches) < size:
        raise ValueError(f"{len(batches)} calibration batches cannot give each of the {size} processes one: "
                         "use more samples or a smaller batch size")
    return list(batches[rank::size])


def _reduce(t: torch.Tensor, op: str) -> torch.Tensor:
    import torch.distributed as dist

    t = t.detach().clone().contiguous()
    dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
    return t


def replay_histogram(values: Sequence[torch.Tensor], ids: Sequence[int], total: int) -> Any:
    """The histogram one process streams over batches 0..total-1 in order, exactly, where this
    rank holds batch ids[i] as values[i] and the other ranks the rest."""
    from mcq.calibrators import Histogram

    flat = {b: v.detach().reshape(-1).to(torch.float64) for b, v in zip(ids, values)}
    extremes = torch.zeros(total, 2, dtype=torch.float64)
    for b, x in flat.items():
        extremes[b, 0], extremes[b, 1] = x.min(), x.max()
    extremes = _reduce(extremes, "SUM")  # each batch is on one rank: the others add zeros
    h = Histogram()
    for b in range(total):
        h.step(float(extremes[b, 0]), float(extremes[b, 1]), flat.get(b))
    h.counts = _reduce(h.counts, "SUM")
    return h


def sync_observer(obs: Any, values: Sequence[torch.Tensor], ids: Sequence[int], total: int) -> None:
    """Min / max over every rank (exact), and the histogram the observer streams, replayed
    exactly from this rank's batch `values` (global batch `ids`, of `total`)."""
    if obs.min is None or obs.max is None:
        raise RuntimeError("distributed calibration: a rank's observer saw no data")
    obs.min, obs.max = _reduce(obs.min, "MIN"), _reduce(obs.max, "MAX")
    if obs.histogram is not None:
        obs.histogram = replay_histogram(values, ids, total)


def sync_hessian(h: Any) -> None:
    """A GPTQ Hessian over every rank's tokens: sums and counts summed."""
    if h.sum is None:
        raise RuntimeError("distributed calibration: a rank's GPTQ Hessian saw no data")
    h.sum = _reduce(h.sum, "SUM")
    h.count = int(_reduce(torch.tensor([h.count], dtype=torch.int64), "SUM"))


def sum_tensors(tensors: Iterable[torch.Tensor]) -> None:
    """Sum each tensor across ranks, in place (the SmoothQuant alpha search's errors)."""
    for t in tensors:
        t.copy_(_reduce(t, "SUM"))
