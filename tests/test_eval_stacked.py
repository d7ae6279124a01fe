"""LambdaMART stacked on the LM (recsys.eval.stacked): it learns from the LM's steps, trains
only on users the LM never trained on, and ranks every instance with a valid permutation."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ranking.types import Candidate, RankRequest, RankResult, Step
from recsys.eval.harness import evaluate
from recsys.eval.instances import for_users, user_fold
from recsys.eval.ltr import LambdaMARTBaseline
from recsys.eval.stacked import STACK_FRACTION, StackedLMRanker, lm_columns
from recsys.eval.tasks import Instance, TaskSet

SEED = 7


def random_world(n_users: int = 80, n_items: int = 120, length: int = 22) -> tuple[TaskSet, dict]:
    """Users take random items: nothing a CF or sequence feature can predict, so LambdaMART
    ranks near random, and only an LM that knows the sequences can do better."""
    rng = np.random.default_rng(0)
    titles = {str(i): f"item {i}" for i in range(n_items)}
    rows, instances, seqs = [], [], {}
    for u in range(n_users):
        seq = [str(i) for i in rng.choice(n_items, size=length, replace=False)]
        seqs[f"u{u}"] = seq
        rows += [(f"u{u}", it) for it in seq[:-1]]
        negatives = [i for i in rng.permutation(list(titles)) if i not in seq][:9]
        cands = [seq[-1], *negatives]
        cands = [cands[i] for i in rng.permutation(len(cands))]
        instances.append(
            Instance(
                id=f"rec-movie:u{u}",
                task="rec-movie",
                request_task="rec-movie",
                candidates=tuple(Candidate(id=c, text=titles[c]) for c in cands),
                relevance={seq[-1]: 1.0},
                history=tuple(titles[h] for h in seq[-21:-1]),
                history_ids=tuple(seq[-21:-1]),
                user_id=f"u{u}",
            )
        )
    train = pl.DataFrame({"user_id": [u for u, _ in rows], "item_id": [i for _, i in rows]})
    return TaskSet("rec-movie", instances, train=train, catalogue=titles), seqs


class OracleLM:
    """Stands in for the LM engine: it knows every user's sequence and keeps the true next
    item to the end (or, `inverted`, eliminates it first). Records what it was asked."""

    model_id = "oracle-lm"

    def __init__(self, seqs: dict[str, list[str]], inverted: bool = False) -> None:
        self.seqs, self.inverted, self.requests = seqs, inverted, []

    def truth(self, request: RankRequest) -> str:
        seq = self.seqs[request.request_id.rsplit(":", 1)[-1]]
        return seq[seq.index(request.history_ids[-1]) + 1]

    def rank_batch(self, requests, progress: bool = False) -> list[RankResult]:
        self.requests.extend(requests)
        out = []
        for r in requests:
            truth, others = self.truth(r), [c.id for c in r.candidates if c.id != self.truth(r)]
            order = [*others, truth] if self.inverted else [truth, *others]
            steps = [Step(eliminated=c, prob=0.5) for c in reversed(order[1:])]
            out.append(RankResult(order=order, steps=steps, mode="incremental", model="oracle",
                                  elapsed_ms=0.0))  # fmt: skip
        return out


@pytest.fixture(scope="module")
def world() -> tuple[TaskSet, dict]:
    return random_world()


@pytest.mark.parametrize("inverted", [False, True])
def test_stack_learns_the_lm_signal_where_lambdamart_has_none(world, inverted: bool) -> None:
    ts, seqs = world
    heldout = for_users(ts, "heldout", SEED)
    plain = evaluate(LambdaMARTBaseline(seed=SEED), heldout, progress=False)
    lm = OracleLM(seqs, inverted=inverted)
    stacked = evaluate(StackedLMRanker(lm, seed=SEED, progress=False), heldout, progress=False)
    assert plain.metrics["mrr"]["mean"] < 0.5  # random: 0.29 for 10 candidates
    # it reads the LM's steps, whichever way round they point
    assert stacked.metrics["mrr"]["mean"] > 0.9
    assert stacked.bad_permutations == 0 and stacked.n == len(heldout.instances)


def test_stack_trains_only_on_users_the_lm_never_trained_on(world) -> None:
    ts, seqs = world
    lm = OracleLM(seqs)
    ranker = StackedLMRanker(lm, seed=SEED, progress=False)
    ranker.prepare(for_users(ts, "heldout", SEED))
    users = {r.request_id.rsplit(":", 1)[-1] for r in lm.requests}
    assert users and all(user_fold(u, SEED) < STACK_FRACTION for u in users)
    assert ranker.stack_groups == len(users)
    # the LM ranks alone (fusion off) and the stack's targets are x_{T-1}, not the evaluated x_T
    assert all(r.fusion_alpha == 0.0 for r in lm.requests)
    evaluated = {i.user_id: i.target for i in ts.instances}
    assert all(lm.truth(r) != evaluated[r.request_id.rsplit(":", 1)[-1]] for r in lm.requests)


def test_lm_columns_known_values() -> None:
    result = RankResult(
        order=["b", "c", "a"],
        steps=[Step(eliminated="a", prob=0.5), Step(eliminated="c", prob=0.25)],
        mode="incremental",
        model="m",
        elapsed_ms=0.0,
    )
    cols = lm_columns(result, ["a", "b", "c"])
    np.testing.assert_allclose(cols[:, 0], [0.0, 1.0, 0.5])  # keep share: b kept to the end
    np.testing.assert_allclose(cols[:, 1], [np.log(0.5), 0.0, np.log(0.25)])
