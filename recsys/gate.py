"""The evaluation gate: a tuned ranker is promoted only when it is measurably better.

A ranker version registered by `recsys train` carries, in its metrics, the reciprocal rank
of every held-out validation user as it would be served (`val_rr`), the same for the model
it was tuned from as that is served now (`val_rr_baseline`: for the zero-shot default,
served at the retrieval order itself, the retrieval order) and for the retrieval order
alone (`val_rr_retrieval`): the `ValidationResults` training writes and the gate reads. The
gate compares the candidate with the promoted version on their common validation users
(or, when nothing is promoted or the promoted version has no per-user results, with the
model the candidate was tuned from):

* the mean paired difference in MRR (x100) must be at least `margin`, and
* its paired bootstrap 95% interval (resampling users) must exclude zero;
* and, with `require_beat_retrieval`, the candidate must not rank worse than the retrieval
  order it re-ranks (a re-ranker that makes retrieval worse is never promoted).

Otherwise the promotion is refused and the reason says which rule failed, with the numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from recsys.registry import GateDecision
from recsys.stats import paired_difference

MIN_COMMON_USERS = 10


@dataclass(frozen=True)
class ValidationResults:
    """The training -> gate contract: per-user reciprocal ranks on the held-out validation
    users of the policy as it would be served (`rr`), of the model it was tuned from as
    that is served now (`baseline`; the retrieval order for a zero-shot packaged model,
    recsys.resolver), and of the retrieval order it re-ranks (`retrieval`). Stored in a
    ranker version's metrics as `val_rr`, `val_rr_baseline` and `val_rr_retrieval`."""

    rr: dict[str, float]
    baseline: dict[str, float] | None = None
    retrieval: dict[str, float] | None = None

    def to_metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {"val_rr": dict(self.rr)}
        if self.baseline is not None:
            out["val_rr_baseline"] = dict(self.baseline)
        if self.retrieval is not None:
            out["val_rr_retrieval"] = dict(self.retrieval)
        return out

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any] | None) -> ValidationResults | None:
        """The results stored in a version's metrics; None when it has no `val_rr`."""
        if metrics is None or not isinstance(metrics.get("val_rr"), Mapping):
            return None

        def per_user(key: str) -> dict[str, float] | None:
            value = metrics.get(key)
            return dict(value) if isinstance(value, Mapping) else None

        return cls(
            dict(metrics["val_rr"]), per_user("val_rr_baseline"), per_user("val_rr_retrieval")
        )


def compare(
    candidate: Mapping[str, float], reference: Mapping[str, float], n_boot: int = 2000
) -> tuple[int, float, float, float]:
    """(n common users, mean diff, low, high), in MRR x 100 points."""
    users = sorted(set(candidate) & set(reference))
    if not users:
        return 0, 0.0, 0.0, 0.0
    ci = paired_difference([candidate[u] for u in users], [reference[u] for u in users],
                           n_boot=n_boot, seed=0)  # fmt: skip
    return len(users), 100 * ci.mean, 100 * ci.low, 100 * ci.high


def decide(
    candidate: ValidationResults | None,
    reference: ValidationResults | None,
    ref_name: str,
    margin: float,
    require_beat_retrieval: bool = True,
    n_boot: int = 2000,
) -> GateDecision:
    """Whether `candidate` may replace the version `reference` (named `ref_name`) belongs to;
    without a reference, it is compared with the model it was tuned from."""
    if candidate is None or not candidate.rr:
        return GateDecision(
            False,
            "the candidate has no per-user validation results (val_rr); "
            "register rankers through `recsys train`, or pass --force",
        )
    cand_rr = candidate.rr
    if reference is not None:
        ref_rr, against = reference.rr, ref_name
    elif candidate.baseline is not None:
        ref_rr, against = candidate.baseline, "the model it was tuned from, as served"
    else:
        return GateDecision(
            False,
            "nothing to compare the candidate with: no per-user results "
            "for the promoted model nor for the candidate's base model",
        )
    n, diff, low, high = compare(cand_rr, ref_rr, n_boot)
    if n < MIN_COMMON_USERS:
        return GateDecision(
            False,
            f"only {n} validation users in common with {against} "
            f"(need {MIN_COMMON_USERS}); validate both on the same users",
        )
    stats = f"ΔMRR {diff:+.2f} [{low:+.2f}, {high:+.2f}] over {n} users vs {against}"
    if diff < margin:
        return GateDecision(False, f"{stats}: below the margin of {margin:.2f} MRR points")
    if low <= 0:
        return GateDecision(False, f"{stats}: the 95% interval does not exclude zero")
    retrieval = candidate.retrieval
    if require_beat_retrieval and retrieval:
        n_r, d_r, lo_r, hi_r = compare(cand_rr, retrieval, n_boot)
        if n_r and d_r < 0:
            return GateDecision(
                False,
                f"{stats}, but it ranks worse than the retrieval order "
                f"(ΔMRR {d_r:+.2f} [{lo_r:+.2f}, {hi_r:+.2f}])",
            )
    return GateDecision(True, stats)


def evaluation_gate(candidate, current) -> GateDecision:  # type: ignore[no-untyped-def]
    """Registry gate (recsys.registry.add_gate): applies to `ranker` versions only."""
    if candidate.kind != "ranker":
        return GateDecision(True, f"no evaluation gate for kind {candidate.kind}")
    from recsys.settings import get_settings

    s = get_settings()
    ref = ValidationResults.from_metrics(current.metrics) if current is not None else None
    name = f"promoted {current.version}" if current is not None else "promoted"
    cand = ValidationResults.from_metrics(candidate.metrics)
    return decide(cand, ref, name, s.gate_margin, s.gate_beat_retrieval)
