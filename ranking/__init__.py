"""IRanker / DRanker: LM re-ranking by iterative elimination (arXiv 2506.21638).

A library: no database, web or job-queue imports here.
"""

from ranking.errors import ModelLoadError, RequestError
from ranking.types import Candidate, RankRequest, RankResult, Step

__all__ = ["Candidate", "ModelLoadError", "RankRequest", "RankResult", "RequestError", "Step"]
