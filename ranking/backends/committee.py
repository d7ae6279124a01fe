"""A committee: several LMs that read the same prompts, ranking as one policy.

Each step's distribution is the normalised weighted geometric mean of the members' (a
product of experts, Hinton 2002; the log-linear pooling of forecasts):

    log p(a) = sum_m w_m log p_m(a) - log sum_b exp(sum_m w_m log p_m(b)),   sum_m w_m = 1

over the step's allowed tokens. It is one distribution per step, so every constrained mode
(`score`, `incremental`, `direct`), fusion (`ranking.fusion`, added on top as for any
backend) and the ranking's log-propensity stay exact: they are those of the committee as
served. With identical members it is each member; with one member of weight 1, that member.

Why: trained rankers from different runs err on different requests (on rec-movie's held-out
users the per-request reciprocal ranks of two trained hybrids correlate at about 0.6), and
pooling independent errors is the oldest way to a better ranker. The members keep their
own speed-ups (KV-cache reuse, the fast CPU step, a hybrid's split layers); a request costs
the sum of theirs.

Members must read the same prompts as the same token ids: the same tokenizer vocabulary
(item tokens included) and the same prompt style. Hybrid models trained on one task's
catalogue from one base model qualify; a Gemma and a SmolLM2 model do not (a
ModelLoadError says so). `reason` mode (free text) has no step distribution to pool: it
raises RequestError.

A committee is a folder (`write_committee` / `read_committee`): `committee.json` lists the
members (model specs; relative paths are relative to the folder) and their weights.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ranking.backends.base import Generation, LMBackend
from ranking.errors import ModelLoadError, RequestError
from ranking.folders import write_whole
from ranking.prompts import style_of

MANIFEST = "committee.json"
MAX_MEMBERS = 8


@dataclass(frozen=True)
class CommitteeSpec:
    """Who sits on a committee: model specs and their (normalised) weights."""

    members: tuple[str, ...]
    weights: tuple[float, ...]

    @classmethod
    def of(cls, members: Sequence[str], weights: Sequence[float] | None = None) -> CommitteeSpec:
        """Checked and normalised (weights sum to 1; equal when none are given)."""
        if not 1 <= len(members) <= MAX_MEMBERS:
            raise ModelLoadError(f"a committee has 1 to {MAX_MEMBERS} members; got {len(members)}")
        raw = [1.0] * len(members) if weights is None else [float(w) for w in weights]
        if len(raw) != len(members):
            raise ModelLoadError(
                f"{len(raw)} weights for {len(members)} members; give one weight per member "
                "or none (equal weights)"
            )
        if not all(math.isfinite(w) and w > 0 for w in raw):
            raise ModelLoadError(f"committee weights must be finite and > 0; got {raw}")
        total = sum(raw)
        return cls(tuple(str(m) for m in members), tuple(w / total for w in raw))


def is_committee_dir(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / MANIFEST).is_file()


def write_committee(folder: str | os.PathLike[str], spec: CommitteeSpec) -> Path:
    """Write `committee.json` into `folder` (created); written whole or not at all."""
    folder = Path(folder)
    doc = {
        "members": [
            {"model": m, "weight": w} for m, w in zip(spec.members, spec.weights, strict=True)
        ]
    }
    write_whole(folder / MANIFEST, json.dumps(doc, indent=2) + "\n")
    return folder


def read_committee(folder: str | os.PathLike[str]) -> CommitteeSpec:
    """The folder's committee, member paths resolved against the folder."""
    path = Path(folder) / MANIFEST
    try:
        doc = json.loads(path.read_text("utf-8"))
        rows = doc["members"]
        members = [_member_path(Path(folder), str(row["model"])) for row in rows]
        weights = [float(row["weight"]) for row in rows]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(
            f"{path}: not a committee manifest ({exc}); it needs "
            '{"members": [{"model": SPEC, "weight": W}, ...]}'
        ) from None
    return CommitteeSpec.of(members, weights)


def _member_path(folder: Path, spec: str) -> str:
    """A member spec as written in the manifest: a relative path is relative to the
    committee's folder; an absolute path, or a packaged name such as 'default', as is."""
    if spec.startswith("~") or Path(spec).is_absolute():
        return spec
    candidate = folder / spec
    if candidate.exists() or "/" in spec or spec.startswith("."):
        return str(candidate.resolve())
    return spec


class CommitteeBackend(LMBackend):
    """Members' step distributions pooled as in the module doc."""

    def __init__(
        self, members: Sequence[LMBackend], weights: Sequence[float], model_id: str = "committee"
    ) -> None:
        spec = CommitteeSpec.of([m.model_id for m in members], weights)
        _check_same_prompts(members)
        self.members = list(members)
        self.weights = np.asarray(spec.weights, dtype=np.float64)
        self.model_id = model_id
        self.tokenizer = members[0].tokenizer
        self.prompt_style = getattr(members[0], "prompt_style", None)
        self.efficient_continuation = all(m.efficient_continuation for m in members)

    def chat_prompt(self, user: str, system: str | None = None) -> str:
        return self.members[0].chat_prompt(user, system)

    @property
    def forward_calls(self) -> int:
        """Forward passes of all members together (for benchmarks; 0 where none counts)."""
        return sum(getattr(m, "forward_calls", 0) for m in self.members)

    def clear_cache(self) -> None:
        """Drop every member's cached keys and values (those that keep any)."""
        for member in self.members:
            clear = getattr(member, "clear_cache", None)
            if clear is not None:
                clear()

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[Generation]:
        raise RequestError(
            "a committee ranks by pooling its members' step distributions; free text "
            "(reason mode) has none to pool: use mode incremental, score or direct"
        )

    def next_token_logprobs(
        self, contexts: Sequence[Sequence[int]], allowed: Sequence[Sequence[int]]
    ) -> list[np.ndarray]:
        answers = [m.next_token_logprobs(contexts, allowed) for m in self.members]
        return [self._pool(rows, len(ids)) for ids, *rows in zip(allowed, *answers, strict=True)]

    def continuation_logprobs(
        self,
        contexts: Sequence[Sequence[int]],
        continuations: Sequence[Sequence[int]],
        allowed: Sequence[Sequence[Sequence[int]]],
    ) -> list[list[np.ndarray]]:
        answers = [m.continuation_logprobs(contexts, continuations, allowed) for m in self.members]
        return [
            [self._pool(rows, len(ids)) for ids, *rows in zip(allow, *steps, strict=True)]
            for allow, *steps in zip(allowed, *answers, strict=True)
        ]

    def _pool(self, rows: Sequence[np.ndarray], n: int) -> np.ndarray:
        """One step over `n` allowed tokens: the weighted sum of the members' log-probs,
        renormalised. A member's malformed answer (wrong length, NaN) is passed on as it
        is, for the ranker's own checks to reject, as from any backend."""
        arrays = [np.asarray(r, dtype=np.float64) for r in rows]
        for a in arrays:
            if a.shape != (n,) or (n and not np.isfinite(a.max())) or np.isnan(a).any():
                return a
        if n == 0:
            return arrays[0]
        x = sum(w * a for w, a in zip(self.weights, arrays, strict=True))
        m = float(np.max(x))
        return x - (m + math.log(float(np.exp(x - m).sum())))


def _check_same_prompts(members: Sequence[LMBackend]) -> None:
    """Refuse members that would read one prompt as different tokens."""
    first = members[0]
    vocab = _vocab(first)
    for other in members[1:]:
        if _vocab(other) != vocab:
            raise ModelLoadError(
                f"committee members {first.model_id!r} and {other.model_id!r} have different "
                "tokenizer vocabularies (item tokens included): members must share a base "
                "model and a catalogue"
            )
        if style_of(other) != style_of(first):
            raise ModelLoadError(
                f"committee members {first.model_id!r} and {other.model_id!r} write prompts "
                "differently (prompt style); members must be trained with the same template "
                "and title length"
            )


def _vocab(backend: LMBackend) -> object:
    tok = backend.tokenizer
    get_vocab = getattr(tok, "get_vocab", None)
    return get_vocab() if get_vocab else getattr(tok, "vocab", id(tok))
