"""The ranking facade: `load_ranker(...)` -> `Ranker`; `rank` / `rank_batch` any mode.

    from ranking.engine import load_ranker
    ranker = load_ranker(model="default", device="cpu")
    result = ranker.rank(request)               # RankResult
    results = ranker.rank_batch(requests)       # forward passes batched across requests
    lps = ranker.log_probabilities(requests, orders)  # log pi(order) under what it serves

Requests of the same mode are ranked together, `batch_size` at a time: each model call
(prefill, constrained step, or generation) serves the whole group. Each request keeps its
own deadline, counted from the moment `rank` / `rank_batch` received it.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import weakref
from collections.abc import Callable, Sequence

from ranking.backends.base import LMBackend
from ranking.errors import RequestError
from ranking.loading import load_backend
from ranking.modes import MODES, Deadline, RankingMode, RankOptions
from ranking.modes.base import CostModel, ModeContext
from ranking.types import (
    RankRequest,
    RankResult,
    abstain_error,
    is_valid_abstain,
    is_valid_alpha,
)

# A backend holds mutable state (its KV cache), so calls into one backend are serialised,
# whichever Ranker (or thread, e.g. an API worker) makes them.
_BACKEND_LOCKS: weakref.WeakKeyDictionary[LMBackend, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _lock_for(backend: LMBackend) -> threading.Lock:
    with _LOCKS_GUARD:
        lock = _BACKEND_LOCKS.get(backend)
        if lock is None:
            lock = _BACKEND_LOCKS[backend] = threading.Lock()
        return lock


class Ranker:
    """Ranks RankRequests with one LM backend, in any mode."""

    def __init__(
        self,
        backend: LMBackend,
        *,
        batch_size: int = 8,
        reason_max_new_tokens: int = 1024,
        speculate: int = 0,
        fusion_alpha: float = 0.0,
        fusion_abstain_below: int = 0,
    ) -> None:
        if not is_valid_alpha(fusion_alpha, retrieval_order=True):
            raise RequestError(
                f"fusion_alpha must be a finite number >= 0 or RETRIEVAL_ORDER (inf), "
                f"got {fusion_alpha!r}"
            )
        if not is_valid_abstain(fusion_abstain_below):
            raise RequestError(abstain_error(fusion_abstain_below))
        self.backend = backend
        self.options = RankOptions(
            reason_max_new_tokens=reason_max_new_tokens,
            batch_size=max(1, batch_size),
            speculate=max(0, speculate),
            fusion_alpha=float(fusion_alpha),
            fusion_abstain_below=fusion_abstain_below,
        )
        self.costs = CostModel()
        self.modes: dict[str, RankingMode] = {name: cls() for name, cls in MODES.items()}

    @property
    def fusion_alpha(self) -> float:
        """The score-fusion weight of requests that do not set `fusion_alpha` themselves."""
        return self.options.fusion_alpha

    @property
    def model_id(self) -> str:
        return self.backend.model_id

    def rank(self, request: RankRequest) -> RankResult:
        return self.rank_batch([request])[0]

    def rank_batch(
        self,
        requests: Sequence[RankRequest],
        progress: bool = False,
        on_ranked: Callable[[int], None] | None = None,
    ) -> list[RankResult]:
        """One RankResult per request, in the input order. `progress`: a tqdm bar;
        `on_ranked(n)`: called after each model batch with the number of requests it
        finished (they add up to len(requests)), for a caller's own progress display."""
        deadlines = [Deadline(r.deadline_ms) for r in requests]  # time waiting for the lock counts
        for r in requests:  # fail fast, before any model work, on requests a mode cannot serve
            self.modes[r.mode].check(r, self.backend)
        with _lock_for(self.backend):
            return self._rank_batch(requests, deadlines, progress, on_ranked)

    def log_probabilities(
        self,
        requests: Sequence[RankRequest],
        orders: Sequence[Sequence[str]],
        on_ranked: Callable[[int], None] | None = None,
    ) -> list[float]:
        """log pi(order | request) of each ranking (best first, a permutation of the
        request's ids) under the policy this ranker serves the request with: its mode, prompt
        style, backend, fusion weight and abstention, at the request's temperature (0: the
        model's own T = 1 distribution). Each step is forced along the order
        (`RankRequest.forced_order`), batched as `rank_batch`; no deadline applies. -inf
        for an order the policy never produces (under `RETRIEVAL_ORDER`, any other than the
        retrieval order). Replay's off-policy estimates use it (recsys.replay)."""
        forced = [
            dataclasses.replace(r, forced_order=tuple(o), deadline_ms=None)
            for r, o in zip(requests, orders, strict=True)
        ]
        results = self.rank_batch(forced, on_ranked=on_ranked)
        return [float(res.log_propensity) for res in results]  # type: ignore[arg-type]

    def rank_each(self, requests: Sequence[RankRequest]) -> list[RankResult | Exception]:
        """Like `rank_batch`, but each request succeeds or fails on its own: a request a
        mode refuses, or one whose ranking raises, gets its exception in its slot while the
        others are ranked (together; a failing batch is retried one request at a time to
        find the culprit)."""
        out: list[RankResult | Exception | None] = [None] * len(requests)
        good: list[int] = []
        for i, r in enumerate(requests):
            try:
                self.modes[r.mode].check(r, self.backend)
                good.append(i)
            except Exception as exc:  # refused before any model work
                out[i] = exc
        try:
            for i, res in zip(good, self.rank_batch([requests[i] for i in good]), strict=True):
                out[i] = res
        except Exception:
            for i in good:
                try:
                    out[i] = self.rank(requests[i])
                except Exception as exc:
                    out[i] = exc
        return out  # type: ignore[return-value]

    def _rank_batch(
        self,
        requests: Sequence[RankRequest],
        deadlines: list[Deadline],
        progress: bool,
        on_ranked: Callable[[int], None] | None = None,
    ) -> list[RankResult]:
        ctx = ModeContext(self.options, self.costs)
        results: list[RankResult | None] = [None] * len(requests)
        bar = _progress(len(requests), progress)
        by_mode: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            by_mode.setdefault(r.mode, []).append(i)
        size = self.options.batch_size
        for mode, idx in by_mode.items():
            # similar lengths in one batch waste less padding
            idx = sorted(idx, key=lambda i: len(requests[i].candidates))
            for start in range(0, len(idx), size):
                chunk = idx[start : start + size]
                out = self.modes[mode].rank_batch(
                    [requests[i] for i in chunk], [deadlines[i] for i in chunk], self.backend, ctx
                )
                for i, res in zip(chunk, out, strict=True):
                    results[i] = res
                if bar is not None:
                    bar.update(len(chunk))
                if on_ranked is not None:
                    on_ranked(len(chunk))
        if bar is not None:
            bar.close()
        return results  # type: ignore[return-value]


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="ranking", unit="req")


def load_ranker(
    model: str | os.PathLike[str] = "default",
    device: str = "auto",
    backend: str = "transformers",
    *,
    dtype: str = "auto",
    batch_size: int = 8,
    reason_max_new_tokens: int = 1024,
    speculate: int = 0,
    fusion_alpha: float = 0.0,
    threads: int | None = None,
    fusion_abstain_below: int = 0,
) -> Ranker:
    """Load the backend for `model` (see ranking.loading) and wrap it in a Ranker;
    `fusion_alpha` is the default score-fusion weight (ranking.fusion; 0: none;
    RETRIEVAL_ORDER: the retrieval order, no model call); `threads`
    torch's CPU threads (None: torch's default); `fusion_abstain_below` the default
    abstention threshold (ranking.fusion; 0: never)."""
    return Ranker(
        load_backend(model, device=device, backend=backend, dtype=dtype, threads=threads),
        batch_size=batch_size,
        reason_max_new_tokens=reason_max_new_tokens,
        speculate=speculate,
        fusion_alpha=fusion_alpha,
        fusion_abstain_below=fusion_abstain_below,
    )
