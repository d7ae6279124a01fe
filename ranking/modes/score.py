"""`score` mode: IRanker's per-step prompt, but the answer is one constrained label token.

Step t shows the candidates still in play, labelled A, B, ... in their input order; the
next-token distribution over those labels (after the answer prefix "Answer:") picks the one
to eliminate. Consecutive step prompts share everything up to the candidate list, and the
backend's KV-cache reuse computes that shared prefix once.
"""

from __future__ import annotations

from ranking.backends.base import LMBackend
from ranking.modes.base import Trace
from ranking.modes.constrained import ConstrainedMode
from ranking.prompts import SCORE_ANSWER_PREFIX, label_prompt, labels_for, style_of
from ranking.types import RankRequest


def step_prompt(request: RankRequest, remaining: list[int], backend: LMBackend) -> str:
    """The chat-formatted prompt of one step, ending with the answer prefix."""
    labels = [lab for lab, _ in labels_for(backend.tokenizer, len(remaining))]
    cands = [request.candidates[i] for i in remaining]
    style = style_of(backend, request)
    return backend.chat_prompt(label_prompt(request, cands, labels, style)) + SCORE_ANSWER_PREFIX


class ScoreMode(ConstrainedMode):
    name = "score"
    eliminates = True

    def prepare(self, request: RankRequest, backend: LMBackend) -> bool:
        return True

    def step_input(self, trace: Trace, prepared, backend: LMBackend):
        labelled = labels_for(backend.tokenizer, len(trace.remaining))
        text = step_prompt(trace.request, trace.remaining, backend)
        return backend.encode(text), [t for _, t in labelled], [lab for lab, _ in labelled]
