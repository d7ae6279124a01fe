"""Micro-batching for real-time ranking: concurrent calls share model forward passes.

A single worker thread owns the ranker (its KV cache is not thread-safe). Callers put a
request on a queue and wait on a Future; the worker takes the first waiting request, keeps
collecting for at most `max_wait_ms` (or until `max_batch` are waiting) and ranks them with
one `Ranker.rank_each` call. Time spent queued counts against each request's deadline.
Each request succeeds or fails on its own: a refused or failing request never fails its
batch-mates. A request submitted after `close` fails at once; `close` first finishes
every request already queued (graceful shutdown drains in-flight work).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from ranking.engine import Ranker
from ranking.types import RankRequest, RankResult


class BatcherClosed(RuntimeError):
    """The batcher was shut down (e.g. replaced by a hot reload) before this request."""


@dataclasses.dataclass
class _Job:
    request: RankRequest
    future: Future[RankResult]
    queued_at: float


@dataclasses.dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    largest_batch: int = 0


class MicroBatcher:
    def __init__(
        self,
        ranker: Ranker,
        *,
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.ranker = ranker
        self.on_batch = on_batch  # called with each micro-batch's size (metrics)
        self.max_batch = max(1, max_batch)
        self.max_wait_s = max_wait_ms / 1000.0
        self.stats = BatchStats()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="rank-batcher", daemon=True)
        self._thread.start()

    def submit(self, request: RankRequest) -> Future[RankResult]:
        future: Future[RankResult] = Future()
        with self._lock:
            if self._closed:
                future.set_exception(BatcherClosed("the ranking worker is shut down"))
                return future
            self._queue.put(_Job(request, future, time.perf_counter()))
        return future

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop accepting requests, rank the ones already queued, stop the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)  # after every job already queued
        self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            stop = self._collect(jobs)
            self._rank(jobs)
            if stop:
                return

    def _collect(self, jobs: list[_Job]) -> bool:
        """Add waiting jobs until the batch is full or max_wait has passed; True on close."""
        until = time.perf_counter() + self.max_wait_s
        while len(jobs) < self.max_batch:
            timeout = until - time.perf_counter()
            try:
                job = (
                    self._queue.get(timeout=max(timeout, 0.0))
                    if timeout > 0
                    else (self._queue.get_nowait())
                )
            except queue.Empty:
                return False
            if job is None:
                return True
            jobs.append(job)
        return False

    def _rank(self, jobs: list[_Job]) -> None:
        now = time.perf_counter()
        requests = [_charge_queue_time(j.request, (now - j.queued_at) * 1000.0) for j in jobs]
        try:
            results = self.ranker.rank_each(requests)
        except Exception as exc:  # a bug outside any one request: every caller hears it
            results = [exc] * len(jobs)
        self.stats.batches += 1
        self.stats.requests += len(jobs)
        self.stats.largest_batch = max(self.stats.largest_batch, len(jobs))
        if self.on_batch is not None:
            self.on_batch(len(jobs))
        for job, result in zip(jobs, results, strict=True):
            if isinstance(result, Exception):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)


def _charge_queue_time(request: RankRequest, waited_ms: float) -> RankRequest:
    if request.deadline_ms is None:
        return request
    return dataclasses.replace(request, deadline_ms=max(0.0, request.deadline_ms - waited_ms))
