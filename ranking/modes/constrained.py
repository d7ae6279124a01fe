"""The constrained-decoding loop shared by the label modes (score, incremental, direct).

Each step, for every request still running, the mode gives a token context and the label
token ids of the candidates still in play (in `Trace.remaining` order); one
`next_token_logprobs` call serves the whole batch; each request takes its choice.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Sequence

from ranking.backends.base import LMBackend
from ranking.modes.base import Deadline, ModeContext, RankingMode, Trace
from ranking.prompts import labels_for
from ranking.types import RankRequest, RankResult


class ConstrainedMode(RankingMode):
    """A mode whose every step is one constrained next-token choice among labels."""

    eliminates = True

    def check(self, request: RankRequest, backend: LMBackend) -> None:
        labels_for(backend.tokenizer, len(request.candidates))

    @abstractmethod
    def prepare(self, request: RankRequest, backend: LMBackend) -> object:
        """Per-request data computed once (prompt ids, labels)."""

    @abstractmethod
    def step_input(
        self, trace: Trace, prepared: object, backend: LMBackend
    ) -> tuple[list[int], list[int], list[str]]:
        """(context token ids, allowed label token ids, label strings) for the next step,
        the allowed ids in `trace.remaining` order."""

    def shared_prompt(self, prepared: object) -> str | None:
        return None

    def rank_batch(
        self,
        requests: Sequence[RankRequest],
        deadlines: Sequence[Deadline],
        backend: LMBackend,
        ctx: ModeContext,
    ) -> list[RankResult]:
        traces = [Trace(r, d, self.eliminates) for r, d in zip(requests, deadlines, strict=True)]
        prepared: list[object] = [None] * len(traces)
        first = True
        while True:
            live = [i for i, t in enumerate(traces) if not t.done]
            if not live:
                break
            for i in live:
                if prepared[i] is None and not traces[i].deadline.would_pass(0.0):
                    prepared[i] = self.prepare(traces[i].request, backend)
            inputs = {
                i: self.step_input(traces[i], prepared[i], backend)
                for i in live
                if prepared[i] is not None
            }
            n_tokens = sum(len(c) for c, _, _ in inputs.values())
            kind = f"{self.name}:first" if first else f"{self.name}:step"
            estimate = ctx.costs.estimate(kind, n_tokens if first else 1.0)
            live = [i for i in live if i in inputs and not traces[i].stop_if_late(estimate)]
            for i, t in enumerate(traces):
                if prepared[i] is None:
                    t.stop_if_late(0.0)  # deadline passed before the request even started
            if not live:
                break
            t0 = time.perf_counter()
            out = backend.next_token_logprobs(
                [inputs[i][0] for i in live], [inputs[i][1] for i in live]
            )
            ms = (time.perf_counter() - t0) * 1000.0
            ctx.costs.record(kind, ms / max(n_tokens, 1) if first else ms)
            first = False
            for i, raw in zip(live, out, strict=True):
                traces[i].generated_tokens += 1
                traces[i].take_logprobs(raw, response_labels=inputs[i][2])
        return [
            t.result(
                self.name,
                backend.model_id,
                has_propensity=True,
                prompt=self.shared_prompt(p) if p is not None else None,
            )
            for t, p in zip(traces, prepared, strict=True)
        ]
