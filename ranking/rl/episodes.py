"""Training episodes: what the ranker saw, what the user chose, and optional extra targets."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ranking.errors import RequestError
from ranking.metrics import reciprocal_rank
from ranking.types import RankRequest


@dataclass(frozen=True)
class Episode:
    """One logged (or built) ranking decision.

    `ground_truth` is the id the user chose. `teacher_order` is an elimination order to
    distil (eliminated first .. survivor last), e.g. the reverse retrieval order.
    `logged_order` / `logged_log_propensity` are the ranking the logging policy showed
    (best first) and its log-probability, for importance-weighted off-policy updates."""

    request: RankRequest
    ground_truth: str
    user: str = ""
    teacher_order: tuple[str, ...] | None = None
    logged_order: tuple[str, ...] | None = None
    logged_log_propensity: float | None = None
    # the fusion weight and abstention threshold the logging policy served this request
    # with (None: not logged; older impressions), which a request may have overridden
    logged_fusion_alpha: float | None = None
    logged_abstain_below: int | None = None

    def __post_init__(self) -> None:
        ids = self.request.ids
        if self.ground_truth not in ids:
            raise RequestError(
                f"episode ground truth {self.ground_truth!r} is not one of its candidates"
            )
        for name in ("teacher_order", "logged_order"):
            order = getattr(self, name)
            if order is not None and sorted(order) != sorted(ids):
                raise RequestError(f"episode {name} must be a permutation of the candidate ids")

    @property
    def gt_index(self) -> int:
        return self.request.ids.index(self.ground_truth)

    def as_logged(self) -> Episode:
        """This episode with the request as the logging policy served it: its logged fusion
        weight and abstention threshold set on the request (a replay of the *logging*
        policy must use them; a target policy ranks with its own defaults)."""
        changes: dict[str, object] = {}
        # an infinite weight (the retrieval order) is only ever a ranker's default, which a
        # request cannot ask for: the logging ranker's own default serves it again
        if self.logged_fusion_alpha is not None and math.isfinite(self.logged_fusion_alpha):
            changes["fusion_alpha"] = self.logged_fusion_alpha
        if self.logged_abstain_below is not None:
            changes["fusion_abstain_below"] = self.logged_abstain_below
        if not changes:
            return self
        return dataclasses.replace(self, request=dataclasses.replace(self.request, **changes))


def retrieval_elimination_order(request: RankRequest) -> tuple[str, ...] | None:
    """The retrieval order reversed (lowest score eliminated first), or None when some
    candidate has no score. The retrieval order is a stable sort by descending score (ties
    keep the request order, as the evaluation harness's baselines), so this is its exact
    reverse."""
    if any(c.score is None for c in request.candidates):
        return None
    best_first = sorted(range(len(request.candidates)), key=lambda i: -request.candidates[i].score)
    return tuple(request.candidates[i].id for i in reversed(best_first))


def teacher_elimination_order(request: RankRequest, seed: int) -> tuple[str, ...] | None:
    """The retrieval order reversed, with ties broken at random (seeded by the request), or
    None without scores. Ties must not follow the list order: with most random negatives
    scored 0 by co-occurrence, a list-order tie rule teaches "eliminate the last-listed
    labels first", a position bias (seen in our first CPU runs)."""
    if any(c.score is None for c in request.candidates):
        return None
    rng = random.Random(f"{seed}:{request.request_id or request.ids}")
    keys = {c.id: (c.score, rng.random()) for c in request.candidates}
    return tuple(sorted(request.ids, key=lambda i: keys[i]))


def with_teacher(episode: Episode, order: Sequence[str] | None, gt_last: bool) -> Episode:
    """A copy with `order` as teacher; with `gt_last` the ground truth is moved to the end
    (it survives), so the target never contradicts the observed choice."""
    if order is None:
        return episode
    order = list(order)
    if gt_last:
        order.remove(episode.ground_truth)
        order.append(episode.ground_truth)
    return Episode(
        request=episode.request,
        ground_truth=episode.ground_truth,
        user=episode.user,
        teacher_order=tuple(order),
        logged_order=episode.logged_order,
        logged_log_propensity=episode.logged_log_propensity,
    )


def split_by_user(
    episodes: Sequence[Episode], val_fraction: float, seed: int = 0
) -> tuple[list[Episode], list[Episode]]:
    """Split so that no validation user is ever trained on: a user's episodes all go to one
    side, chosen by a seeded hash of the user id (stable as users are added)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    train, val = [], []
    for ep in episodes:
        digest = hashlib.sha256(f"{seed}:{ep.user}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        (val if u < val_fraction else train).append(ep)
    return train, val


def reciprocal_ranks(orders: Sequence[Sequence[str]], eps: Sequence[Episode]) -> dict[str, float]:
    """Per episode's user, the reciprocal rank of its ground truth in the matching order."""
    return {e.user: reciprocal_rank(o, e.ground_truth) for o, e in zip(orders, eps, strict=True)}


def episode_to_dict(ep: Episode) -> dict[str, Any]:
    req = ep.request
    return {
        "user": ep.user,
        "ground_truth": ep.ground_truth,
        "teacher_order": list(ep.teacher_order) if ep.teacher_order else None,
        "logged_order": list(ep.logged_order) if ep.logged_order else None,
        "logged_log_propensity": ep.logged_log_propensity,
        "request": {
            "task": req.task,
            "history": list(req.history),
            "history_ids": list(req.history_ids),  # hybrid prompts read them
            "query": req.query,
            "show_signals": req.show_signals,
            **({"request_id": req.request_id} if req.request_id else {}),
            "candidates": [
                {"id": c.id, "text": c.text, "score": c.score, "signals": dict(c.signals)}
                for c in req.candidates
            ],
        },
    }


def episode_from_dict(data: dict[str, Any]) -> Episode:
    if not isinstance(data, dict) or "request" not in data or "ground_truth" not in data:
        raise RequestError("an episode needs 'request' and 'ground_truth'")
    teacher = data.get("teacher_order")
    logged = data.get("logged_order")
    return Episode(
        request=RankRequest.from_dict(data["request"]),
        ground_truth=str(data["ground_truth"]),
        user=str(data.get("user", "")),
        teacher_order=tuple(teacher) if teacher else None,
        logged_order=tuple(logged) if logged else None,
        logged_log_propensity=data.get("logged_log_propensity"),
    )


def write_episodes(path: Path, episodes: Iterable[Episode]) -> None:
    with Path(path).open("w", encoding="utf-8") as f:
        for ep in episodes:
            f.write(json.dumps(episode_to_dict(ep)) + "\n")


def read_episodes(path: Path, limit: int | None = None) -> list[Episode]:
    """The file's episodes (one JSON object a line), the first `limit` of them if given."""
    out: list[Episode] = []
    with Path(path).open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if limit is not None and len(out) >= limit:
                break
            if not line.strip():
                continue
            try:
                out.append(episode_from_dict(json.loads(line)))
            except (json.JSONDecodeError, RequestError) as exc:
                raise RequestError(f"{path}:{n}: {exc}") from exc
    return out


def shuffled_negatives(ep: Episode, rng: random.Random) -> list[int]:
    """A random elimination order of the non-ground-truth candidates (indices), the
    trajectory along which the exact expected-reward loss is teacher-forced."""
    idx = [i for i in range(len(ep.request.candidates)) if i != ep.gt_index]
    rng.shuffle(idx)
    return idx
