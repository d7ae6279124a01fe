"""Per-candidate features for a learned-to-rank stage: collaborative, sequence, content.

`FeatureModels.fit` learns, from one interaction log (users' items in time order), every
model a feature needs: LightFM WARP factors, item popularity, windowed item-to-item
transition counts, item co-occurrence (item kNN) and item metadata (genres, release year,
platform, title words). `features(user, history, candidates)` then gives one row per
candidate, `FEATURE_NAMES` in order. Which interactions the models see is the caller's
business: a ranker trained on targets must get features from models fitted without them
(see `retrieval.ltr_stage` for the protocol that keeps training free of leakage, shared by
`recsys.eval.ltr`). `save(folder)` / `load(folder)` persist the fitted models as JSON and
numpy/scipy files.

| feature | value for candidate c, user u, history h_1..h_n (oldest first) |
| --- | --- |
| lightfm | LightFM WARP score u . c + b_c (b_c alone for an unknown user) |
| transitions | sum_j T10[h_j, c]: how often c followed h_j within 10 steps |
| trans_last1 | T1[h_n, c]: how often c came right after the last item |
| trans_last5 | sum over the last 5 history items of T10[h, c] |
| trans_ratio | transitions / (popularity(c) + 1): transitions beyond what popularity explains |
| itemknn | sum_j cos(h_j, c) over user co-occurrence (binary, cosine) |
| log_pop | log(1 + interactions of c) |
| z_lightfm, z_transitions, ensemble | z-scores over the instance's candidates; their sum |
| genre_overlap | share of history items sharing a genre with c (NaN: no genres known) |
| year_gap | abs(year(c) - median history year) (NaN: unknown) |
| platform_share | share of history items on c's platform (NaN: no platform in its title) |
| title_overlap | Jaccard of c's title words with the history's title words |
| user_activity | log(1 + the user's interactions in the fitted log) |

With item text vectors (`fit(..., text_vectors=...)`, e.g. the retrieval stage's MiniLM title
embeddings) three more columns follow, `TEXT_FEATURE_NAMES`, on the L2-normalised vectors
e (items without one: zeros):

| feature | value |
| --- | --- |
| text_mean | cos(e_c, mean_j e_hj): c against the history as a whole |
| text_max | max_j cos(e_c, e_hj): c against its closest history item |
| text_last | cos(e_c, e_hn): c against the last item |

Why: the other features know an item only by its interactions, its genres, year, platform
and title words; an item with few interactions (cold start) then looks like noise. On
rec-game's held-out cold-start targets these three columns add about +3 MRR points to
LambdaMART on average over five LightGBM seeds, and nothing measurable overall
(docs/RESULTS.md 0h).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from retrieval.cf import CFModel, interactions_matrix
from retrieval.errors import RetrievalError

FEATURE_NAMES = (
    "lightfm", "transitions", "trans_last1", "trans_last5", "trans_ratio", "itemknn",
    "log_pop", "z_lightfm", "z_transitions", "ensemble", "genre_overlap", "year_gap",
    "platform_share", "title_overlap", "user_activity",
)  # fmt: skip

TEXT_FEATURE_NAMES = ("text_mean", "text_max", "text_last")

_MATRICES = ("trans10", "trans1", "cooc")  # the item x item models, one .npz file each
_YEAR = re.compile(r"\((\d{4})\)\s*$")
_WORD = re.compile(r"[a-z0-9]{3,}")
_STOP = frozenset({"the", "and", "for", "with", "edition", "game", "games"})
# Longest names first, so "PlayStation 4" wins over "PlayStation".
_PLATFORMS = sorted(
    [
        "PlayStation 4", "PlayStation 3", "PlayStation 2", "PlayStation Vita", "PlayStation",
        "PSP", "PS4", "PS3", "PS2", "Xbox One", "Xbox 360", "Xbox", "Nintendo Switch",
        "Wii U", "Wii", "Nintendo 3DS", "3DS", "Nintendo DS", "Game Boy Advance", "GBA",
        "Game Boy", "GameCube", "Nintendo 64", "N64", "Super Nintendo", "SNES", "NES",
        "Sega Genesis", "Dreamcast", "Mac", "PC", "Windows", "Linux",
    ],
    key=len,
    reverse=True,
)  # fmt: skip
_PLATFORM = re.compile(r"\b(" + "|".join(re.escape(p) for p in _PLATFORMS) + r")\b", re.I)
_ALIASES = {"ps4": "playstation 4", "ps3": "playstation 3", "ps2": "playstation 2",
            "gba": "game boy advance", "n64": "nintendo 64", "3ds": "nintendo 3ds",
            "snes": "super nintendo", "windows": "pc"}  # fmt: skip


def title_year(title: str) -> float:
    """The release year a title ends with ("Heat (1995)" -> 1995), NaN when none."""
    m = _YEAR.search(title)
    return float(m.group(1)) if m else math.nan


def title_platform(title: str) -> str | None:
    """The gaming platform a title names ("... - Game Boy Advance"), lower case, or None."""
    found = _PLATFORM.findall(title)
    if not found:
        return None
    name = found[-1].lower()  # the platform suffix is last in Amazon titles
    return _ALIASES.get(name, name)


def title_words(title: str) -> frozenset[str]:
    return frozenset(w for w in _WORD.findall(title.lower()) if w not in _STOP)


@dataclass(frozen=True)
class ItemMeta:
    """What the content features read about one item."""

    genres: frozenset[str] = frozenset()
    year: float = math.nan
    platform: str | None = None
    words: frozenset[str] = frozenset()

    @classmethod
    def from_title(cls, title: str, genres: str | None = None) -> ItemMeta:
        """From a title and an optional "A|B|C" genre string."""
        gs = frozenset(g for g in (genres or "").split("|") if g and g != "unknown")
        return cls(gs, title_year(title), title_platform(title), title_words(title))


def zscore(x: np.ndarray) -> np.ndarray:
    std = x.std()
    return (x - x.mean()) / std if std > 0 else np.zeros_like(x)


@dataclass(frozen=True)
class _Codes:
    """Candidates and history as model indices (unknown candidates: index 0, known False)."""

    safe: np.ndarray
    known: np.ndarray
    hist: list[int]


@dataclass
class FeatureModels:
    """Every model the features need, fitted on one log. Build with `fit`."""

    items: dict[str, int]
    users: dict[str, int]
    cf: CFModel
    popularity: np.ndarray
    trans10: sp.csr_matrix
    trans1: sp.csr_matrix
    cooc: sp.csr_matrix  # item x item cosine of binary user co-occurrence
    activity: dict[str, int]
    meta: Mapping[str, ItemMeta] = field(default_factory=dict)
    text: np.ndarray | None = None  # (items, d) L2-normalised, row order; None: no text columns

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The columns `features` gives: FEATURE_NAMES, then TEXT_FEATURE_NAMES with text."""
        return FEATURE_NAMES if self.text is None else (*FEATURE_NAMES, *TEXT_FEATURE_NAMES)

    @property
    def item_order(self) -> list[str]:
        """The item ids in row order (of the CF factors and every item x item matrix)."""
        return sorted(self.items, key=self.items.__getitem__)

    @classmethod
    def fit(
        cls,
        users: Sequence[str],
        items: Sequence[str],
        catalogue: Sequence[str],
        meta: Mapping[str, ItemMeta] | None = None,
        *,
        factors: int = 64,
        epochs: int = 30,
        seed: int = 7,
        window: int = 10,
        text_vectors: Mapping[str, np.ndarray] | None = None,
    ) -> FeatureModels:
        """`users`/`items`: the log, grouped by user and in time order within a user;
        `catalogue`: every item a candidate may be (items without interactions get zeros);
        `text_vectors`: item id -> vector, for the text columns (module doc)."""
        index = {it: i for i, it in enumerate(sorted(set(catalogue) | set(items)))}
        user_index = {u: i for i, u in enumerate(dict.fromkeys(users))}
        codes = np.array([index[i] for i in items], dtype=np.int64)
        ucodes = np.array([user_index[u] for u in users], dtype=np.int64)
        n = len(index)
        binary = interactions_matrix(ucodes, codes, len(user_index), n)
        cf = CFModel.fit(binary, loss="warp", factors=factors, epochs=epochs, seed=seed)
        norms = np.sqrt(np.asarray(binary.sum(axis=0)).ravel()) + 1e-9
        normed = binary.multiply(1.0 / norms[None, :]).tocsc()
        cooc = (normed.T @ normed).tocsr()
        cooc.setdiag(0.0)
        return cls(
            items=index,
            users=user_index,
            cf=cf,
            popularity=np.bincount(codes, minlength=n).astype(np.float64),
            trans10=transition_counts(ucodes, codes, n, window),
            trans1=transition_counts(ucodes, codes, n, 1),
            cooc=cooc,
            activity={
                u: int(c) for u, c in zip(*np.unique(users, return_counts=True), strict=True)
            },
            meta=dict(meta or {}),
            text=None if text_vectors is None else _text_matrix(index, text_vectors),
        )

    # -- persistence (JSON + numpy/scipy files, no pickle) ------------------------------------

    def save(self, folder: str | Path) -> None:
        """features.json (ids, activity, item metadata), features.npz (CF, popularity) and
        one scipy .npz per item x item matrix, into `folder`."""
        folder = Path(folder)
        items = self.item_order
        users = sorted(self.users, key=self.users.__getitem__)
        doc = {
            "items": items,
            "users": users,
            "activity": {str(u): int(c) for u, c in self.activity.items()},
            "meta": {i: _meta_doc(m) for i, m in self.meta.items()},
            "cf": {"loss": self.cf.loss, "params": self.cf.params},
        }
        (folder / "features.json").write_text(json.dumps(doc), encoding="utf-8")
        arrays = {f"cf_{k}": v for k, v in self.cf.to_arrays().items()}
        if self.text is not None:
            arrays["text"] = self.text
        np.savez(folder / "features.npz", popularity=self.popularity, **arrays)
        for name in _MATRICES:
            sp.save_npz(folder / f"{name}.npz", getattr(self, name).tocsr())

    @classmethod
    def load(cls, folder: str | Path) -> FeatureModels:
        folder = Path(folder)
        try:
            doc = json.loads((folder / "features.json").read_text("utf-8"))
            with np.load(folder / "features.npz") as data:
                arrays = {k: data[k] for k in data.files}
            mats = {n: sp.load_npz(folder / f"{n}.npz").tocsr() for n in _MATRICES}
        except (OSError, ValueError, KeyError) as exc:
            raise RetrievalError(f"{folder}: not saved feature models ({exc})") from None
        cf = CFModel.from_arrays(
            {k[3:]: v for k, v in arrays.items() if k.startswith("cf_")},
            doc["cf"]["loss"],
            doc["cf"]["params"],
        )
        return cls(
            items={i: n for n, i in enumerate(doc["items"])},
            users={u: n for n, u in enumerate(doc["users"])},
            cf=cf,
            popularity=arrays["popularity"],
            activity=dict(doc["activity"]),
            meta={i: _meta_from_doc(m) for i, m in doc["meta"].items()},
            text=arrays.get("text"),
            **mats,
        )

    def features(
        self, user: str | None, history: Sequence[str], candidates: Sequence[str]
    ) -> np.ndarray:
        """(len(candidates), len(self.feature_names)) float64; unknown items score zero."""
        c = self._codes(history, candidates)
        lfm, trans = self._cf_and_transitions(user, c)
        last1 = _row_sum(self.trans1, c.hist[-1:], c.safe) * c.known
        last5 = _row_sum(self.trans10, c.hist[-5:], c.safe) * c.known
        knn = _row_sum(self.cooc, c.hist, c.safe) * c.known
        pop = self.popularity[c.safe] * c.known
        z_l, z_t = zscore(lfm), zscore(trans)
        content = np.array([self._content(history, i) for i in candidates]).reshape(-1, 4)
        activity = math.log1p(self.activity.get(user or "", 0))
        cols = [lfm, trans, last1, last5, trans / (pop + 1), knn, np.log1p(pop), z_l, z_t,
                z_l + z_t, *content.T, np.full(len(candidates), activity)]  # fmt: skip
        if self.text is not None:
            cols.extend(self._text_columns(c))
        return np.column_stack(cols).astype(np.float64)

    def ensemble(
        self, user: str | None, history: Sequence[str], candidates: Sequence[str]
    ) -> np.ndarray:
        """z(lightfm) + z(transitions) alone: the classical ensemble, without the rest."""
        lfm, trans = self._cf_and_transitions(user, self._codes(history, candidates))
        return zscore(lfm) + zscore(trans)

    def _codes(self, history: Sequence[str], candidates: Sequence[str]) -> _Codes:
        cand = np.array([self.items.get(c, -1) for c in candidates])
        known = cand >= 0
        hist = [self.items[h] for h in history if h in self.items]
        return _Codes(np.where(known, cand, 0), known, hist)

    def _cf_and_transitions(self, user: str | None, c: _Codes) -> tuple[np.ndarray, np.ndarray]:
        lfm = self._lightfm(user, c.safe) * c.known
        return lfm, _row_sum(self.trans10, c.hist, c.safe) * c.known

    def _lightfm(self, user: str | None, items: np.ndarray) -> np.ndarray:
        u = self.users.get(user or "")
        if u is None:
            return self.cf.item_biases[items].astype(np.float64)
        return self.cf.scores(u, items).astype(np.float64)

    def _text_columns(self, c: _Codes) -> list[np.ndarray]:
        """text_mean, text_max, text_last (module doc); zeros without a known history."""
        assert self.text is not None
        cand = self.text[c.safe] * c.known[:, None]
        if not c.hist:
            return [np.zeros(len(c.safe))] * len(TEXT_FEATURE_NAMES)
        hist = self.text[c.hist]
        mean = hist.mean(axis=0)
        mean = mean / (np.linalg.norm(mean) or 1.0)
        sims = cand @ hist.T
        return [cand @ mean, sims.max(axis=1), sims[:, -1]]

    def _content(self, history: Sequence[str], candidate: str) -> tuple[float, ...]:
        c = self.meta.get(candidate)
        hs = [self.meta[h] for h in history if h in self.meta]
        if c is None or not hs:
            return (math.nan, math.nan, math.nan, 0.0)
        genre = (sum(bool(c.genres & h.genres) for h in hs) / len(hs)) if c.genres else math.nan
        years = [h.year for h in hs if not math.isnan(h.year)]
        gap = abs(c.year - float(np.median(years))) if years else math.nan
        share = sum(h.platform == c.platform for h in hs) / len(hs) if c.platform else math.nan
        words = frozenset().union(*(h.words for h in hs))
        union = len(c.words | words)
        return (genre, gap, share, len(c.words & words) / union if union else 0.0)


def _text_matrix(index: Mapping[str, int], vectors: Mapping[str, np.ndarray]) -> np.ndarray:
    """(len(index), d) float32 in row order, L2-normalised; zeros for items without one."""
    dims = {np.asarray(v).shape for v in vectors.values()}
    if len(dims) != 1 or len(next(iter(dims))) != 1:
        raise RetrievalError(f"text vectors must all be 1-d of one length; got shapes {dims}")
    out = np.zeros((len(index), next(iter(dims))[0]), dtype=np.float32)
    for item, row in index.items():
        v = vectors.get(item)
        if v is not None:
            norm = float(np.linalg.norm(v))
            out[row] = np.asarray(v, dtype=np.float32) / (norm or 1.0)
    return out


def _meta_doc(m: ItemMeta) -> list:
    year = None if math.isnan(m.year) else m.year
    return [sorted(m.genres), year, m.platform, sorted(m.words)]


def _meta_from_doc(doc: list) -> ItemMeta:
    genres, year, platform, words = doc
    return ItemMeta(frozenset(genres), math.nan if year is None else float(year), platform,
                    frozenset(words))  # fmt: skip


def transition_counts(users: np.ndarray, codes: np.ndarray, n: int, window: int) -> sp.csr_matrix:
    """count[a, b] = how often b follows a within `window` steps of one user's sequence
    (`users` / `codes`: one row per interaction, each user's rows together in time order;
    `n` items). Also the retrieval stage's `next` source (retrieval.sources)."""
    rows, cols = [], []
    for d in range(1, window + 1):
        same = users[:-d] == users[d:]
        rows.append(codes[:-d][same])
        cols.append(codes[d:][same])
    row, col = np.concatenate(rows), np.concatenate(cols)
    return sp.csr_matrix((np.ones(len(row)), (row, col)), shape=(n, n))


def _row_sum(matrix: sp.csr_matrix, rows: Sequence[int], cols: np.ndarray) -> np.ndarray:
    if not rows:
        return np.zeros(len(cols))
    return np.asarray(matrix[list(rows)].sum(axis=0)).ravel()[cols].astype(np.float64)
