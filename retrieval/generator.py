"""`CandidateGenerator`: the retrieval facade. Interactions + item texts in, top-K candidates out.

    gen = CandidateGenerator.build(users, items, timestamps, catalogue, embedder=TextEmbedder())
    gen.candidates("196", k=20)          # fused CF + text-profile + popularity, seen items removed
                                         # (then LambdaMART-ordered when built with ltr=True)
    gen.cold_start(k=20, query="space opera")
    gen.add_item("new-1", "A new film about ...")
    gen.save(ArtifactStore(root), version); CandidateGenerator.load(ArtifactStore(root), version)

The generator composes a list of sources (retrieval.sources: `cf`, `text`, `popular`, and
`next` when `weights["next"] > 0`, each behind the RetrievalSource interface) and fuses
their answers (retrieval.fusion); it owns what the sources share: the id maps, the users'
seen and recent items, persistence.

With `GeneratorConfig(ltr=True)` the index also holds a LambdaMART stage
(retrieval.ltr_stage, fitted on the same log without leakage): `candidates` then takes the
top `max(k, ltr_pool)` fused candidates of a user with history and returns the top k in the
stage's order, the stage's score as the candidate score (so the LM fuses with LambdaMART);
each candidate keeps its fused rank and score as `ranks["fused"]` / `scores["fused"]` and its
LambdaMART ones as `ranks["ltr"]` / `scores["ltr"]`.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from retrieval.artifacts import Artifact, ArtifactStore
from retrieval.cf import CFModel, interactions_matrix
from retrieval.embeddings import TextEmbedder
from retrieval.errors import RetrievalError
from retrieval.features import transition_counts
from retrieval.fusion import FusedCandidate, fuse
from retrieval.index import VectorIndex, choose_params
from retrieval.ltr import MAX_BAG, valid_bag
from retrieval.ltr_stage import LTRStage
from retrieval.sources import (
    CFSource,
    PopularitySource,
    RetrievalSource,
    Scored,
    SourceQuery,
    TextSource,
    TransitionsSource,
    source_lists,
)

ARTIFACT_NAME = "retrieval"
LTR_FOLDER = "ltr"  # the LambdaMART stage's files inside an index artifact
NEXT_FILE = "next.npz"  # the `next` source's transition counts inside an index artifact
DEFAULT_WEIGHTS = {"cf": 1.0, "text": 0.3, "popular": 0.2}
# the `next` source's weight when it is on (chosen on ml-100k's validation split). The
# library's DEFAULT_WEIGHTS leave it out, so the eval tasks build the index they always did;
# `recsys batch` and `recsys demo` turn it on (docs/retrieval.md "The next source")
NEXT_WEIGHT = 1.0
# cold start: a stated interest (a text query) outweighs the crowd
QUERY_WEIGHTS = {"text": 1.0, "popular": 0.2}
POPULAR_WEIGHTS = {"popular": 1.0}


@dataclass
class GeneratorConfig:
    cf_loss: str = "warp"
    cf_factors: int = 64
    cf_epochs: int = 30
    cf_threads: int = 1
    seed: int = 7
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    fusion: str = "rrf"
    profile_items: int = 10  # recent items averaged into the text profile
    # the `next` source (retrieval.sources.TransitionsSource), built when weights["next"] > 0:
    # items within next_window steps after the user's last next_recent items
    next_recent: int = 5
    next_window: int = 10
    index_overrides: dict[str, object] = field(default_factory=dict)
    # the LambdaMART stage (retrieval.ltr_stage): fitted by `build` when on; re-ranks the
    # top `ltr_pool` fused candidates (its feature models use cf_factors / cf_epochs / seed).
    # Training queries: ltr_negatives negatives, ltr_hard of them (None: half plus one) from
    # the user's CF top-ltr_hard_depth, the rest uniform
    ltr: bool = False
    ltr_pool: int = 50  # chosen on a validation split (docs/retrieval.md)
    ltr_negatives: int = 19
    ltr_hard: int | None = None
    ltr_hard_depth: int = 50
    # the stage's text features too (retrieval.features): the text profile's title
    # embeddings as item vectors; needs an embedder
    ltr_text: bool = False
    # LightGBM fits the stage averages (retrieval.ltr): steadier from one retrain to the next
    ltr_bag: int = 1
    # the stage's hard negatives also from the `next` source's top; None: when the index fuses
    # it (the stage then learns the pool it re-ranks: docs/retrieval.md "The next source")
    ltr_hard_next: bool | None = None


class CandidateGenerator:
    def __init__(
        self,
        *,
        user_ids: list[str],
        item_ids: list[str],
        seen: sp.csr_matrix,
        recent: list[list[int]],
        popularity: np.ndarray,
        cf: CFModel | None,
        cf_index: VectorIndex | None,
        text_vectors: np.ndarray | None,
        text_index: VectorIndex | None,
        config: GeneratorConfig,
        embedder: TextEmbedder | None = None,
        ltr: LTRStage | None = None,
        transitions: sp.csr_matrix | None = None,
    ) -> None:
        self.user_ids, self.item_ids = user_ids, item_ids
        self.user_pos = {u: i for i, u in enumerate(user_ids)}
        self.item_pos = {it: i for i, it in enumerate(item_ids)}
        self.seen, self.recent = seen, recent
        self.config, self.embedder = config, embedder
        self.cf_source = CFSource(cf, cf_index) if cf is not None and cf_index is not None else None
        self.text_source = None
        if text_vectors is not None and text_index is not None:
            self.text_source = TextSource(
                text_vectors, text_index, embedder, profile_items=config.profile_items
            )
        self.popular_source = PopularitySource(popularity)
        self.next_source = None
        if transitions is not None:
            self.next_source = TransitionsSource(transitions, recent_items=config.next_recent)
        self.ltr = ltr

    @property
    def sources(self) -> list[RetrievalSource]:
        """The sources this generator fuses, in fusion order (those it was built with)."""
        found = (self.cf_source, self.text_source, self.popular_source, self.next_source)
        return [s for s in found if s is not None]

    @property
    def popularity(self) -> np.ndarray:
        return self.popular_source.counts

    @property
    def cf(self) -> CFModel | None:
        return self.cf_source.cf if self.cf_source else None

    @property
    def text_vectors(self) -> np.ndarray | None:
        return self.text_source.vectors if self.text_source else None

    # -- build ----------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        users: Sequence[str],
        items: Sequence[str],
        timestamps: Sequence[float],
        catalogue: Mapping[str, str],
        *,
        embedder: TextEmbedder | None = None,
        config: GeneratorConfig | None = None,
        progress: bool = False,
        timings: dict[str, float] | None = None,
        titles: Mapping[str, str] | None = None,
        genres: Mapping[str, str] | None = None,
    ) -> CandidateGenerator:
        """Train CF on the interactions and embed the catalogue's texts (item id -> text).

        Items that appear only in `catalogue` (no interactions) are retrievable by text.
        Without an `embedder` the text source is off. Seconds per stage (cf, embeddings,
        index, ltr) are added to `timings` when given, CPU seconds (all threads) as
        `<stage>_cpu`. `titles` (item id -> title, default: the catalogue texts) and `genres`
        (item id -> "A|B|C") feed the LambdaMART stage's content features (config.ltr)."""
        timings = timings if timings is not None else {}
        config = config or GeneratorConfig()
        if not (len(users) == len(items) == len(timestamps)) or not len(users):
            raise RetrievalError("users, items and timestamps must be non-empty and equally long")
        if config.ltr and config.ltr_pool < 1:
            raise RetrievalError(f"ltr_pool must be >= 1, got {config.ltr_pool}")
        if config.ltr and not valid_bag(config.ltr_bag):
            raise RetrievalError(f"ltr_bag must be from 1 to {MAX_BAG}, got {config.ltr_bag}")
        if config.next_recent < 1 or config.next_window < 1:
            raise RetrievalError(
                f"next_recent and next_window must be >= 1, got {config.next_recent} and "
                f"{config.next_window}"
            )
        if config.ltr_text and embedder is None:
            raise RetrievalError(
                "ltr_text needs the title embeddings: build with an embedder, or turn ltr_text off"
            )
        item_ids = list(dict.fromkeys([*catalogue, *items]))
        user_ids = list(dict.fromkeys(users))
        item_pos = {it: i for i, it in enumerate(item_ids)}
        user_pos = {u: i for i, u in enumerate(user_ids)}
        u_idx = np.fromiter((user_pos[u] for u in users), dtype=np.int64, count=len(users))
        i_idx = np.fromiter((item_pos[i] for i in items), dtype=np.int64, count=len(items))
        seen = interactions_matrix(u_idx, i_idx, len(user_ids), len(item_ids))
        started, cpu = time.perf_counter(), time.process_time()
        cf = CFModel.fit(
            seen,
            loss=config.cf_loss,  # type: ignore[arg-type]
            factors=config.cf_factors,
            epochs=config.cf_epochs,
            seed=config.seed,
            threads=config.cf_threads,
        )
        _record(timings, "cf", started, cpu)
        text_vectors = text_index = None
        if embedder is not None:
            started, cpu = time.perf_counter(), time.process_time()
            texts = [catalogue.get(it) or it for it in item_ids]
            text_vectors = embedder.embed(texts, progress=progress)
            _record(timings, "embeddings", started, cpu)
        started, cpu = time.perf_counter(), time.process_time()
        cf_vectors = cf.item_vectors()
        cf_index = VectorIndex.build(
            cf_vectors, choose_params(*cf_vectors.shape, **config.index_overrides)
        )
        if text_vectors is not None:
            text_index = VectorIndex.build(
                text_vectors, choose_params(*text_vectors.shape, **config.index_overrides)
            )
        _record(timings, "index", started, cpu)
        ltr = None
        if config.ltr:
            started, cpu = time.perf_counter(), time.process_time()
            names = {it: (titles or {}).get(it) or catalogue.get(it) or it for it in item_ids}
            ltr = LTRStage.fit(
                users, items, timestamps, names, genres, seed=config.seed,
                negatives=config.ltr_negatives, hard=config.ltr_hard,
                hard_depth=config.ltr_hard_depth, factors=config.cf_factors,
                epochs=config.cf_epochs, text_vectors=_ltr_text(config, item_ids, text_vectors),
                bag=config.ltr_bag, hard_next=stage_hard_next(config),
            )  # fmt: skip
            _record(timings, "ltr", started, cpu)
        return cls(
            user_ids=user_ids,
            item_ids=item_ids,
            seen=seen,
            recent=_recent_items(u_idx, i_idx, np.asarray(timestamps), len(user_ids), 50),
            transitions=_transitions(config, u_idx, i_idx, np.asarray(timestamps), len(item_ids)),
            popularity=np.asarray(seen.sum(axis=0)).ravel().astype(np.float32),
            cf=cf,
            cf_index=cf_index,
            text_vectors=text_vectors,
            text_index=text_index,
            config=config,
            embedder=embedder,
            ltr=ltr,
        )

    # -- retrieve --------------------------------------------------------------------------------

    def source_lists(self, user_id: str, depth: int) -> dict[str, Scored]:
        """Each source's ranked (item position, score) list for a known user."""
        u = self._user(user_id)
        return source_lists(self.sources, SourceQuery(user=u, recent=self.recent[u]), depth)

    def candidates(
        self, user_id: str, k: int = 20, *, exclude_seen: bool = True, ltr: bool = True
    ) -> list[FusedCandidate]:
        """The user's top-k candidates (item ids), best first, seen items removed: fused, then
        (an index with the LambdaMART stage, `ltr` left on, a user with history) the top
        `max(k, ltr_pool)` fused ones re-ranked by the stage, its score as `score`."""
        u = self._user(user_id)
        rerank = ltr and self.ltr is not None and bool(self.recent[u])
        pool = max(k, self.config.ltr_pool) if rerank else k
        seen = set(self.seen[u].indices.tolist()) if exclude_seen else set()
        depth = min(len(self.item_ids), pool + len(seen))
        fused = self._to_ids(
            fuse(
                self.source_lists(user_id, depth),
                pool,
                weights=self.config.weights,
                method=self.config.fusion,  # type: ignore[arg-type]
                exclude=seen,
            )
        )
        if not rerank or not fused:
            return fused
        return self._rerank(user_id, fused)[:k]

    def _rerank(self, user_id: str, fused: list[FusedCandidate]) -> list[FusedCandidate]:
        """`fused` in the LambdaMART stage's order (ties: the fused order), its score kept as
        ranks/scores["fused"], the stage's as ranks/scores["ltr"] and as `score`."""
        assert self.ltr is not None
        history = self.history(user_id, self.ltr.history)
        scores = self.ltr.rerank(user_id, history, [str(c.item) for c in fused])
        order = np.argsort(-scores, kind="stable")
        out = []
        for rank, i in enumerate(order, 1):
            c = fused[int(i)]
            c.ranks["fused"], c.scores["fused"] = int(i) + 1, float(c.score)
            c.ranks["ltr"], c.scores["ltr"] = rank, float(scores[i])
            c.score = float(scores[i])
            out.append(c)
        return out

    def cold_start(
        self, k: int = 20, *, query: str | None = None, exclude: Sequence[str] = ()
    ) -> list[FusedCandidate]:
        """Candidates for a user without history: popular items, fused with items near `query`."""
        skip = {self.item_pos[i] for i in exclude if i in self.item_pos}
        depth = min(len(self.item_ids), k + len(skip))
        if query is not None:
            self._text_parts()  # a query needs the text source and its embedder
        lists = source_lists(self.sources, SourceQuery(text=query), depth)
        weights = QUERY_WEIGHTS if query is not None else POPULAR_WEIGHTS
        return self._to_ids(fuse(lists, k, weights=weights, exclude=skip))

    def add_item(self, item_id: str, text: str) -> int:
        """Make a new item retrievable by its text embedding; returns its position."""
        if item_id in self.item_pos:
            raise RetrievalError(f"item {item_id!r} already exists")
        self._text_parts().add([text])
        self.item_pos[item_id] = len(self.item_ids)
        self.item_ids.append(item_id)
        self.popular_source.add()
        if self.next_source is not None:
            self.next_source.add()
        self.seen.resize((self.seen.shape[0], len(self.item_ids)))
        return self.item_pos[item_id]

    def history(self, user_id: str, limit: int = 20) -> list[str]:
        """The user's most recent training items (ids), oldest first."""
        return [self.item_ids[i] for i in self.recent[self._user(user_id)][-limit:]]

    def interactions(self, item_id: str) -> int:
        """The item's interactions in the log the index was built on (0 for an item it does
        not know): what the LM's abstention rule reads (ranking.fusion)."""
        pos = self.item_pos.get(item_id)
        return 0 if pos is None else int(self.popularity[pos])

    # -- persistence -------------------------------------------------------------------------

    def save(self, store: ArtifactStore, version: str, meta: dict | None = None) -> Artifact:
        def write(folder: Path) -> None:
            (folder / "ids.json").write_text(
                json.dumps({"users": self.user_ids, "items": self.item_ids})
            )
            (folder / "config.json").write_text(json.dumps(asdict(self.config)))
            sp.save_npz(folder / "seen.npz", self.seen.tocsr())
            lengths = np.array([len(r) for r in self.recent], dtype=np.int64)
            flat = np.array([i for r in self.recent for i in r], dtype=np.int64)
            arrays: dict[str, np.ndarray] = {
                "popularity": self.popularity,
                "recent_lengths": lengths,
                "recent_items": flat,
            }
            if self.cf is not None:
                arrays |= {f"cf_{k}": v for k, v in self.cf.to_arrays().items()}
            if self.text_vectors is not None:
                arrays["text_vectors"] = self.text_vectors
            np.savez(folder / "arrays.npz", **arrays)
            if self.cf_source is not None:
                self.cf_source.index.save(folder / "cf.faiss")
            if self.text_source is not None:
                self.text_source.index.save(folder / "text.faiss")
            if self.ltr is not None:
                self.ltr.save(folder / LTR_FOLDER)
            if self.next_source is not None:
                sp.save_npz(folder / NEXT_FILE, self.next_source.counts)

        meta = {"users": len(self.user_ids), "items": len(self.item_ids), **(meta or {})}
        return store.save(ARTIFACT_NAME, version, write, meta=meta)

    @classmethod
    def load(
        cls,
        store: ArtifactStore,
        version: str | None = None,
        *,
        embedder: TextEmbedder | None = None,
    ) -> CandidateGenerator:
        art = store.load(ARTIFACT_NAME, version)
        folder = art.path
        ids = json.loads((folder / "ids.json").read_text())
        config = GeneratorConfig(**json.loads((folder / "config.json").read_text()))
        with np.load(folder / "arrays.npz") as data:
            arrays = {k: data[k] for k in data.files}
        cf = None
        if "cf_user_factors" in arrays:
            cf = CFModel.from_arrays(
                {k[3:]: v for k, v in arrays.items() if k.startswith("cf_")}, config.cf_loss
            )
        bounds = np.concatenate([[0], np.cumsum(arrays["recent_lengths"])])
        flat = arrays["recent_items"].tolist()
        recent = [flat[a:b] for a, b in itertools.pairwise(bounds)]
        has_text = (folder / "text.faiss").exists()
        ltr = None
        if (folder / LTR_FOLDER).is_dir():
            ltr = LTRStage.load(folder / LTR_FOLDER)
        elif config.ltr:
            raise RetrievalError(
                f"retrieval version {art.version!r} was built with the LambdaMART stage but "
                f"its {LTR_FOLDER}/ files are missing; rebuild the index"
            )
        transitions = None
        if (folder / NEXT_FILE).exists():
            transitions = sp.load_npz(folder / NEXT_FILE).tocsr()
        elif uses_next(config):
            raise RetrievalError(
                f"retrieval version {art.version!r} fuses the `next` source but its "
                f"{NEXT_FILE} is missing; rebuild the index"
            )
        return cls(
            user_ids=ids["users"],
            item_ids=ids["items"],
            seen=sp.load_npz(folder / "seen.npz").tocsr(),
            recent=recent,
            popularity=arrays["popularity"],
            cf=cf,
            cf_index=VectorIndex.load(folder / "cf.faiss") if cf is not None else None,
            text_vectors=arrays.get("text_vectors"),
            text_index=VectorIndex.load(folder / "text.faiss") if has_text else None,
            config=config,
            embedder=embedder,
            ltr=ltr,
            transitions=transitions,
        )

    # -- helpers ---------------------------------------------------------------------------

    def _user(self, user_id: str) -> int:
        try:
            return self.user_pos[user_id]
        except KeyError:
            raise RetrievalError(
                f"unknown user {user_id!r}: not in the training data of this retrieval model "
                f"({len(self.user_ids)} users); use cold_start() for new users or rebuild"
            ) from None

    def _text_parts(self) -> TextSource:
        """The text source, when it can embed new text (a query, a new item's text)."""
        if self.text_source is None:
            raise RetrievalError(
                "text retrieval needs a text embedder and a text index: build or load the "
                "generator with embedder=TextEmbedder()"
            )
        self.text_source.require_embedder()
        return self.text_source

    def _to_ids(self, fused: list[FusedCandidate]) -> list[FusedCandidate]:
        for c in fused:
            c.item = self.item_ids[int(c.item)]  # type: ignore[arg-type]
        return fused


def _record(timings: dict[str, float], stage: str, started: float, cpu: float) -> None:
    timings[stage] = time.perf_counter() - started
    timings[f"{stage}_cpu"] = time.process_time() - cpu


def _recent_items(
    users: np.ndarray, items: np.ndarray, timestamps: np.ndarray, n_users: int, keep: int
) -> list[list[int]]:
    """Each user's last `keep` distinct items by time, oldest first."""
    order = np.lexsort((np.arange(len(users)), timestamps, users))
    recent: list[list[int]] = [[] for _ in range(n_users)]
    for pos in order:
        recent[int(users[pos])].append(int(items[pos]))
    return [list(dict.fromkeys(r[::-1]))[:keep][::-1] for r in recent]


def source_weights(next_source: bool = False) -> dict[str, float]:
    """The default fusion weights, with the `next` source at NEXT_WEIGHT when asked for."""
    return {**DEFAULT_WEIGHTS, "next": NEXT_WEIGHT} if next_source else dict(DEFAULT_WEIGHTS)


def uses_next(config: GeneratorConfig) -> bool:
    """Whether an index with this config fuses the `next` source."""
    return config.weights.get("next", 0.0) > 0


def stage_hard_next(config: GeneratorConfig) -> bool:
    """Whether the LambdaMART stage draws hard negatives from the `next` top too."""
    return uses_next(config) if config.ltr_hard_next is None else config.ltr_hard_next


def _transitions(
    config: GeneratorConfig, users: np.ndarray, items: np.ndarray, timestamps: np.ndarray, n: int
) -> sp.csr_matrix | None:
    """The `next` source's counts (None when the config does not fuse it): each user's
    interactions in time order, ties in log order, as `_recent_items` orders them."""
    if not uses_next(config):
        return None
    order = np.lexsort((np.arange(len(users)), timestamps, users))
    return transition_counts(users[order], items[order], n, config.next_window)


def _ltr_text(
    config: GeneratorConfig, item_ids: list[str], vectors: np.ndarray | None
) -> dict[str, np.ndarray] | None:
    """Item id -> title embedding for the LambdaMART stage's text features, when on."""
    if not config.ltr_text or vectors is None:
        return None
    return dict(zip(item_ids, vectors, strict=True))
