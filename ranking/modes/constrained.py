"""The constrained-decoding loop shared by the label modes (score, incremental, direct).

Each step, for every request still running, the mode gives a token context and the label
token ids of the candidates still in play (in `Trace.remaining` order); one model call
serves the whole batch; each request takes its choice.

**Speculation** (single-sequence modes on a backend with `efficient_continuation`): a
decoding step reads every weight of the model to produce one token, so a step costs about
the same whether it scores 1 or 8 positions. Each call therefore also appends the labels the
previous step's distribution ranks most likely to come next (g0, g1, ...) and gets the
distribution at every appended position in the same forward pass. The request takes its
real choice from position 0; while that choice equals the guess, the distribution at the
next position was computed on exactly the real prefix, so it takes that step too; at the
first mismatch it stops (the backend drops the rejected tail). Every distribution used is
the exact one of the real prefix, so results and propensities are identical to one-step
decoding (same choices, same random draws); only the number of model calls falls. With
score fusion (`ranking.fusion`) every position's distribution is fused over the candidates
in play at that position before the choice is taken, so a guess is confirmed or rejected
by the fused policy, exactly as one-step decoding would choose. A forced order
(`RankRequest.forced_order`) guesses every remaining step, all confirmed.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Sequence

import numpy as np

from ranking.backends.base import LMBackend
from ranking.fusion import plan_fusion
from ranking.modes.base import Deadline, ModeContext, RankingMode, Trace
from ranking.prompts import labels_for, style_of
from ranking.types import RankRequest, RankResult


class ConstrainedMode(RankingMode):
    """A mode whose every step is one constrained next-token choice among labels."""

    eliminates = True
    speculative = False  # True when step t+1's context is step t's plus the chosen label

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

    def label_of(self, prepared: object, index: int) -> tuple[str, int]:
        """(label, token id) of candidate `index`; speculative modes implement it."""
        raise NotImplementedError

    def shared_prompt(self, prepared: object) -> str | None:
        return None

    def rank_batch(
        self,
        requests: Sequence[RankRequest],
        deadlines: Sequence[Deadline],
        backend: LMBackend,
        ctx: ModeContext,
    ) -> list[RankResult]:
        fusion, below = ctx.options.fusion_alpha, ctx.options.fusion_abstain_below
        style = style_of(backend)
        traces = [
            Trace(r, d, self.eliminates,
                  plan_fusion(r, fusion, eliminates=self.eliminates, default_abstain=below,
                              unknown=style.unknown(r)))
            for r, d in zip(requests, deadlines, strict=True)
        ]  # fmt: skip
        prepared: list[object] = [None] * len(traces)
        can_guess = self.speculative and getattr(backend, "efficient_continuation", False)
        speculate = ctx.options.speculate if can_guess else 0
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
            ready = [i for i in live if i in inputs]
            # stopped by the estimate alone (they still had time for a free call)
            by_estimate = [i for i in ready if not traces[i].deadline.would_pass(0.0)]
            live = [i for i in ready if not traces[i].stop_if_late(estimate)]
            if set(by_estimate) - set(live):
                ctx.costs.skipped(kind)
            for i, t in enumerate(traces):
                if prepared[i] is None:
                    t.stop_if_late(0.0)  # deadline passed before the request even started
            if not live:
                break
            guesses = {
                i: self._guesses(traces[i], speculate, can_guess) if not first else [] for i in live
            }
            t0 = time.perf_counter()
            if any(guesses.values()):
                out = backend.continuation_logprobs(
                    [inputs[i][0] for i in live],
                    [[self.label_of(prepared[i], g)[1] for g in guesses[i]] for i in live],
                    [self._allowed_along(traces[i], prepared[i], guesses[i]) for i in live],
                )
            else:
                single = backend.next_token_logprobs(
                    [inputs[i][0] for i in live], [inputs[i][1] for i in live]
                )
                out = [[lp] for lp in single]
            ms = (time.perf_counter() - t0) * 1000.0
            ctx.costs.record(kind, ms / max(n_tokens, 1) if first else ms)
            first = False
            for i, lps in zip(live, out, strict=True):
                self._take_along(traces[i], prepared[i], guesses[i], lps, inputs[i][2])
        return [
            t.result(
                self.name,
                backend.model_id,
                has_propensity=True,
                prompt=self.shared_prompt(p) if p is not None else None,
            )
            for t, p in zip(traces, prepared, strict=True)
        ]

    # ---------------------------------------------------------------- speculation

    @staticmethod
    def _guesses(trace: Trace, k: int, can_guess: bool = True) -> list[int]:
        """Candidate indices most likely to be chosen next, by the last step's probabilities
        (the real choice of this step first); at most one per remaining model step after it.
        A forced order is known in advance: every remaining step is guessed, and right, so
        scoring a ranking costs the prefill and one continuation call."""
        if trace.forced and can_guess:
            return trace.forced[len(trace.chosen) :][: len(trace.remaining) - 2]
        k = min(k, len(trace.remaining) - 2)
        if k <= 0 or not trace.last_lp:
            return []
        ranked = sorted(trace.remaining, key=lambda i: (-trace.last_lp.get(i, -np.inf), i))
        return ranked[:k]

    def _allowed_along(self, trace: Trace, prepared: object, guesses: list[int]) -> list[list[int]]:
        """Allowed label ids at each position: all remaining, then minus each guess in turn."""
        out, left = [], list(trace.remaining)
        for g in [*guesses, None]:
            out.append([self.label_of(prepared, i)[1] for i in left])
            if g is not None:
                left.remove(g)
        return out

    def _take_along(
        self,
        trace: Trace,
        prepared: object,
        guesses: list[int],
        lps: list[np.ndarray],
        labels: list[str],
    ) -> None:
        """Take the step at position 0, then one more per guess the model confirmed."""
        trace.generated_tokens += 1
        trace.take_logprobs(lps[0], response_labels=labels)
        for j, guess in enumerate(guesses):
            if trace.done or trace.chosen[-1] != guess:
                break
            trace.generated_tokens += 1
            names = [self.label_of(prepared, i)[0] for i in trace.remaining]
            trace.take_logprobs(lps[j + 1], response_labels=names)
