"""`reason` mode: the paper's procedure, one free generation per elimination step.

Each step prompts (system instruction + the model's chat template) with the candidates still
in play, lets the model think in <think> and answer in <answer>, and parses the last answer
(:mod:`ranking.parsing`: exact, fuzzy LCS >= 0.9, TF-IDF most similar, then the documented
fallback, counted in `invalid_answers`). n candidates cost n - 1 generations of up to
`RankOptions.reason_max_new_tokens` tokens each; generation stops at "</answer>".
There is no exact propensity for free text, so `log_propensity` is None.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from ranking.backends.base import LMBackend
from ranking.fusion import plan_fusion
from ranking.modes.base import Deadline, ModeContext, RankingMode, Trace
from ranking.parsing import parse_choice
from ranking.prompts import REASON_SYSTEM_PROMPT, reason_prompt, style_of
from ranking.types import RankRequest, RankResult


def step_prompt(request: RankRequest, remaining: list[int], backend: LMBackend) -> str:
    cands = [request.candidates[i] for i in remaining]
    style = style_of(backend, request)
    return backend.chat_prompt(reason_prompt(request, cands, style), system=REASON_SYSTEM_PROMPT)


class ReasonMode(RankingMode):
    name = "reason"

    def rank_batch(
        self,
        requests: Sequence[RankRequest],
        deadlines: Sequence[Deadline],
        backend: LMBackend,
        ctx: ModeContext,
    ) -> list[RankResult]:
        # free text has no step distribution to fuse: a ranker default weight is reported as
        # not applied (a request asking for it explicitly is rejected by validation)
        fusion = ctx.options.fusion_alpha
        traces = [
            Trace(r, d, True, plan_fusion(r, fusion, fusable=False))
            for r, d in zip(requests, deadlines, strict=True)
        ]
        max_new = ctx.options.reason_max_new_tokens
        while True:
            estimate = ctx.costs.estimate("reason:step")
            open_ = [t for t in traces if not t.done and not t.deadline.would_pass(0.0)]
            live = [t for t in traces if not t.done and not t.stop_if_late(estimate)]
            if len(live) < len(open_):
                ctx.costs.skipped("reason:step")
            if not live:
                break
            prompts = [step_prompt(t.request, t.remaining, backend) for t in live]
            # one generate call per temperature (and seed) group keeps sampling reproducible
            groups: dict[tuple[float, int | None], list[int]] = {}
            for k, t in enumerate(live):
                key = (t.request.temperature, _step_seed(t))
                groups.setdefault(key, []).append(k)
            t0 = time.perf_counter()
            gens: dict[int, object] = {}
            for (temp, seed), ks in groups.items():
                outs = backend.generate(
                    [prompts[k] for k in ks], max_new_tokens=max_new, temperature=temp, seed=seed
                )
                gens.update(zip(ks, outs, strict=True))
            ctx.costs.record("reason:step", (time.perf_counter() - t0) * 1000.0)
            for k, t in enumerate(live):
                gen = gens[k]
                cands = [t.request.candidates[i] for i in t.remaining]
                match = parse_choice(gen.text, cands)
                t.generated_tokens += gen.n_tokens
                t.take(match.index, None, matched=match.how, prompt=prompts[k], response=gen.text)
        return [t.result(self.name, backend.model_id, has_propensity=False) for t in traces]


def _step_seed(trace: Trace) -> int | None:
    """A per-step seed derived from the request's seed, so sampled runs are reproducible."""
    if trace.request.temperature <= 0 or trace.request.seed is None:
        return None
    return trace.request.seed * 1009 + len(trace.steps)
