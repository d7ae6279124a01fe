"""The incremental-mode token sequence of a request, for teacher forcing.

An incremental elimination trajectory is one token sequence: the prompt (every candidate
listed once with a label), then the label of each eliminated candidate, one after the
other, each followed by fixed separator tokens (none for the default prompts). So the step
distributions of a whole trajectory come out of ONE forward pass over
`prompt + label(e1) + sep + label(e2) + sep + ...`.

The layout is the ranking engine's own (`ranking.modes.incremental.build_sequence`), so
what is trained is exactly what is served.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ranking.backends.base import Generation, LMBackend
from ranking.modes.incremental import build_sequence as engine_build_sequence
from ranking.types import RankRequest


@dataclass(frozen=True)
class EliminationSequence:
    """`prompt_ids` end right before the first eliminated label; `label_ids[i]` is the
    token naming candidate `ids[i]`; `sep_ids` follow every emitted label."""

    ids: tuple[str, ...]
    prompt_ids: tuple[int, ...]
    label_ids: tuple[int, ...]
    sep_ids: tuple[int, ...] = ()

    @property
    def n(self) -> int:
        return len(self.ids)

    def trajectory_ids(self, elim_order: Sequence[int]) -> list[int]:
        """Prompt followed by the labels of `elim_order` (candidate indices)."""
        out = list(self.prompt_ids)
        for i in elim_order:
            out.append(self.label_ids[i])
            out.extend(self.sep_ids)
        return out

    def step_positions(self, n_steps: int) -> list[int]:
        """Positions whose next-token logits give the distribution of each step."""
        stride = 1 + len(self.sep_ids)
        return [len(self.prompt_ids) - 1 + t * stride for t in range(n_steps)]


class TokenizerOnly(LMBackend):
    """The part of an LM backend that prompt building needs (chat template, encoding), for
    a model being trained in memory; it cannot generate."""

    def __init__(self, tokenizer: Any, model_id: str = "in-training") -> None:
        self.tokenizer = tokenizer
        self.model_id = model_id

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, seed=None) -> list[Generation]:
        raise NotImplementedError("TokenizerOnly builds prompts; it does not generate")

    def next_token_logprobs(self, contexts, allowed):
        raise NotImplementedError("TokenizerOnly builds prompts; it does not score")


def build_sequence(request: RankRequest, tokenizer: Any) -> EliminationSequence:
    """The engine's incremental sequence of `request` for `tokenizer`."""
    seq = engine_build_sequence(request, TokenizerOnly(tokenizer))
    return EliminationSequence(
        ids=tuple(seq.ids),
        prompt_ids=tuple(seq.prompt_ids),
        label_ids=tuple(seq.label_ids),
        sep_ids=tuple(seq.sep_ids),
    )
