"""Impression logging that never blocks an answer and survives a database that is briefly
away: answers hand their impressions to a bounded buffer; one thread writes them in
batches and, when a write fails, keeps them and retries with a growing pause (up to
`max_backoff_s`). Only when the buffer is full are impressions dropped, and counted.
`close` writes what is left (graceful shutdown)."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from recsys.db.events import ImpressionRecord

log = logging.getLogger(__name__)
Writer = Callable[[Sequence[ImpressionRecord]], object]


class ImpressionLogger:
    def __init__(
        self,
        write: Writer,
        *,
        capacity: int = 10_000,
        max_batch: int = 500,
        max_backoff_s: float = 5.0,
        on_drop: Callable[[int], None] = lambda n: None,
        on_pending: Callable[[int], None] = lambda n: None,
    ) -> None:
        self._write, self.capacity, self.max_batch = write, capacity, max_batch
        self.max_backoff_s, self._on_drop, self._on_pending = max_backoff_s, on_drop, on_pending
        self._buffer: deque[ImpressionRecord] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._give_up_at = float("inf")
        self.dropped = self.written = 0
        self._thread = threading.Thread(target=self._run, name="impressions", daemon=True)
        self._thread.start()

    def log(self, records: Sequence[ImpressionRecord]) -> None:
        """Queue one answer's impressions; returns at once."""
        with self._cond:
            room = self.capacity - len(self._buffer)
            kept = list(records[: max(0, room)])
            lost = len(records) - len(kept)
            self._buffer.extend(kept)
            if lost:
                self.dropped += lost
                self._on_drop(lost)
                log.warning("impression buffer full: %d impressions dropped", lost)
            self._on_pending(len(self._buffer))
            self._cond.notify()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def close(self, timeout_s: float = 10.0) -> None:
        with self._cond:
            self._closing = True
            self._give_up_at = time.monotonic() + timeout_s
            self._cond.notify()
        self._thread.join(timeout_s + self.max_backoff_s)

    def _run(self) -> None:
        backoff = 0.05
        while True:
            with self._cond:
                while not self._buffer and not self._closing:
                    self._cond.wait()
                if not self._buffer:
                    return
                batch = [self._buffer[i] for i in range(min(self.max_batch, len(self._buffer)))]
            try:
                self._write(batch)
            except Exception as exc:  # the database is away: keep them, try again later
                log.warning("impressions not written yet (%s); retrying", exc)
                if self._closing and time.monotonic() > self._give_up_at:
                    log.error("shutting down: %d impressions not written", len(self._buffer))
                    return
                time.sleep(backoff)
                backoff = min(self.max_backoff_s, backoff * 2)
                continue
            backoff = 0.05
            with self._cond:
                for _ in batch:
                    self._buffer.popleft()
                self.written += len(batch)
                self._on_pending(len(self._buffer))
