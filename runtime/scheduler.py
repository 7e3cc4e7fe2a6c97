"""Continuous batching: one thread owns a causal-LM model and runs the decode steps of every
request it serves as one batch (issue 26).

A request joins between two steps: its prompt is prefilled (with others of similar length that
arrived meanwhile, left-padded), then its cache rows are left-padded to the running batch's
length and stacked under it. A request leaves after the step that finished it
(EOS, its token budget, or `cancel()` from a client that went away); its rows are dropped and
columns no remaining sequence attends to are trimmed. Padded positions carry mask 0: the graphs
take positions from the attention mask (left padding), so a sequence's tokens do not depend on
which others share its batch: on the engine to the bit (its softmax and float GEMMs compute a
row the same whatever precedes it: tests/test_engine_attention.py), on the reference path up to
torch's float rounding.

Works on both execution paths: `runtime.Model` (torch tensors) and `EngineModel` (numpy).
Callbacks run on the scheduler's thread and must be quick (hand the token to another thread)."""
from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from runtime.memory import release_free_heap

STOP, LENGTH, CANCELLED, ERROR = "stop", "length", "cancelled", "error"  # why a job ended
MAX_RESERVE = 1024  # cache positions preallocated at a join (more grow by doubling)


@dataclass(frozen=True)
class Sampling:
    """How a job picks tokens: greedy (do_sample False) or sampled with a seeded generator, as
    the model's own `generate` does for a batch of one."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0


class QueueFullError(RuntimeError):
    """The scheduler's queue of waiting requests is full (a server answers 503)."""


class SchedulerClosedError(RuntimeError):
    """The scheduler was closed: it takes no more requests."""


class Job:
    """One generation request. `on_token(token)` gets each new token (EOS ends the job instead
    of being handed out); `on_done(reason, error)` comes once, last: STOP (EOS), LENGTH
    (max_new_tokens reached), CANCELLED or ERROR (with the exception)."""

    def __init__(self, prompt_ids: Sequence[int], max_new_tokens: int, sampling: Sampling = Sampling(),
                 on_token: Callable[[int], None] = lambda t: None,
                 on_done: Callable[[str, BaseException | None], None] = lambda r, e: None,
                 stop_at_eos: bool = True) -> None:
        if not prompt_ids:
            raise ValueError("empty prompt")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.prompt_ids = [int(t) for t in prompt_ids]
        self.max_new_tokens, self.sampling, self.stop_at_eos = max_new_tokens, sampling, stop_at_eos
        self._on_token, self._on_done = on_token, on_done
        self._cancelled = threading.Event()
        self.generated = 0
        self.finish_reason: str | None = None

    def cancel(self) -> None:
        """Stop generating: the scheduler drops the job at its next step (or before its prefill)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def _emit(self, token: int) -> None:
        self.generated += 1
        try:
            self._on_token(token)
        except Exception:  # noqa: BLE001 - a consumer's failure ends its own job only
            self._cancelled.set()

    def _finish(self, reason: str, error: BaseException | None = None) -> None:
        if self.finish_reason is not None:
            return
        self.finish_reason = reason
        try:
            self._on_done(reason, error)
        except Exception:  # noqa: BLE001 - nothing to tell a consumer whose callback failed
            pass


class _Row:
    """A job in the running batch: its sampling state and the token its next step feeds."""

    def __init__(self, job: Job, rng: Any, token: int) -> None:
        self.job, self.rng, self.token = job, rng, token


class Scheduler:
    """Runs jobs on `model` (a causal-LM bundle loaded by `runtime.load`) in one thread, at most
    `max_batch` at a time; up to `max_queue` more wait, and `submit` refuses the next one."""

    def __init__(self, model: Any, max_batch: int = 8, max_queue: int = 64) -> None:
        if max_batch < 1 or max_queue < 0:
            raise ValueError("max_batch must be >= 1 and max_queue >= 0")
        model._need_causal_lm()
        self.model, self.max_batch, self.max_queue = model, max_batch, max_queue
        self._ops = _NumpyOps() if type(model).__module__ == "runtime.engine.model" else _TorchOps()
        self._eos = set(getattr(model, "eos_token_ids", []) or [])
        self._pending: collections.deque[Job] = collections.deque()
        self._rows: list[_Row] = []
        self._cache: Any = None
        self._cond = threading.Condition()
        self._closed = False
        self.steps = 0  # decode steps run
        self.completed = 0  # jobs ended, any reason
        self._thread = threading.Thread(target=self._run, name="mcq-scheduler", daemon=True)
        self._thread.start()

    # -- the client side -----------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue a job; QueueFullError when the batch is full and `max_queue` jobs already wait."""
        with self._cond:
            if self._closed:
                raise SchedulerClosedError("the scheduler is closed")
            if len(self._pending) >= self.max_queue + max(0, self.max_batch - len(self._rows)):
                raise QueueFullError(f"{len(self._pending)} requests are waiting (the most this server queues)")
            self._pending.append(job)
            self._cond.notify()

    @property
    def active(self) -> int:
        """Jobs in the running batch."""
        return len(self._rows)

    @property
    def queued(self) -> int:
        """Jobs waiting for a place in the batch."""
        return len(self._pending)

    def close(self, timeout: float | None = 10.0) -> None:
        """Cancel every job (each gets on_done CANCELLED) and stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    # -- the scheduler's thread ----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._rows and not self._closed:
                    self._cond.wait()
                if self._closed:
                    break
                joining: list[Job] = []
                while self._pending and len(self._rows) + len(joining) < self.max_batch:
                    joining.append(self._pending.popleft())
            self._join(joining)
            if self._rows:
                self._step()
        for row in self._rows:
            self._end(row.job, CANCELLED)
        self._rows, self._cache = [], None
        while self._pending:
            self._end(self._pending.popleft(), CANCELLED)

    def _end(self, job: Job, reason: str, error: BaseException | None = None) -> None:
        job._finish(reason, error)
        self.completed += 1

    def _pick(self, row_logits: Any, job: Job, rng: Any) -> int:
        s = job.sampling
        return int(self._ops.pick(row_logits, s.do_sample, s.temperature, s.top_k, s.top_p, rng)[0])

    def _emit(self, job: Job, token: int) -> bool:
        """Hand out a new token; True when the job goes on."""
        if job.stop_at_eos and token in self._eos:
            self._end(job, STOP)
            return False
        job._emit(token)
        if job.generated >= job.max_new_tokens:
            self._end(job, LENGTH)
            return False
        return True

    def _join(self, jobs: list[Job]) -> None:
        """Prefill the new jobs (those of similar lengths together, left-padded: the same bits as
        alone) and stack the ones that go on under the running batch."""
        caches: list[Any] = []
        live = []
        for job in jobs:
            if job.cancelled:
                self._end(job, CANCELLED)
            else:
                live.append(job)
        for group in _groups(live):
            try:
                width = max(len(j.prompt_ids) for j in group)
                ids = [[0] * (width - len(j.prompt_ids)) + j.prompt_ids for j in group]
                mask = [[0] * (width - len(j.prompt_ids)) + [1] * len(j.prompt_ids) for j in group]
                logits, cache = self.model.prefill(self._ops.tokens(ids), self._ops.tokens(mask), all_logits=False)
            except Exception as e:  # noqa: BLE001 - one request's failure ends that request only
                if len(group) > 1:  # find which: each alone (after stacking what joined so far:
                    self._stack(caches)  # rows and cache rows stay in the same order)
                    caches = []
                    for job in group:
                        self._join([job])
                    continue
                self._end(group[0], ERROR, e)
                continue
            keep = []
            for i, job in enumerate(group):
                rng = self._ops.rng(job.sampling)
                token = self._pick(logits[i : i + 1, -1], job, rng)
                if self._emit(job, token):
                    self._rows.append(_Row(job, rng, token))
                    keep.append(i)
            if keep:
                caches.append(self._select(cache, keep) if len(keep) < len(group) else cache)
        self._stack(caches)

    def _stack(self, caches: list[Any]) -> None:
        if caches:
            self._cache = self._stacked(([self._cache] if self._cache is not None else []) + caches)

    def _stacked(self, caches: list[Any]) -> Any:
        ops = self._ops
        length = max(c.attention_mask.shape[1] for c in caches)
        layers = len(caches[0].tensors)
        tensors = [ops.cat([ops.pad_left(c.tensors[i], length - c.attention_mask.shape[1], 2) for c in caches])
                   for i in range(layers)]
        mask = ops.cat([ops.pad_left(c.attention_mask, length - c.attention_mask.shape[1], 1) for c in caches])
        return ops.cache(tensors, mask, self._reserve())

    def _reserve(self) -> int:
        return min(MAX_RESERVE, max((r.job.max_new_tokens - r.job.generated for r in self._rows), default=0))

    def _step(self) -> None:
        """One decode step for the batch, after dropping the jobs cancelled since the last one."""
        self._drop([i for i, r in enumerate(self._rows) if r.job.cancelled], CANCELLED)
        if not self._rows:
            return
        try:
            logits, self._cache = self.model.decode(self._ops.tokens([r.token for r in self._rows]), self._cache)
        except Exception as e:  # noqa: BLE001 - the batch's jobs end with the error, the server goes on
            rows, self._rows, self._cache = self._rows, [], None
            for row in rows:
                self._end(row.job, ERROR, e)
            return
        self.steps += 1
        finished = []
        best = logits.argmax(-1).tolist()  # every greedy row's token in one call (float32 argmax: the same)
        for i, row in enumerate(self._rows):
            if row.job.cancelled:
                finished.append(i)
                self._end(row.job, CANCELLED)
                continue
            row.token = self._pick(logits[i : i + 1], row.job, row.rng) if row.job.sampling.do_sample else best[i]
            if not self._emit(row.job, row.token):
                finished.append(i)
        self._drop(finished, None)

    def _drop(self, indices: list[int], reason: str | None) -> None:
        """Take rows out of the batch (ending their jobs with `reason` unless already ended) and
        trim the leading columns no remaining row attends to."""
        if not indices:
            return
        gone = set(indices)
        for i in indices:
            if reason is not None:
                self._end(self._rows[i].job, reason)
        keep = [i for i in range(len(self._rows)) if i not in gone]
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._cache = None
            if not self._pending:  # idle: the freed caches' heap goes back to the OS
                release_free_heap()
            return
        self._cache = self._select(self._cache, keep)

    def _select(self, cache: Any, keep: list[int]) -> Any:
        """The cache of rows `keep`, without leading columns none of them attends to."""
        ops = self._ops
        mask = ops.rows(cache.attention_mask, keep)
        start = ops.first_attended(mask)
        tensors = [ops.rows(t, keep)[:, :, start:] for t in cache.tensors]
        return ops.cache(tensors, mask[:, start:], self._reserve())


PREFILL_PADDING = 0.25  # a group's padded tokens may be this fraction of its real ones (plus a few)


def _groups(jobs: list[Job]) -> list[list[Job]]:
    """Jobs to prefill together: by prompt length, a group grown while its padding stays small
    (padded positions cost a prefill's work and give nothing)."""
    groups: list[list[Job]] = []
    for job in sorted(jobs, key=lambda j: len(j.prompt_ids)):
        group = groups[-1] if groups else None
        if group is not None:
            real = sum(len(j.prompt_ids) for j in group) + len(job.prompt_ids)
            if len(job.prompt_ids) * (len(group) + 1) <= real * (1 + PREFILL_PADDING) + 16:
                group.append(job)
                continue
        groups.append([job])
    return groups


class _NumpyOps:
    """Cache surgery and token picking on the engine's numpy arrays."""

    def __init__(self) -> None:
        import numpy as np

        from runtime.engine.model import EngineCache, _pick

        self.np, self._cache, self.pick = np, EngineCache, _pick

    def tokens(self, ids: list[Any]) -> Any:
        return self.np.array(ids, dtype=self.np.int64)

    def rng(self, s: Sampling) -> Any:
        return self.np.random.default_rng(s.seed) if s.do_sample else None

    def pad_left(self, t: Any, n: int, axis: int) -> Any:
        if n == 0:
            return t
        widths = [(0, 0)] * t.ndim
        widths[axis] = (n, 0)
        return self.np.pad(t, widths)

    def cat(self, ts: list[Any]) -> Any:
        return self.np.concatenate(ts, axis=0)

    def rows(self, t: Any, keep: list[int]) -> Any:
        return t[keep]

    def first_attended(self, mask: Any) -> int:
        return int(self.np.argmax(mask.any(axis=0)))

    def cache(self, tensors: list[Any], mask: Any, reserve: int) -> Any:
        return self._cache(tensors, mask, reserve=reserve)


class _TorchOps:
    """The same on the reference path's torch tensors."""

    def __init__(self) -> None:
        import torch

        from runtime.model import KVCache, _pick

        self.torch, self._cache, self.pick = torch, KVCache, _pick

    def tokens(self, ids: list[Any]) -> Any:
        return self.torch.tensor(ids, dtype=self.torch.long)

    def rng(self, s: Sampling) -> Any:
        return self.torch.Generator().manual_seed(s.seed)

    def pad_left(self, t: Any, n: int, axis: int) -> Any:
        if n == 0:
            return t
        shape = list(t.shape)
        shape[axis] = n
        return self.torch.cat([t.new_zeros(shape), t], dim=axis)

    def cat(self, ts: list[Any]) -> Any:
        return self.torch.cat(ts, dim=0)

    def rows(self, t: Any, keep: list[int]) -> Any:
        return t[keep]

    def first_attended(self, mask: Any) -> int:
        return int(self.torch.argmax(mask.bool().any(dim=0).to(self.torch.uint8)))

    def cache(self, tensors: list[Any], mask: Any, reserve: int) -> Any:
        return self._cache(tensors, mask, reserve=reserve)
