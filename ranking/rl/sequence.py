"""The incremental-mode token sequence of a request, for teacher forcing.

An incremental elimination trajectory is one token sequence: the prompt (every candidate
listed once with a label), then the label of each eliminated candidate, one after the
other, each followed by fixed separator tokens (none for the default prompts). So the step
distributions of a whole trajectory come out of ONE forward pass over
`prompt + label(e1) + sep + label(e2) + sep + ...` (`LabelSequence.context`).

The layout is the ranking engine's own (`ranking.modes.incremental.build_sequence`), so
what is trained is exactly what is served.
"""

from __future__ import annotations

from typing import Any

from ranking.backends.base import Generation, LMBackend
from ranking.modes.incremental import LabelSequence
from ranking.modes.incremental import build_sequence as engine_build_sequence
from ranking.types import RankRequest

EliminationSequence = LabelSequence


def step_positions(seq: LabelSequence, n_steps: int) -> list[int]:
    """Positions whose next-token logits give the distribution of each step."""
    stride = 1 + len(seq.sep_ids)
    return [len(seq.prompt_ids) - 1 + t * stride for t in range(n_steps)]


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


def build_sequence(request: RankRequest, tokenizer: Any) -> LabelSequence:
    """The engine's incremental sequence of `request` for `tokenizer`."""
    return engine_build_sequence(request, TokenizerOnly(tokenizer))
