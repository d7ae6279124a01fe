"""Score fusion: the ranker's step distributions biased by the retrieval score.

One definition, used by the served engine (`ranking.modes`) and by training / validation
(`ranking.rl.policy`), so an alpha measured in training means exactly the same when served.

For candidates c with retrieval scores s_c, z_c is the z-score of s_c over the request's
candidates (sample standard deviation, n - 1; all scores equal -> z = 0). Each step's
log-probabilities over the candidates still in play get

    bias_c = -alpha * z_c   (eliminating: a low score is eliminated earlier)
    bias_c = +alpha * z_c   (placing, `direct`: a high score is placed earlier)

added and are renormalised over those candidates (log-softmax), so the fused step
distribution, its probabilities and the ranking's log-propensity are the exact ones of the
fused policy. alpha = 0 is the ranker alone; a large alpha tends to the retrieval order,
the ranker still deciding between scores that are close.

alpha = RETRIEVAL_ORDER (+inf) is the retrieval order itself, exactly: by descending score,
ties (and candidates without a score, after the scored ones) in the request's order — the
order `ranking.modes.base.retrieval_order`, the deadline fallback and the training's
retrieval baseline all use. Every step takes the candidate that order puts last (first, for
`direct`) with probability 1, so the log-propensity is 0 (a deterministic policy) and the
model is not asked at all. It is the serving default of a model with no measured weight
(recsys.resolver): such a model can then never rank worse than the order it re-ranks.
Training cannot use it (the ranker has no influence to learn from): `fusion_bias` refuses
it.

Abstention (`RankRequest.fusion_abstain_below` = k > 0, with a finite weight): a candidate
whose signal `interactions` (the item's interactions in the log the ranker learned from) is
below k gets no opinion of its own from the ranker. Before the bias is added, its step
log-probability is replaced by the mean of the other in-play candidates' (`abstain`), so the
fusion signal alone places it relative to a typical candidate. Why: a hybrid LM reads an
item through its CF vector, and a vector fitted on a handful of interactions is noise the
fusion would add to a signal that has content features for such items (docs/RESULTS.md 0j).
Each step is still one distribution, so the log-propensity stays exact. Candidates without
the signal never abstain. A candidate the ranker knows nothing of (a hybrid model's item
newer than its vectors, `PromptStyle.unknown`) abstains whatever k: the model would
otherwise rank it as the rare items it was trained on, which were negatives (measured:
`benchmarks/new_items.py`). It is a serving rule: training (`ranking.rl`) fuses without it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ranking.types import RankRequest

# the weight that is the retrieval order itself (module doc); only a ranker's default
RETRIEVAL_ORDER = math.inf

NOTE_NO_SCORE = "not applied: a candidate has no retrieval score"
ABSTAIN_SIGNAL = "interactions"  # Candidate.signals key the abstention rule reads
NOTE_REASON_MODE = "not applied: reason mode generates free text, with no step distribution"


def zscores(scores: Sequence[float], ddof: int = 1) -> np.ndarray:
    """z-scores over the candidates (by default n - 1 in the standard deviation, as torch's
    default `std` the trainer first measured with); zeros when all scores are equal or
    n < 2."""
    s = np.asarray(scores, dtype=np.float64)
    if len(s) < 2:
        return np.zeros(len(s))
    std = s.std(ddof=ddof)
    return (s - s.mean()) / std if std > 0 else np.zeros(len(s))


def fusion_bias(
    scores: Sequence[float | None], alpha: float, *, eliminates: bool = True
) -> np.ndarray | None:
    """Per-candidate bias on the step log-probs (see the module doc), or None when there is
    nothing to fuse: alpha is 0 or some candidate has no score. `RETRIEVAL_ORDER` has no
    finite bias: a ValueError (the engine follows that order instead, `plan_fusion`)."""
    if not math.isfinite(alpha):
        raise ValueError(
            f"fusion alpha {alpha!r} has no finite bias: RETRIEVAL_ORDER is the retrieval "
            "order itself (ranking.fusion.plan_fusion), nothing to fuse or train with"
        )
    if alpha == 0 or any(s is None for s in scores):
        return None
    z = zscores([float(s) for s in scores])  # type: ignore[arg-type]
    return (-alpha if eliminates else alpha) * z


def abstain_threshold(request: RankRequest, default: int = 0) -> int:
    """The request's own `fusion_abstain_below`, else the ranker's `default`."""
    return default if request.fusion_abstain_below is None else request.fusion_abstain_below


def abstaining(request: RankRequest, default: int = 0) -> np.ndarray | None:
    """Per candidate (input order): True where the ranker abstains (module doc; `default`:
    the ranker's threshold for requests that set none); None when no candidate does."""
    below = abstain_threshold(request, default)
    if not below:
        return None
    counts = [c.signals.get(ABSTAIN_SIGNAL) for c in request.candidates]
    mask = np.array([n is not None and float(n) < below for n in counts], dtype=bool)
    return mask if mask.any() else None


def abstain(lp: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The step's log-probs with the masked candidates' set to the mean of the others'
    (all masked: all equal, the ranker has no opinion at all). Not renormalised: `fuse_step`
    does that after adding the bias."""
    if mask is None or not mask.any():
        return lp
    out = np.asarray(lp, dtype=np.float64).copy()
    out[mask] = out[~mask].mean() if not mask.all() else 0.0
    return out


def fuse_step(lp: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """Log-probs over the candidates in play plus their biases, renormalised (log-softmax)."""
    if bias is None:
        return lp
    x = np.asarray(lp, dtype=np.float64) + bias
    m = x.max()
    return x - (m + math.log(np.exp(x - m).sum()))


@dataclass(frozen=True)
class FusionPlan:
    """What one request's ranking fuses with: `bias` per candidate (input order; None: no
    fusion), the weight applied (`alpha`, 0.0 when none; `RETRIEVAL_ORDER`: the retrieval
    order, no bias), when a weight was asked for but could not be applied, why (`note`),
    and the candidates the ranker abstains on (`abstain`, input order; None: none)."""

    bias: np.ndarray | None = None
    alpha: float = 0.0
    note: str | None = None
    abstain: np.ndarray | None = None  # candidates the ranker has no opinion of (module doc)
    abstain_below: int = 0  # the threshold that chose them (0: none), for the logs

    @property
    def follows_retrieval(self) -> bool:
        """The ranking is the retrieval order itself (alpha = RETRIEVAL_ORDER)."""
        return self.alpha == RETRIEVAL_ORDER


def plan_fusion(
    request: RankRequest,
    default_alpha: float,
    *,
    eliminates: bool = True,
    fusable: bool = True,
    default_abstain: int = 0,
    unknown: Sequence[bool] | None = None,
) -> FusionPlan:
    """The request's own `fusion_alpha` (and `fusion_abstain_below`) win over the ranker's
    defaults; `unknown` marks candidates the ranker abstains on whatever the threshold
    (module doc). `fusable=False`
    (free-text modes) and, for a finite weight, a candidate without a score turn fusion
    off, with a note. `RETRIEVAL_ORDER` needs no score: unscored candidates follow the
    scored ones, in the request's order."""
    alpha = default_alpha if request.fusion_alpha is None else request.fusion_alpha
    if alpha == 0:
        return FusionPlan()
    if not fusable:
        return FusionPlan(note=NOTE_REASON_MODE)
    if alpha == RETRIEVAL_ORDER:
        return FusionPlan(alpha=RETRIEVAL_ORDER)
    bias = fusion_bias([c.score for c in request.candidates], alpha, eliminates=eliminates)
    if bias is None:
        return FusionPlan(note=NOTE_NO_SCORE)
    mask = abstaining(request, default_abstain)
    if unknown is not None and any(unknown):
        new = np.asarray(unknown, dtype=bool)
        mask = new if mask is None else mask | new
    return FusionPlan(bias=bias, alpha=float(alpha), abstain=mask,
                      abstain_below=abstain_threshold(request, default_abstain))  # fmt: skip
