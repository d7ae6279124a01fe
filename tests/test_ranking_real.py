"""The real default model (SmolLM2-135M-Instruct GGUF) on a real MovieLens-100k request."""

import math
import random
from pathlib import Path

import pytest

from ranking.modes.incremental import build_sequence
from ranking.types import Candidate, RankRequest

ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens-100k"


def ml100k_request(user: str = "1", n_history: int = 20, n_candidates: int = 20, seed: int = 7):
    """The user's last rated movie is the target; 19 random unseen movies are negatives."""
    titles = {}
    with open(ML100K / "u.item", encoding="latin-1") as fh:
        for line in fh:
            parts = line.split("|")
            titles[parts[0]] = parts[1]
    rows = []
    with open(ML100K / "u.data", encoding="latin-1") as fh:
        for line in fh:
            u, item, _rating, ts = line.rstrip("\n").split("\t")
            if u == user:
                rows.append((int(ts), item))
    rows.sort()
    seen = [item for _, item in rows]
    target = seen[-1]
    history = tuple(titles[i] for i in seen[-1 - n_history : -1])
    rng = random.Random(seed)
    pool = sorted(set(titles) - set(seen))
    items = [target, *rng.sample(pool, n_candidates - 1)]
    rng.shuffle(items)
    cands = tuple(Candidate(i, titles[i]) for i in items)
    return RankRequest(task="rec-movie", history=history, candidates=cands), target


@pytest.mark.slow
@pytest.mark.skipif(not ML100K.exists(), reason="MovieLens-100k not at ../shared/data")
def test_default_model_ranks_a_real_ml100k_request(default_ranker):
    req, target = ml100k_request()
    assert len(req.history) == 20 and len(req.candidates) == 20
    backend = default_ranker.backend
    backend.clear_cache()
    before = backend.tokens_computed
    res = default_ranker.rank(req)
    assert sorted(res.order) == sorted(req.ids)
    assert target in res.order
    assert len(res.steps) == 19 and res.fallback is False
    assert all(0 < s.prob <= 1 for s in res.steps)
    assert res.log_propensity == pytest.approx(sum(math.log(s.prob) for s in res.steps))
    # one prefill plus one token per further step
    assert backend.tokens_computed - before == len(build_sequence(req, backend).prompt_ids) + 18
    assert res.model.startswith("SmolLM2-135M-Instruct")
    # the real model's step distribution is far from uniform over 20 labels
    assert max(s.prob for s in res.steps) > 1.5 / 20
