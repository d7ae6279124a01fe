"""Ranking modes: one module per mode behind one interface (modes.base.RankingMode)."""

from ranking.modes.base import Deadline, RankingMode, RankOptions
from ranking.modes.direct import DirectMode
from ranking.modes.incremental import IncrementalMode, LabelSequence, build_sequence
from ranking.modes.reason import ReasonMode
from ranking.modes.score import ScoreMode

MODES: dict[str, type[RankingMode]] = {
    m.name: m for m in (IncrementalMode, ScoreMode, ReasonMode, DirectMode)
}

__all__ = [
    "MODES",
    "Deadline",
    "DirectMode",
    "IncrementalMode",
    "LabelSequence",
    "RankOptions",
    "RankingMode",
    "ReasonMode",
    "ScoreMode",
    "build_sequence",
]
