"""Classical baselines, ranked on the same task instances as the LM ranker.

Every evaluated ranker has one small interface (`EvalRanker`): `prepare(taskset)` learns
what it needs from the task's training data (everything except the evaluated targets),
`rank_instances(instances)` returns one RankResult per instance. The baselines here
score each candidate and sort, best first; ties keep the (seeded, shuffled) candidate
order, so a tie is broken at random and never in favour of the target.

| name | score of a candidate | tasks |
| --- | --- | --- |
| random | a seeded uniform draw; expected MRR = H_n / n | all |
| bm25 | BM25Okapi (rank_bm25) over the candidates' texts, query = the history's titles or the query text | all |
| first-stage | the candidate's first-stage retrieval score (BM25 run order for DL19) | scored candidates |
| popularity | interactions in the training data | rec |
| lightfm | LightFM WARP (64 factors, 30 epochs) user . item + item bias | rec |
| transitions | sum over history items h of #(h followed by c within 10 steps) in training sequences | rec |
| knn-router | mean task utility of the LLM over the 10 training queries nearest the question (TF-IDF cosine) | router |
"""  # noqa: E501

from __future__ import annotations

import hashlib
import re
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import polars as pl
import scipy.sparse as sp

from ranking.fusion import zscores
from ranking.types import Candidate, RankResult
from recsys.errors import UserError
from recsys.eval.tasks import Instance, TaskSet, rng_for

TOKEN = re.compile(r"\w+")


class EvalRanker(Protocol):
    """What the harness runs: a baseline or an engine mode."""

    name: str
    model: str

    def prepare(self, taskset: TaskSet) -> None: ...

    def rank_instances(self, instances: Sequence[Instance]) -> list[RankResult]: ...

    def run_info(self) -> dict[str, Any]:
        """What the run since `prepare` records about the ranker in its results `info`
        (score digests, prompt tokens); the harness calls it once, after the last batch."""
        ...


class ScoreDigest:
    """SHA-256 over the scores given, instance after instance (float64 bytes). Two runs with
    the same digest on the same instances scored them identically: `recsys eval` records it
    so a served run's fusion signal can be checked against the baseline file it is paired
    with (`recsys eval-diff` says when they differ)."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.count = 0

    def add(self, scores: np.ndarray | Sequence[float]) -> None:
        self._sha.update(np.ascontiguousarray(scores, dtype=np.float64).tobytes())
        self.count += 1

    def hexdigest(self) -> str:
        return self._sha.hexdigest()[:32]


class ScoringBaseline(ABC):
    """A baseline that scores every candidate independently and sorts (stable)."""

    name = "baseline"
    model = "baseline"
    tasks: tuple[str, ...] | None = None  # task prefixes it applies to (None: all)
    digest: ScoreDigest | None = None  # the scores of the run since `prepare`

    def prepare(self, taskset: TaskSet) -> None:
        if self.tasks is not None and not taskset.name.startswith(self.tasks):
            raise UserError(
                f"baseline {self.name!r} does not apply to {taskset.name!r} "
                f"(only to {', '.join(t + '*' for t in self.tasks)})"
            )
        self.fit(taskset)
        self.digest = ScoreDigest()

    def run_info(self) -> dict[str, Any]:
        """`scores_sha256`: the digest of every score given since `prepare`."""
        if self.digest is None or not self.digest.count:
            return {}
        return {"scores_sha256": self.digest.hexdigest()}

    def fit(self, taskset: TaskSet) -> None:  # noqa: B027 (optional hook)
        """Learn from taskset.train; most baselines need nothing."""

    @abstractmethod
    def scores(self, instance: Instance) -> np.ndarray:
        """One score per candidate, in candidate order; higher is better."""

    def scores_batch(self, instances: Sequence[Instance]) -> list[np.ndarray]:
        """`scores` of each instance; a baseline that scores in model batches overrides it."""
        return [self.scores(inst) for inst in instances]

    def rank_instances(self, instances: Sequence[Instance]) -> list[RankResult]:
        start = time.perf_counter()
        scored = self.scores_batch(instances)
        each_ms = (time.perf_counter() - start) * 1000 / max(len(instances), 1)
        out = []
        for inst, scores in zip(instances, scored, strict=True):
            if self.digest is not None:
                self.digest.add(scores)
            order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
            out.append(
                RankResult(
                    order=[inst.candidates[i].id for i in order],
                    steps=[],
                    mode=self.name,
                    model=self.model,
                    elapsed_ms=each_ms,
                )
            )
        return out


class RandomBaseline(ScoringBaseline):
    """A uniformly random order (seeded per instance). Its expectation is analytic:
    MRR = H_n / n with one relevant among n (ranking.metrics.expected_random_mrr)."""

    name = model = "random"

    def __init__(self, seed: int = 7) -> None:
        self.seed = seed

    def scores(self, instance: Instance) -> np.ndarray:
        return rng_for(self.seed, f"random:{instance.id}").random(len(instance.candidates))


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


class BM25Baseline(ScoringBaseline):
    """Okapi BM25 (rank_bm25, k1=1.5, b=0.75) with the candidates as the collection:
    the query is the user's history titles (rec) or the query text (passage, router)."""

    name = model = "bm25"

    def scores(self, instance: Instance) -> np.ndarray:
        from rank_bm25 import BM25Okapi

        docs = [tokens(c.text) or ["<empty>"] for c in instance.candidates]
        query = tokens(instance.query or " ".join(instance.history))
        return BM25Okapi(docs).get_scores(query)


class FirstStageBaseline(ScoringBaseline):
    """The first-stage retrieval order (Candidate.score): the BM25 run for DL19, the
    retrieval stage's fused score for rec tasks with `--candidates retrieval`."""

    name = model = "first-stage"

    def fit(self, taskset: TaskSet) -> None:
        if any(c.score is None for i in taskset.instances for c in i.candidates):
            raise UserError(
                f"baseline 'first-stage' needs candidates with retrieval scores; {taskset.name!r} "
                "has none (passage tasks have them; rec tasks with --candidates retrieval)"
            )

    def scores(self, instance: Instance) -> np.ndarray:
        return np.array([c.score if c.score is not None else -np.inf for c in instance.candidates])


class _RecBaseline(ScoringBaseline):
    tasks = ("rec",)

    def train_of(self, taskset: TaskSet) -> pl.DataFrame:
        if taskset.train is None:
            raise UserError(f"{taskset.name}: no training interactions to fit {self.name!r} on")
        return taskset.train


class PopularityBaseline(_RecBaseline):
    """Number of training interactions of the candidate item (all users)."""

    name = model = "popularity"

    def fit(self, taskset: TaskSet) -> None:
        counts = self.train_of(taskset).group_by("item_id").len()
        self.counts = dict(counts.iter_rows())

    def scores(self, instance: Instance) -> np.ndarray:
        return np.array([self.counts.get(c.id, 0) for c in instance.candidates], dtype=float)


class TransitionsBaseline(_RecBaseline):
    """Item-to-item transitions: count[a, b] = how often b follows a within `window`
    steps in a training sequence; score(c) = sum over the history items h of count[h, c]
    (a first-order, windowed item-to-item recommender)."""

    name = model = "transitions"

    def __init__(self, window: int = 10) -> None:
        self.window = window

    def fit(self, taskset: TaskSet) -> None:
        train = self.train_of(taskset)  # sorted by user, then time
        items = train["item_id"].unique().sort().to_list()
        self.index = {item: i for i, item in enumerate(items)}
        codes = np.array([self.index[i] for i in train["item_id"]], dtype=np.int64)
        users = train["user_id"].to_numpy()
        rows, cols = [], []
        for d in range(1, self.window + 1):
            same = users[:-d] == users[d:]
            rows.append(codes[:-d][same])
            cols.append(codes[d:][same])
        row, col = np.concatenate(rows), np.concatenate(cols)
        n = len(items)
        self.counts = sp.csr_matrix((np.ones(len(row)), (row, col)), shape=(n, n))

    def scores(self, instance: Instance) -> np.ndarray:
        hist = [self.index[h] for h in instance.history_ids if h in self.index]
        if not hist:
            return np.zeros(len(instance.candidates))
        total = np.asarray(self.counts[hist].sum(axis=0)).ravel()
        return np.array([total[self.index[c.id]] if c.id in self.index else 0.0
                         for c in instance.candidates])  # fmt: skip


class LightFMBaseline(_RecBaseline):
    """LightFM WARP (retrieval.cf.CFModel), trained on every interaction except the
    evaluated targets; score(u, i) = user_factors[u] . item_factors[i] + item_bias[i]."""

    name = "lightfm"

    def __init__(self, factors: int = 64, epochs: int = 30, seed: int = 7) -> None:
        self.factors, self.epochs, self.seed = factors, epochs, seed
        self.model = f"lightfm-warp-{factors}f-{epochs}e"

    def fit(self, taskset: TaskSet) -> None:
        from retrieval.cf import CFModel, interactions_matrix

        train = self.train_of(taskset)
        users = train["user_id"].unique().sort().to_list()
        candidate_items = {c.id for inst in taskset.instances for c in inst.candidates}
        items = sorted(set(train["item_id"].unique().to_list()) | candidate_items)
        self.users = {u: i for i, u in enumerate(users)}
        self.items = {it: i for i, it in enumerate(items)}
        matrix = interactions_matrix(
            np.array([self.users[u] for u in train["user_id"]]),
            np.array([self.items[i] for i in train["item_id"]]),
            len(users),
            len(items),
        )
        self.cf = CFModel.fit(
            matrix, loss="warp", factors=self.factors, epochs=self.epochs, seed=self.seed
        )

    def scores(self, instance: Instance) -> np.ndarray:
        user = self.users.get(instance.user_id or "")
        if user is None:  # a user with no training interactions: item bias only
            return np.array([self.cf.item_biases[self.items[c.id]] for c in instance.candidates])
        return self.cf.scores(user, [self.items[c.id] for c in instance.candidates])


class EnsembleBaseline(_RecBaseline):
    """A classical hybrid: the sum of LightFM WARP's and item transitions' scores, each
    z-scored over the instance's candidates (equal weights, nothing tuned on the targets).
    Collaborative filtering and short-term sequence signals are complementary, so this is
    the bar an LM ranker fused with retrieval scores has to clear, not either one alone."""

    name = model = "ensemble"

    def __init__(self, seed: int = 7) -> None:
        self.parts: list[ScoringBaseline] = [LightFMBaseline(seed=seed), TransitionsBaseline()]

    def fit(self, taskset: TaskSet) -> None:
        for part in self.parts:
            part.fit(taskset)

    def scores(self, instance: Instance) -> np.ndarray:
        # population z-scores (ddof=0): the scale the measured ensemble runs rendered
        return sum(zscores(part.scores(instance), ddof=0) for part in self.parts)  # type: ignore[return-value]


class KNNRouterBaseline(ScoringBaseline):
    """kNN router, the k-nearest-neighbour baseline of RouterBench (Hu et al. 2024,
    arXiv 2403.12031): a query is routed by how the LLMs did on the most
    similar training queries. With N_k(q) the k training queries of highest cosine
    similarity to q (TF-IDF vectors, scikit-learn, fitted on the training questions;
    similarity ties: file order),

        score(m | q) = 1/|N_k^m(q)| * sum over t in N_k^m(q) of u_t(m),
        u_t(m) = w_perf * score_t(m) - w_cost * normalised price(m),

    the task's truth utility (tasks.ROUTER_WEIGHTS, `router_utilities`) averaged over
    the neighbours N_k^m(q) that scored m (an LLM none of them scored: its mean over all
    training queries). Equal scores are broken at random (the stable sort over the
    shuffled candidates), not by price.

    Training queries are `taskset.train_queries` (`tasks.router_pool`). When they are a separate
    split (`split` "train") every evaluated query uses all of them; when they are the
    evaluated file itself ("evaluated": the shipped data has only train.json) they are
    cross-fitted: fold = crc32(question) mod 5, and a query's neighbours (and the TF-IDF
    vocabulary) come only from the other four folds, so no evaluated query, nor a copy
    of its text, is ever its own neighbour."""

    name = model = "knn-router"
    tasks = ("router",)
    folds = 5

    def __init__(self, k: int = 10) -> None:
        if k < 1:
            raise UserError(f"knn-router: k must be >= 1, got {k}")
        self.k = k

    @staticmethod
    def fold_of(question: str, folds: int) -> int:
        return zlib.crc32(question.encode("utf-8")) % folds

    def fit(self, taskset: TaskSet) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        pool = taskset.train_queries
        need = {"id", "question", "llm", "utility", "split"}
        if pool is None or not need <= set(pool.columns) or pool.is_empty():
            raise UserError(f"{taskset.name}: no training queries to fit {self.name!r} on")
        self.llms = {m: j for j, m in enumerate(sorted(pool["llm"].unique().to_list()))}
        ids = pool["id"].unique(maintain_order=True).to_list()
        row = {q: i for i, q in enumerate(ids)}
        utility = np.full((len(ids), len(self.llms)), np.nan)
        utility[[row[q] for q in pool["id"]], [self.llms[m] for m in pool["llm"]]] = pool["utility"]
        questions = pool.unique("id", keep="first", maintain_order=True)["question"].to_list()
        self.cross_fit = bool((pool["split"] == "evaluated").any())
        fold = np.array([self.fold_of(q, self.folds) if self.cross_fit else 0 for q in questions])
        self.fallback = np.nanmean(utility, axis=0)
        self.index = {}
        for f in range(self.folds) if self.cross_fit else (None,):
            keep = fold != f if f is not None else np.ones(len(questions), dtype=bool)
            if not keep.any():
                raise UserError(
                    f"{taskset.name}: too few training queries to cross-fit {self.name!r} in "
                    f"{self.folds} folds (fold {f} holds all {len(questions)}); put a separate "
                    "train.json beside the evaluated file"
                )
            vectorizer = TfidfVectorizer(sublinear_tf=True)
            matrix = vectorizer.fit_transform(
                [q for q, k in zip(questions, keep, strict=True) if k]
            )
            self.index[f] = (vectorizer, matrix, utility[keep], np.array(ids)[keep])

    def _nearest(self, instance: Instance) -> tuple[np.ndarray, np.ndarray]:
        """(utility rows, ids) of the k training queries nearest the instance's question."""
        query = instance.query or ""
        fold = self.fold_of(query, self.folds) if self.cross_fit else None
        vectorizer, matrix, utility, ids = self.index[fold]
        similarity = (matrix @ vectorizer.transform([query]).T).toarray().ravel()
        top = np.argsort(-similarity, kind="stable")[: self.k]
        return utility[top], ids[top]

    def neighbours(self, instance: Instance) -> list[str]:
        """The ids (`router_pool`) of the training queries the instance is scored from."""
        return self._nearest(instance)[1].tolist()

    def scores(self, instance: Instance) -> np.ndarray:
        nearest = self._nearest(instance)[0]
        seen = ~np.isnan(nearest)
        counts = seen.sum(axis=0)
        mean = np.where(counts > 0, np.where(seen, nearest, 0).sum(axis=0) / np.maximum(counts, 1),
                        self.fallback)  # fmt: skip
        return np.array([mean[self.llms[c.id]] if c.id in self.llms else -np.inf
                         for c in instance.candidates])  # fmt: skip


def scored_candidates(instance: Instance, scores: Sequence[float]) -> tuple[Candidate, ...]:
    """The instance's candidates carrying a classical recommender's scores as retrieval
    `score` (rounded to 4 places, as prompts show them) and `signals` = {cf_rank}: how
    training episodes and fused evaluation see a rec instance. Equal scores share a rank
    ("1, 2, 2, 4"): a prompt must not leak the list order."""
    values = [float(x) for x in scores]
    rank = [1 + sum(x > v for x in values) for v in values]
    return tuple(
        Candidate(id=c.id, text=c.text, score=round(v, 4), signals={"cf_rank": r})
        for c, v, r in zip(instance.candidates, values, rank, strict=True)
    )
