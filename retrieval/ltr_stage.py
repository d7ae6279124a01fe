"""The learned-to-rank stage between retrieval and the LM: LambdaMART over `retrieval.features`.

`LTRStage.fit(users, items, timestamps, titles)` trains on an interaction log without
leakage (the protocol `recsys.eval.ltr` evaluates with; the functions below are the one
implementation both use):

1. the log is put in time order per user; the *inner log* is the log minus each user's last
   item (`split_last`);
2. feature models (`FeatureModels`: LightFM, transitions, item kNN, popularity, content)
   are fitted on the inner log;
3. one query per user with at least two interactions: target = that last item, history =
   the `history` items before it, `negatives` items the user never interacted with: about
   half from the inner CF top-50 of the user's unseen items, the rest uniform
   (`training_queries`);
4. LambdaMART (`retrieval.ltr`) fitted on the queries' features;
5. the feature models refitted on the full log: what `rerank` scores with. No target
   reaches steps 1-4 except as the label of its own query.

`rerank(user, history_ids, candidate_ids)` gives one score per candidate (higher is
better); `save(folder)` / `load(folder)` persist it as JSON + numpy/scipy files (no
pickle) inside a retrieval artifact, whose `ArtifactStore` makes the write crash-safe.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import RetrievalError
from retrieval.features import FeatureModels, ItemMeta
from retrieval.ltr import LambdaMART

HISTORY_LEN = 20  # history items a query shows (the eval protocol's)
N_NEGATIVES = 19  # negatives per training query (the eval protocol's)
HARD_DEPTH = 50  # hard negatives come from the user's inner CF top-50
STAGE_FILE, MODEL_FILE = "stage.json", "lambdamart.json"


# -- the protocol (shared with recsys.eval.ltr) --------------------------------------------------


def split_last(
    users: Sequence[str], items: Sequence[str], only: Collection[str] | None = None
) -> tuple[np.ndarray, dict[str, tuple[list[str], str]]]:
    """(mask of the rows the inner log keeps, user -> (their items before the last, last))
    for a log in time order within each user: each user's last row is dropped (only the
    users in `only`, when given). Users whose last item is their only one are not in the
    mapping (nothing to learn it from)."""
    if len(users) != len(items):
        raise RetrievalError(f"users and items must be equally long ({len(users)}, {len(items)})")
    last: dict[str, int] = {}
    for row, user in enumerate(users):
        if only is None or user in only:
            last[user] = row
    keep = np.ones(len(users), dtype=bool)
    keep[list(last.values())] = False
    before: dict[str, list[str]] = {}
    for row, user in enumerate(users):
        if keep[row] and user in last:
            before.setdefault(user, []).append(items[row])
    return keep, {u: (before[u], items[r]) for u, r in last.items() if u in before}


def cf_ranked(models: FeatureModels, user: str, pool: np.ndarray, k: int) -> np.ndarray:
    """The k items of `pool` the user's CF score ranks highest (popularity for a user the
    CF model does not know): where hard negatives are drawn from."""
    codes = np.array([models.items[i] for i in pool])
    uidx = models.users.get(user)
    scores = models.cf.scores(uidx, codes) if uidx is not None else models.popularity[codes]
    return pool[np.argsort(-scores, kind="stable")[:k]]


def next_ranked(
    models: FeatureModels, before: Sequence[str], pool: np.ndarray, k: int, recent: int = 5
) -> np.ndarray:
    """The k items of `pool` that most often came within 10 steps after the user's last
    `recent` items (the index's `next` source on the inner log; only items that did):
    hard negatives for a stage whose pool the `next` source feeds."""
    rows = [models.items[i] for i in before[-recent:] if i in models.items]
    if not rows or not len(pool):
        return pool[:0]
    codes = np.array([models.items[i] for i in pool])
    scores = np.asarray(models.trans10[rows].sum(axis=0)).ravel()[codes]
    found = np.flatnonzero(scores)
    return pool[found[np.argsort(-scores[found], kind="stable")][:k]]


def mixed_negatives(
    ranked: np.ndarray, pool: np.ndarray, n: int, n_hard: int, rng: np.random.Generator
) -> list[str]:
    """n negatives: min(n_hard, len(ranked)) drawn from `ranked`, the rest uniform from the
    remainder of `pool` (both without replacement)."""
    hard = rng.choice(ranked, size=min(n_hard, len(ranked)), replace=False).tolist()
    rest = pool[~np.isin(pool, hard)]
    return hard + rng.choice(rest, size=n - len(hard), replace=False).tolist()


def draw_negatives(
    models: FeatureModels,
    user: str,
    pool: np.ndarray,
    rng: np.random.Generator,
    hard: bool,
    n: int,
    *,
    n_hard: int | None = None,
    depth: int = HARD_DEPTH,
    before: Sequence[str] | None = None,
) -> list[str]:
    """n of the user's unseen items (`pool`): uniform, or `n_hard` (default n // 2 + 1) from
    their CF top-`depth` and the rest uniform. With `before` (the user's items, oldest
    first) the hard ones come from the CF top-`depth` and the `next` top-`depth` together."""
    if not hard:
        return rng.choice(pool, size=n, replace=False).tolist()
    n_hard = n // 2 + 1 if n_hard is None else min(n_hard, n)
    ranked = cf_ranked(models, user, pool, depth)
    if before is not None:
        nxt = next_ranked(models, before, pool, depth)
        ranked = np.concatenate([ranked, nxt[~np.isin(nxt, ranked)]])
    return mixed_negatives(ranked, pool, n, n_hard, rng)


@dataclass(frozen=True)
class Query:
    """One training query: a user's history, candidates (shuffled, the target among them)."""

    user: str
    history: tuple[str, ...]
    candidates: tuple[str, ...]
    target: str

    def labels(self) -> np.ndarray:
        return np.array([float(c == self.target) for c in self.candidates])


def training_queries(
    models: FeatureModels,
    seqs: Mapping[str, tuple[Sequence[str], str]],
    seen: Mapping[str, Collection[str]],
    catalogue: Sequence[str],
    rng_for: Callable[[str], np.random.Generator],
    *,
    hard_negatives: bool,
    negatives: int = N_NEGATIVES,
    n_hard: int | None = None,
    hard_depth: int = HARD_DEPTH,
    history: int = HISTORY_LEN,
    exact: bool = True,
    hard_next: bool = False,
) -> list[Query]:
    """Step 3: one query per user of `seqs` (user -> (items before, target)), in user order.
    Negatives are catalogue items outside `seen[user]` (every item of the user's log, the
    target included): with `hard_negatives`, `n_hard` of them (default: half plus one) from
    the user's CF top-`hard_depth`, the rest uniform. `exact`: skip a user with fewer than
    `negatives` unseen items (the evaluation protocol); otherwise draw as many as there are
    (at least one). `hard_next`: the hard ones also from the `next` source's top-`hard_depth`
    (`draw_negatives`)."""
    items = np.array(sorted(catalogue))
    out = []
    for user in sorted(seqs):
        before, target = seqs[user]
        if not before:
            continue
        rng = rng_for(user)
        pool = items[~np.isin(items, list(seen[user]))]
        n = negatives if exact else min(negatives, len(pool))
        if len(pool) < n or (not exact and n < 1):
            continue
        drawn = draw_negatives(
            models, user, pool, rng, hard_negatives, n, n_hard=n_hard, depth=hard_depth,
            before=before if hard_next else None,
        )  # fmt: skip
        ids = [target, *drawn]
        shuffled = tuple(ids[i] for i in rng.permutation(len(ids)))
        out.append(Query(user, tuple(before[-history:]), shuffled, target))
    return out


def user_rng(seed: int, user: str) -> np.random.Generator:
    """A user's generator for the stage's negatives (depends on the seed and the user only)."""
    return np.random.default_rng([seed, zlib.crc32(f"ltr:{user}".encode())])


# -- the stage ---------------------------------------------------------------------------------


@dataclass
class TrainingSet:
    """Steps 1-3 on a log: what LambdaMART is fitted on, and what it was built from."""

    users: list[str]  # the log in time order within each user
    items: list[str]
    inner: np.ndarray  # mask: the rows of the inner log (each user's last one dropped)
    queries: list[Query]
    models: FeatureModels  # fitted on the inner log
    catalogue: list[str]
    meta: dict[str, ItemMeta]


@dataclass
class LTRStage:
    """A fitted LambdaMART ranker and the feature models (full log) it scores with."""

    ranker: LambdaMART
    models: FeatureModels
    history: int = HISTORY_LEN
    info: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def training_set(
        users: Sequence[str],
        items: Sequence[str],
        timestamps: Sequence[float] | np.ndarray,
        titles: Mapping[str, str],
        genres: Mapping[str, str] | None = None,
        *,
        seed: int = 7,
        negatives: int = N_NEGATIVES,
        hard: int | None = None,
        hard_depth: int = HARD_DEPTH,
        history: int = HISTORY_LEN,
        factors: int = 64,
        epochs: int = 30,
        text_vectors: Mapping[str, np.ndarray] | None = None,
        hard_next: bool = False,
    ) -> TrainingSet:
        """Steps 1-3 of the module protocol. `titles`: item id -> title for every item a
        candidate may be (items of the log without a title are added); `genres`: item id ->
        "A|B|C" (optional). Each query gets `negatives` negatives, `hard` of them (default
        half plus one; 0: none) from the user's inner CF top-`hard_depth` (with `hard_next`,
        and its `next` top-`hard_depth`). `text_vectors` (item id -> vector) add the text
        features (`retrieval.features`)."""
        if not len(users):
            raise RetrievalError(
                "the LambdaMART stage needs a non-empty interaction log to train on"
            )
        if not (len(users) == len(items) == len(timestamps)):
            raise RetrievalError(
                "users, items and timestamps must be equally long "
                f"({len(users)}, {len(items)}, {len(timestamps)})"
            )
        if negatives < 1 or history < 1:
            raise RetrievalError(f"negatives and history must be >= 1 (got {negatives}, {history})")
        first = {u: i for i, u in enumerate(dict.fromkeys(users))}
        order = np.lexsort(
            (np.arange(len(users)), np.asarray(timestamps, dtype=np.float64),
             np.array([first[u] for u in users]))
        )  # fmt: skip
        log_users = [str(users[i]) for i in order]
        log_items = [str(items[i]) for i in order]
        keep, seqs = split_last(log_users, log_items)
        if not seqs:
            raise RetrievalError(
                "the LambdaMART stage needs users with at least 2 interactions (each user's "
                "last item is held out as the target its earlier items predict); this log has "
                "none"
            )
        catalogue = sorted({*map(str, titles), *log_items})
        meta = {i: ItemMeta.from_title(titles.get(i, i), (genres or {}).get(i)) for i in catalogue}
        inner_users = [u for u, k in zip(log_users, keep, strict=True) if k]
        inner_items = [i for i, k in zip(log_items, keep, strict=True) if k]
        models = FeatureModels.fit(
            inner_users, inner_items, catalogue, meta, factors=factors, epochs=epochs, seed=seed,
            text_vectors=text_vectors,
        )  # fmt: skip
        seen: dict[str, set[str]] = {}
        for u, i in zip(log_users, log_items, strict=True):
            seen.setdefault(u, set()).add(i)
        queries = training_queries(
            models, seqs, seen, catalogue, lambda u: user_rng(seed, u),
            hard_negatives=hard != 0, negatives=negatives, n_hard=hard, hard_depth=hard_depth,
            history=history, exact=False, hard_next=hard_next,
        )  # fmt: skip
        if not queries:
            raise RetrievalError(
                f"the LambdaMART stage found no negatives: every user with 2+ interactions "
                f"has seen all {len(catalogue)} catalogue items; it needs items a user has not "
                "seen to rank against the target"
            )
        return TrainingSet(log_users, log_items, keep, queries, models, catalogue, meta)

    @classmethod
    def fit(
        cls,
        users: Sequence[str],
        items: Sequence[str],
        timestamps: Sequence[float] | np.ndarray,
        titles: Mapping[str, str],
        genres: Mapping[str, str] | None = None,
        *,
        seed: int = 7,
        negatives: int = N_NEGATIVES,
        hard: int | None = None,
        hard_depth: int = HARD_DEPTH,
        history: int = HISTORY_LEN,
        factors: int = 64,
        epochs: int = 30,
        params: Mapping[str, Any] | None = None,
        text_vectors: Mapping[str, np.ndarray] | None = None,
        bag: int = 1,
        hard_next: bool = False,
    ) -> LTRStage:
        """The whole protocol (module doc); `params` override LightGBM's (retrieval.ltr);
        `text_vectors` (item id -> vector) add the text features (`retrieval.features`);
        `bag`: LightGBM fits averaged (`retrieval.ltr.LambdaMART.fit`)."""
        ts = cls.training_set(
            users, items, timestamps, titles, genres, seed=seed, negatives=negatives,
            hard=hard, hard_depth=hard_depth, history=history, factors=factors, epochs=epochs,
            text_vectors=text_vectors, hard_next=hard_next,
        )  # fmt: skip
        groups = [
            (ts.models.features(q.user, q.history, q.candidates), q.labels()) for q in ts.queries
        ]
        names = ts.models.feature_names
        ranker = LambdaMART.fit(groups, names, seed=seed, bag=bag, **dict(params or {}))
        full = FeatureModels.fit(
            ts.users, ts.items, ts.catalogue, ts.meta, factors=factors, epochs=epochs, seed=seed,
            text_vectors=text_vectors,
        )  # fmt: skip
        info = {
            "queries": len(ts.queries),
            "rows": int(sum(len(q.candidates) for q in ts.queries)),
            "interactions": len(ts.users),
            "negatives": negatives,
            "hard": negatives // 2 + 1 if hard is None else hard,
            "hard_depth": hard_depth,
            "hard_next": hard_next,
            "factors": factors,
            "epochs": epochs,
            "seed": seed,
            "text_features": text_vectors is not None,
            "bag": bag,
        }
        return cls(ranker, full, history, info)

    def rerank(
        self, user: str | None, history_ids: Sequence[str], candidate_ids: Sequence[str]
    ) -> np.ndarray:
        """One LambdaMART score per candidate (higher is better) given the user's history
        (oldest first; the last `history` items are used)."""
        if not len(candidate_ids):
            return np.zeros(0)
        recent = list(history_ids)[-self.history :]
        return self.ranker.scores(self.models.features(user, recent, candidate_ids))

    # -- persistence --------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Into `folder` (created): the feature models, the booster, this stage's settings.
        Call it inside `ArtifactStore.save`'s writer, which publishes the folder atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.models.save(folder)
        self.ranker.save(folder / MODEL_FILE)
        doc = {"history": self.history, "feature_names": list(self.ranker.feature_names),
               "info": self.info}  # fmt: skip
        (folder / STAGE_FILE).write_text(json.dumps(doc, indent=1), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> LTRStage:
        folder = Path(folder)
        try:
            doc = json.loads((folder / STAGE_FILE).read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise RetrievalError(f"{folder}: not a saved LambdaMART stage ({exc})") from None
        ranker = LambdaMART.load(folder / MODEL_FILE)
        models = FeatureModels.load(folder)
        if tuple(doc.get("feature_names", ())) != models.feature_names:
            raise RetrievalError(
                f"{folder}: the stage was trained on features {doc.get('feature_names')}, "
                f"this code computes {list(models.feature_names)}; rebuild the index"
            )
        return cls(ranker, models, int(doc["history"]), doc.get("info", {}))
