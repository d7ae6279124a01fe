"""`direct` mode (DRanker): the whole order in one generation, constrained to a permutation.

Same token layout as `incremental` (:class:`~ranking.modes.incremental.LabelSequence`) but
the prompt asks for the ranking best first, so each step *places* the best remaining
candidate; the constraint (only labels not yet emitted) makes the answer a permutation.
"""

from __future__ import annotations

from ranking.backends.base import LMBackend
from ranking.modes.incremental import IncrementalMode, LabelSequence, label_sequence
from ranking.prompts import RANKING_ANSWER_PREFIX, ranking_prompt
from ranking.types import RankRequest


def build_ranking_sequence(request: RankRequest, backend: LMBackend) -> LabelSequence:
    return label_sequence(request, backend, ranking_prompt, RANKING_ANSWER_PREFIX)


class DirectMode(IncrementalMode):
    name = "direct"
    eliminates = False

    def prepare(self, request: RankRequest, backend: LMBackend) -> LabelSequence:
        return build_ranking_sequence(request, backend)
