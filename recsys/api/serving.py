"""What a running server holds — the ranker behind its micro-batcher, the retrieval
index — and how a newly promoted version replaces it without a restart or a failed request.

A `Slot` is one loaded ranker with its batcher. Reloading builds the new slot while the
old one keeps serving, swaps the reference (new requests go to the new slot), then closes
the old batcher, which first finishes every request already queued on it. A poll thread
(every `reload_poll_s`) or `POST /v1/admin/reload` triggers the check: when the spec
resolves to another version than the one served, the new one is loaded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from ranking.engine import Ranker
from ranking.types import RankRequest, RankResult
from recsys.batcher import BatcherClosed, MicroBatcher

log = logging.getLogger(__name__)
# () -> (the version the settings' spec names now); load(version) -> a ranker for it
VersionProbe = Callable[[], str | None]
RankerLoader = Callable[[], Ranker]


@dataclass
class Slot:
    ranker: Ranker
    batcher: MicroBatcher
    version: str | None


class RankerHolder:
    def __init__(
        self,
        ranker: Ranker,
        version: str | None,
        *,
        make_batcher: Callable[[Ranker], MicroBatcher],
        probe: VersionProbe | None = None,
        loader: RankerLoader | None = None,
        on_swap: Callable[[Slot], None] = lambda slot: None,
    ) -> None:
        self._make_batcher, self._probe, self._loader = make_batcher, probe, loader
        self._on_swap = on_swap
        self.slot = Slot(ranker, make_batcher(ranker), version)
        self._lock = threading.Lock()  # one reload at a time
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        on_swap(self.slot)

    def submit(self, request: RankRequest) -> tuple[Slot, Future[RankResult]]:
        """Queue a request on the current slot (again on the new one when a reload closed
        the slot between reading it and queueing)."""
        for _ in range(3):
            slot = self.slot
            future = slot.batcher.submit(request)
            if not (future.done() and isinstance(future.exception(), BatcherClosed)):
                break
        return slot, future

    def reload_if_changed(self) -> bool:
        """Load and swap in the version the spec names now, if it is not the one served."""
        if self._probe is None or self._loader is None:
            return False
        with self._lock:
            version = self._probe()
            if version == self.slot.version:
                return False
            ranker = self._loader()
            old, self.slot = self.slot, Slot(ranker, self._make_batcher(ranker), version)
            self._on_swap(self.slot)
            log.info("serving ranker %s (version %s)", ranker.model_id, version)
        old.batcher.close()  # finishes what was queued on the old model
        return True

    def start_polling(self, every_s: float) -> None:
        if every_s <= 0 or self._probe is None:
            return

        def poll() -> None:
            while not self._stop.wait(every_s):
                try:
                    self.reload_if_changed()
                except Exception as exc:  # keep serving the old version
                    log.warning("ranker reload failed, still serving the old one: %s", exc)

        self._poller = threading.Thread(target=poll, name="ranker-reload", daemon=True)
        self._poller.start()

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
        self.slot.batcher.close()
