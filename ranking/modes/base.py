"""The interface every ranking mode implements, and the pieces they share.

A mode ranks a batch of requests with one LM backend and returns one RankResult per
request. Modes batch the model calls of different requests together (one forward pass per
step for the whole batch) and honour each request's deadline on its own.

Shared rules (documented once, here):

* **choice** — greedy (argmax, ties to the first) when `temperature` is 0, else a draw from
  softmax(log p / T) over the allowed options with a generator seeded by `request.seed`.
* **step probability** — the probability, under the distribution the choice was drawn from,
  of the option chosen; for greedy requests the model's own (T = 1) distribution is
  reported. `log_propensity` is the sum of the logs of the step probabilities.
* **score fusion** (`ranking.fusion`) — the label modes add -alpha x the z-scored retrieval
  score (+ for `direct`, which places) to each step's log-probs over the candidates in play
  and renormalise; choice, step probability and `log_propensity` above are then those of
  the fused distribution. The request's `fusion_alpha` overrides `RankOptions.fusion_alpha`.
  `fusion.RETRIEVAL_ORDER` (+inf) is the retrieval order itself: `Trace` takes every step
  from `retrieval_order` with probability 1 before any model call, so none is made.
* **garbage log-probs** — NaN, +-inf, wrong-length or empty arrays from a backend are
  replaced by a uniform distribution; the step is marked ``matched="fallback"`` and counted
  in ``invalid_answers``.
* **forced order** (`request.forced_order`) — each step takes the candidate that order
  gives it instead of choosing; its step probability is the one above, so the result's
  `log_propensity` is the exact log-probability of that ranking under the request's policy
  (fusion and abstention included; under `RETRIEVAL_ORDER` 0 for the retrieval order and
  -inf for any other). Replay scores logged rankings this way.
* **deadline** — before each model call a request whose deadline would pass (elapsed time
  plus the running estimate of that call's cost) stops; the candidates still in play are
  ordered by the last step's probabilities (least likely to be eliminated first), or, with no
  step yet, by retrieval score (higher first, ties in input order); ``fallback`` is then
  True and `log_propensity` covers the steps the model made.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ranking.backends.base import LMBackend
from ranking.fusion import FusionPlan, abstain, fuse_step
from ranking.types import Candidate, RankRequest, RankResult, Step


@dataclass
class RankOptions:
    """Engine-wide knobs (per-request ones live on RankRequest)."""

    reason_max_new_tokens: int = 1024
    batch_size: int = 8
    speculate: int = 0  # labels guessed per model call in incremental / direct (0: off)
    fusion_alpha: float = 0.0  # score fusion weight of requests that do not set their own
    fusion_abstain_below: int = 0  # ranking.fusion's abstention, for requests that set none


class Deadline:
    """A request's time budget, started when the engine received it."""

    def __init__(self, deadline_ms: float | None, start: float | None = None) -> None:
        self.deadline_ms = deadline_ms
        self.start = time.perf_counter() if start is None else start

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.start) * 1000.0

    def would_pass(self, estimate_ms: float = 0.0) -> bool:
        if self.deadline_ms is None:
            return False
        return self.deadline_ms <= 0 or self.elapsed_ms() + estimate_ms > self.deadline_ms


@dataclass
class CostModel:
    """Running estimates (exponential moving averages) of model-call costs in ms, per kind
    ("prefill" is per prompt token, the others per call)."""

    alpha: float = 0.3
    values: dict[str, float] = field(default_factory=dict)

    def record(self, kind: str, ms: float) -> None:
        old = self.values.get(kind)
        self.values[kind] = ms if old is None else (1 - self.alpha) * old + self.alpha * ms

    def estimate(self, kind: str, units: float = 1.0) -> float:
        return self.values.get(kind, 0.0) * units

    def skipped(self, kind: str, factor: float = 0.7) -> None:
        """A call was skipped because its estimate passed a deadline: shrink the estimate,
        so that a one-off slow call (a cold start, a busy machine) cannot keep every later
        request on the fallback path without the model ever being measured again."""
        if kind in self.values:
            self.values[kind] *= factor


@dataclass
class ModeContext:
    options: RankOptions
    costs: CostModel


class RankingMode(ABC):
    """One way of turning (request, LM) into a ranking."""

    name: str = ""

    @abstractmethod
    def rank_batch(
        self,
        requests: Sequence[RankRequest],
        deadlines: Sequence[Deadline],
        backend: LMBackend,
        ctx: ModeContext,
    ) -> list[RankResult]:
        """One RankResult per request, each a valid permutation of its candidate ids."""

    def check(self, request: RankRequest, backend: LMBackend) -> None:  # noqa: B027
        """Raise RequestError when this mode cannot serve the request with this backend."""


# ---------------------------------------------------------------- shared helpers


def sanitize_logprobs(raw: object, n: int) -> tuple[np.ndarray, bool]:
    """Normalised log-probs over n options and whether the backend's array was usable."""
    try:
        lp = np.asarray(raw, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        lp = np.array([])
    if lp.shape != (n,) or np.isnan(lp).any() or np.isposinf(lp).any() or np.isneginf(lp).all():
        return np.full(n, -math.log(n)), False
    m = lp.max()
    return lp - (m + math.log(np.exp(lp - m).sum())), True


def choose(lp: np.ndarray, temperature: float, rng: np.random.Generator) -> tuple[int, float]:
    """(index, probability of that index under the distribution it was drawn from)."""
    if temperature <= 0:
        i = int(np.argmax(lp))
        return i, float(math.exp(lp[i]))
    z = lp / temperature
    z = z - z.max()
    p = np.exp(z)
    p /= p.sum()
    i = int(rng.choice(len(p), p=p))
    return i, float(p[i])


def tempered(lp: np.ndarray, temperature: float) -> np.ndarray:
    """log softmax(lp / T): the log-probabilities a request at temperature T draws from
    (T = 0, greedy, reports the model's own T = 1 distribution: the shared rules above)."""
    z = np.asarray(lp, dtype=np.float64) / (temperature if temperature > 0 else 1.0)
    m = z.max()
    return z - (m + math.log(np.exp(z - m).sum()))


def retrieval_order(candidates: Sequence[Candidate], indices: Sequence[int]) -> list[int]:
    """Indices sorted by retrieval score, best first; unscored after scored; stable."""
    return sorted(
        indices,
        key=lambda i: (candidates[i].score is None, -(candidates[i].score or 0.0), i),
    )


def _step_order(request: RankRequest, eliminates: bool) -> list[int]:
    """The candidate indices `request.forced_order` has the steps take: its order reversed
    when each step eliminates the worst, as it is when each places the best."""
    index = {cid: i for i, cid in enumerate(request.ids)}
    forced = [index[cid] for cid in request.forced_order]
    return forced[::-1] if eliminates else forced


class Trace:
    """One request's run: what was chosen, with which probability, and how it ends.

    `eliminates=True`: each step removes the worst remaining candidate (IRanker);
    `eliminates=False`: each step places the best remaining one (DRanker)."""

    def __init__(
        self,
        request: RankRequest,
        deadline: Deadline,
        eliminates: bool,
        fusion: FusionPlan | None = None,
    ) -> None:
        self.request = request
        self.fusion = fusion or FusionPlan()
        self.deadline = deadline
        self.eliminates = eliminates
        self.remaining = list(range(len(request.candidates)))
        self.chosen: list[int] = []
        self.steps: list[Step] = []
        self.last_lp: dict[int, float] = {}
        self.log_propensity = 0.0
        self.invalid = 0
        self.generated_tokens = 0
        self.stopped = False
        self.rng = np.random.default_rng(request.seed)
        # `request.forced_order` as the candidate indices the steps take, in step order
        self.forced = _step_order(request, eliminates) if request.forced_order else []
        if self.fusion.follows_retrieval:
            self.follow_retrieval()

    def follow_retrieval(self) -> None:
        """Take every step the retrieval order's way (`fusion.RETRIEVAL_ORDER`): eliminate
        the candidate it ranks last (place the one it ranks first), each with probability
        1, so the ranking is that order and its log-propensity 0."""
        best_first = retrieval_order(self.request.candidates, self.remaining)
        for idx in (best_first[::-1] if self.eliminates else best_first)[:-1]:
            if self.forced:  # a forced order other than this one has probability 0
                taken = self.forced[len(self.chosen)]
                prob = 1.0 if taken == idx else 0.0
                self.take(self.remaining.index(taken), prob, matched="retrieval",
                          log_prob=0.0 if prob else -math.inf)  # fmt: skip
            else:
                self.take(self.remaining.index(idx), 1.0, matched="retrieval")

    @property
    def done(self) -> bool:
        return self.stopped or len(self.remaining) <= 1

    def take(
        self,
        pos: int,
        prob: float | None,
        *,
        matched: str,
        prompt: str | None = None,
        response: str | None = None,
        step_lp: np.ndarray | None = None,
        log_prob: float | None = None,
    ) -> None:
        """Record the choice of remaining[pos] (`log_prob`: its exact log-probability, where
        `prob` may have underflowed)."""
        idx = self.remaining[pos]
        if step_lp is not None:
            self.last_lp = {i: float(v) for i, v in zip(self.remaining, step_lp, strict=True)}
        self.steps.append(
            Step(
                eliminated=self.request.candidates[idx].id,
                prob=prob,
                remaining=len(self.remaining),
                prompt=prompt,
                response=response,
                matched=matched,
            )
        )
        if log_prob is not None:
            self.log_propensity += log_prob
        elif prob is not None:
            self.log_propensity += math.log(max(prob, 1e-300))
        if matched == "fallback":
            self.invalid += 1
        self.chosen.append(idx)
        self.remaining.pop(pos)

    def take_logprobs(self, raw: object, *, response_labels: Sequence[str] | None = None) -> None:
        """One constrained step from a backend's log-probs over the remaining candidates,
        fused with the retrieval scores when the request's plan says so."""
        lp, ok = sanitize_logprobs(raw, len(self.remaining))
        if self.fusion.bias is not None:
            mask = None if self.fusion.abstain is None else self.fusion.abstain[self.remaining]
            lp = fuse_step(abstain(lp, mask), self.fusion.bias[self.remaining])
        log_prob = None
        if self.forced:  # take the forced candidate, with its probability under this step
            pos = self.remaining.index(self.forced[len(self.chosen)])
            log_prob = float(tempered(lp, self.request.temperature)[pos])
            prob = math.exp(log_prob)
        else:
            pos, prob = choose(lp, self.request.temperature, self.rng)
        self.take(
            pos,
            prob,
            matched="constrained" if ok else "fallback",
            response=response_labels[pos] if response_labels else None,
            step_lp=lp,
            log_prob=log_prob,
        )

    def stop_if_late(self, estimate_ms: float) -> bool:
        if not self.done and self.deadline.would_pass(estimate_ms):
            self.stopped = True
        return self.stopped

    def order(self) -> list[str]:
        """Best first: a permutation of the request's ids, whatever happened."""
        cands = self.request.candidates
        if self.last_lp:
            # eliminating: a low probability of elimination is good; placing: a high one is
            sign = 1.0 if self.eliminates else -1.0
            rest = sorted(self.remaining, key=lambda i: (sign * self.last_lp.get(i, 0.0), i))
        else:
            rest = retrieval_order(cands, self.remaining)
        idx = rest + self.chosen[::-1] if self.eliminates else self.chosen + rest
        return [cands[i].id for i in idx]

    def result(
        self,
        mode: str,
        model: str,
        *,
        has_propensity: bool,
        prompt: str | None = None,
    ) -> RankResult:
        return RankResult(
            order=self.order(),
            steps=self.steps,
            mode=mode,
            model=model,
            elapsed_ms=self.deadline.elapsed_ms(),
            log_propensity=self.log_propensity if has_propensity else None,
            fallback=self.stopped,
            invalid_answers=self.invalid,
            generated_tokens=self.generated_tokens,
            prompt=prompt,
            fusion_alpha=self.fusion.alpha,
            fusion_note=self.fusion.note,
            fusion_abstained=self.abstained(),
            fusion_abstain_below=self.fusion.abstain_below,
        )

    def abstained(self) -> tuple[str, ...]:
        """Ids of the candidates the fused steps gave no opinion of the ranker's own."""
        mask = self.fusion.abstain
        if mask is None:
            return ()
        return tuple(c.id for c, m in zip(self.request.candidates, mask, strict=True) if m)
