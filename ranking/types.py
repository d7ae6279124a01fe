"""The vocabulary of the ranking stage: a request in, a result out.

Every ranker mode and every LM backend takes and returns these. They are plain
frozen dataclasses so a result (with its prompt/response history) can be logged,
serialised and audited later.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ranking.errors import RequestError


def is_valid_alpha(value: object, *, retrieval_order: bool = False) -> bool:
    """A fusion weight is a finite number >= 0 (a bool is not a number here). With
    `retrieval_order`, +inf too: `ranking.fusion.RETRIEVAL_ORDER`, which a ranker's default
    weight may be (the served default of an unvalidated model) but a request, a setting or a
    model card may not: those say what they measured, and JSON has no infinity."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if retrieval_order and value == math.inf:
        return True
    return math.isfinite(value) and value >= 0


def alpha_for_json(alpha: float) -> float | None:
    """A fusion weight as JSON can carry it: `RETRIEVAL_ORDER` (+inf) is null."""
    return alpha if math.isfinite(alpha) else None


TASKS = (
    "rec-movie",
    "rec-music",
    "rec-game",
    "passage",
    "router-perf",
    "router-balance",
    "router-cost",
)
MODES = ("incremental", "score", "reason", "direct")
Mode = Literal["incremental", "score", "reason", "direct"]
MAX_CANDIDATES = 500
MAX_ABSTAIN = 1_000_000  # fusion_abstain_below: an item count, not a score

SignalValue = float | int | str


@dataclass(frozen=True)
class Candidate:
    """One item to rank. `score` is the retrieval score (higher is better), used for
    fallback ordering; `signals` are optional extra facts (e.g. cf_rank, popularity)
    that a prompt may render next to the text."""

    id: str
    text: str
    score: float | None = None
    signals: dict[str, SignalValue] = field(default_factory=dict)


@dataclass(frozen=True)
class RankRequest:
    """What to rank and for whom. `history` is the user's past items (oldest first)
    for rec tasks; `query` is the question for passage/router tasks."""

    task: str
    candidates: tuple[Candidate, ...]
    history: tuple[str, ...] = ()
    query: str | None = None
    mode: Mode = "incremental"
    deadline_ms: float | None = None
    temperature: float = 0.0
    show_signals: bool = False
    seed: int | None = None
    request_id: str | None = None
    fusion_alpha: float | None = None  # score fusion weight; None: the ranker's default
    # with fusion, the ranker abstains on candidates whose signal `interactions` is below
    # this (ranking.fusion); 0: never; None: the ranker's default
    fusion_abstain_below: int | None = None
    # catalogue ids of the history items (same order as `history`): hybrid prompts show an
    # item's collaborative soft token by id (ranking.hybrid); empty when unknown
    history_ids: tuple[str, ...] = ()
    # score this ranking (best first, a permutation of the candidate ids) instead of choosing
    # one: each step takes its candidate, so the result's order is this one and its
    # log_propensity the exact log-probability the served policy (fusion and abstention
    # included) gives it. Replay's off-policy estimates use it (recsys.replay). Label modes
    # only; empty: choose as usual
    forced_order: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        validate_request(self)

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.candidates]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RankRequest:
        """Build a request from its public JSON form; raises RequestError on bad input."""
        if not isinstance(data, dict):
            raise RequestError("the request must be a JSON object")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RequestError(f"unknown request field(s) {unknown}; allowed: {sorted(known)}")
        raw_candidates = data.get("candidates")
        if not isinstance(raw_candidates, list):
            raise RequestError("'candidates' must be a list of {id, text[, score, signals]}")
        candidates = tuple(_candidate_from_dict(i, c) for i, c in enumerate(raw_candidates))
        history = _strings(data, "history", "a list of strings (item titles)")
        history_ids = _strings(data, "history_ids", "a list of strings (catalogue item ids)")
        if history_ids and len(history_ids) != len(history):
            raise RequestError(
                f"'history_ids' has {len(history_ids)} ids for {len(history)} history items; "
                "give one id per history title, or none"
            )
        forced = _strings(data, "forced_order", "a list of candidate ids, best first")
        skip = ("candidates", "history", "history_ids", "forced_order")
        fields = {k: v for k, v in data.items() if k not in skip}
        fields.setdefault("mode", "incremental")
        if fields.get("mode") is None:
            fields["mode"] = "incremental"
        if fields.get("temperature") is None:
            fields["temperature"] = 0.0
        if "task" not in fields:
            raise RequestError(f"'task' is required; one of {list(TASKS)}")
        return cls(
            candidates=candidates,
            history=history,
            history_ids=history_ids,
            forced_order=forced,
            **fields,
        )


def _strings(data: dict[str, Any], key: str, what: str) -> tuple[str, ...]:
    """`data[key]` as a tuple of strings (absent or null: empty); RequestError otherwise."""
    value = data.get(key) or ()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise RequestError(f"'{key}' must be {what}")
    return tuple(value)


def is_permutation_of(order: Sequence[str], ids: Sequence[str]) -> bool:
    """`order` lists each of `ids` exactly once (a ranking of them)."""
    return len(order) == len(ids) and sorted(order) == sorted(ids)


def _candidate_from_dict(index: int, raw: Any) -> Candidate:
    if not isinstance(raw, dict) or "id" not in raw or "text" not in raw:
        raise RequestError(f"candidate #{index} must be an object with 'id' and 'text'")
    score = raw.get("score")
    if score is not None and not isinstance(score, int | float):
        raise RequestError(f"candidate #{index}: 'score' must be a number or null")
    signals = raw.get("signals") or {}
    if not isinstance(signals, dict):
        raise RequestError(f"candidate #{index}: 'signals' must be an object")
    return Candidate(
        id=str(raw["id"]),
        text=str(raw["text"]),
        score=None if score is None else float(score),
        signals=dict(signals),
    )


def validate_request(req: RankRequest) -> None:
    """Raise RequestError with a message that says what is wrong and how to fix it."""
    if req.task not in TASKS:
        raise RequestError(f"unknown task {req.task!r}; use one of {list(TASKS)}")
    if req.mode not in MODES:
        raise RequestError(f"unknown mode {req.mode!r}; use one of {list(MODES)}")
    if not req.candidates:
        raise RequestError("no candidates: a request needs at least one candidate to rank")
    if len(req.candidates) > MAX_CANDIDATES:
        raise RequestError(
            f"too many candidates ({len(req.candidates)}); at most {MAX_CANDIDATES} per request"
        )
    seen: set[str] = set()
    for c in req.candidates:
        if not c.id.strip():
            raise RequestError("a candidate has an empty id")
        if c.id in seen:
            raise RequestError(f"duplicate candidate id {c.id!r}: ids must be unique")
        seen.add(c.id)
        if not c.text.strip():
            raise RequestError(f"candidate {c.id!r} has empty text")
    if req.temperature < 0:
        raise RequestError(f"temperature must be >= 0, got {req.temperature}")
    if req.deadline_ms is not None and req.deadline_ms < 0:
        raise RequestError(f"deadline_ms must be >= 0 or null, got {req.deadline_ms}")
    if req.task == "passage" and not (req.query and req.query.strip()):
        raise RequestError("task 'passage' needs a non-empty 'query'")
    _validate_fusion(req)
    _validate_forced(req)


def _validate_forced(req: RankRequest) -> None:
    if not req.forced_order:
        return
    if not is_permutation_of(req.forced_order, req.ids):
        raise RequestError(
            f"forced_order must be a permutation of the {len(req.ids)} candidate ids (each "
            f"once, best first); got {len(req.forced_order)} ids that are not"
        )
    if req.mode == "reason":
        raise RequestError(
            "forced_order needs a mode with step probabilities (incremental, score, direct); "
            "reason mode generates free text and gives a ranking no probability"
        )


def is_valid_abstain(below: object) -> bool:
    """A `fusion_abstain_below` a ranker accepts: a whole number from 0 to MAX_ABSTAIN."""
    return isinstance(below, int) and not isinstance(below, bool) and 0 <= below <= MAX_ABSTAIN


def abstain_error(below: object) -> str:
    return (f"fusion_abstain_below must be a whole number from 0 to {MAX_ABSTAIN}, got "
            f"{below!r} (0: never; k: the ranker abstains on candidates whose signal "
            "'interactions' is below k)")  # fmt: skip


def _validate_fusion(req: RankRequest) -> None:
    below = req.fusion_abstain_below
    if below is not None and not is_valid_abstain(below):
        raise RequestError(abstain_error(below))
    # checked whenever present: a ranker's default may abstain on a request that sets none
    for c in req.candidates if below != 0 else ():
        n = c.signals.get("interactions")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int | float) or n < 0):
            raise RequestError(
                f"candidate {c.id!r}: signal 'interactions' must be a count >= 0 (the item's "
                f"interactions in the ranker's training log), got {n!r}"
            )
    alpha = req.fusion_alpha
    if alpha is None:
        return
    if not is_valid_alpha(alpha):
        raise RequestError(
            f"fusion_alpha must be a finite number >= 0 or null, got {alpha!r} "
            "(0: the ranker alone; larger: closer to the retrieval-score order)"
        )
    # asking a free-text mode to fuse is a mistake in the request, not something to ignore
    if req.mode == "reason" and alpha > 0:
        raise RequestError(
            "fusion_alpha > 0 needs a mode with step probabilities (incremental, score, "
            "direct); reason mode generates free text and cannot fuse"
        )


@dataclass(frozen=True)
class Step:
    """One elimination (or, for `direct`, one placement). `prob` is the probability
    the policy gave this choice, when the mode has one; `prompt`/`response` keep
    the model's text for auditing (None when the mode shares one prompt)."""

    eliminated: str
    prob: float | None = None
    remaining: int = 0
    prompt: str | None = None
    response: str | None = None
    matched: str = "exact"  # exact | fuzzy | similar | fallback | constrained | retrieval


@dataclass
class RankResult:
    """A valid permutation of the request's candidate ids, best first, plus how it was made."""

    order: list[str]
    steps: list[Step]
    mode: str
    model: str
    elapsed_ms: float
    log_propensity: float | None = None
    fallback: bool = False
    invalid_answers: int = 0
    generated_tokens: int = 0
    prompt: str | None = None  # the shared prompt for single-sequence modes
    # score-fusion weight applied to the steps (0: none; +inf, ranking.fusion.RETRIEVAL_ORDER:
    # the retrieval order itself, every step with probability 1 and no model call)
    fusion_alpha: float = 0.0
    fusion_note: str | None = None  # why a fusion weight asked for was not applied
    # ids of the candidates the ranker abstained on (ranking.fusion; empty: none)
    fusion_abstained: tuple[str, ...] = ()
    # the abstention threshold the fused steps applied (0: none); logged, so a replay of
    # the logging policy applies it again
    fusion_abstain_below: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: as the fields, except that the retrieval order's infinite
        `fusion_alpha` is null (JSON has no infinity)."""
        out = asdict(self)
        out["fusion_alpha"] = alpha_for_json(self.fusion_alpha)
        return out
