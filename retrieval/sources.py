"""Retrieval sources behind one interface: each turns a query into scored item positions.

A :class:`SourceQuery` says whom candidates are for: a known user (their row in the CF model
and their recent items) or a free-text query (a search box, a stated interest), or both.
A :class:`RetrievalSource` answers with its top `depth` (item position, score) pairs, best
first, or an empty list when it has nothing to say about that query (CF about a user it
never saw, the text profile of a user without history). `retrieval.generator` composes a
list of sources and fuses their lists (`retrieval.fusion`); a new source is one more class
here, not one more branch there.

- :class:`CFSource` (`cf`): the LightFM user vector against the item-vector index;
- :class:`TextSource` (`text`): the query's MiniLM embedding, or else the mean embedding of
  the user's recent items, against the item-text index;
- :class:`PopularitySource` (`popular`): interaction counts in the training data;
- :class:`TransitionsSource` (`next`): items that followed the user's last few items in
  other users' sequences. The CF vector is one per user and blind to order; on MovieLens
  what a user rates next depends on what they rated last (docs/retrieval.md "The `next`
  source": recall@20 +0.07 on the validation split).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp

from retrieval import coldstart
from retrieval.cf import CFModel
from retrieval.embeddings import TextEmbedder
from retrieval.errors import RetrievalError
from retrieval.index import VectorIndex

# a source's answer: (item position, score) pairs, best first
Scored = list[tuple[int, float]]


@dataclass(frozen=True)
class SourceQuery:
    """Whom candidates are for: `user` (a row of the CF model, None for a new user) with
    their `recent` item positions (oldest first), and/or a free-text `text`."""

    user: int | None = None
    recent: Sequence[int] = ()
    text: str | None = None


@runtime_checkable
class RetrievalSource(Protocol):
    """One way of finding candidates. `name` keys the source's fusion weight and the
    per-source ranks each fused candidate keeps."""

    name: str

    def retrieve(self, query: SourceQuery, depth: int) -> Scored:
        """The top `depth` (item position, score) pairs for `query`, best first; [] when the
        source has nothing for this query."""
        ...


class CFSource:
    """Collaborative filtering: items nearest to the user's LightFM vector."""

    name = "cf"

    def __init__(self, cf: CFModel, index: VectorIndex) -> None:
        self.cf, self.index = cf, index

    def retrieve(self, query: SourceQuery, depth: int) -> Scored:
        if query.user is None:  # a user CF never saw has no vector
            return []
        return coldstart.nearest_items(self.index, self.cf.user_vector(query.user), depth)


class TextSource:
    """Text embeddings: items nearest to the query text, or to the user's text profile (the
    normalised mean embedding of their last `profile_items` items)."""

    name = "text"

    def __init__(
        self,
        vectors: np.ndarray,
        index: VectorIndex,
        embedder: TextEmbedder | None = None,
        profile_items: int = 10,
    ) -> None:
        self.vectors, self.index = vectors, index
        self.embedder, self.profile_items = embedder, profile_items

    def retrieve(self, query: SourceQuery, depth: int) -> Scored:
        if query.text is not None:
            return coldstart.items_near_text(self.require_embedder(), self.index, query.text, depth)
        recent = list(query.recent[-self.profile_items :])
        profile = coldstart.profile_vector(self.vectors, recent)
        if profile is None:
            return []
        return coldstart.nearest_items(self.index, profile, depth)

    def require_embedder(self) -> TextEmbedder:
        if self.embedder is None:
            raise RetrievalError(
                "text retrieval needs a text embedder and a text index: build or load the "
                "generator with embedder=TextEmbedder()"
            )
        return self.embedder

    def add(self, texts: Sequence[str]) -> None:
        """Embed new items (their positions follow the existing ones) and index them."""
        vectors = self.require_embedder().embed(list(texts))
        self.index.add(vectors)
        self.vectors = np.vstack([self.vectors, vectors])


class PopularitySource:
    """The most interacted-with items (ties: lower position first), whoever asks."""

    name = "popular"

    def __init__(self, counts: np.ndarray) -> None:
        self.counts = counts

    def retrieve(self, query: SourceQuery, depth: int) -> Scored:
        return coldstart.popular_items(self.counts, depth)

    def add(self, n: int = 1) -> None:
        """New items, never interacted with yet."""
        self.counts = np.append(self.counts, np.zeros(n, dtype=np.float32))


class TransitionsSource:
    """Sequence: score(c) = sum over the user's last `recent_items` items h of count[h, c],
    how often c came within `window` steps after h in the training log
    (retrieval.features.transition_counts). Items with no such count are not returned; a
    user without history gets []."""

    name = "next"

    def __init__(self, counts: sp.csr_matrix, recent_items: int = 5) -> None:
        if recent_items < 1:
            raise RetrievalError(f"recent_items must be >= 1, got {recent_items}")
        self.counts, self.recent_items = counts.tocsr(), recent_items

    def retrieve(self, query: SourceQuery, depth: int) -> Scored:
        rows = [r for r in query.recent[-self.recent_items :] if r < self.counts.shape[0]]
        if not rows or depth < 1:
            return []
        # summed over the rows' stored entries only: the work grows with what followed the
        # user's items, not with the catalogue
        part = self.counts[rows]
        items, where = np.unique(part.indices, return_inverse=True)
        scores = np.bincount(where, weights=part.data, minlength=len(items))
        keep = scores > 0
        items, scores = items[keep], scores[keep]
        best = np.lexsort((items, -scores))[:depth]  # ties: lower position
        return [(int(items[i]), float(scores[i])) for i in best]

    def add(self, n: int = 1) -> None:
        """New items: nothing has followed them, and they followed nothing, yet."""
        size = self.counts.shape[0] + n
        self.counts = self.counts.copy()
        self.counts.resize((size, size))


def source_lists(
    sources: Sequence[RetrievalSource], query: SourceQuery, depth: int
) -> dict[str, Scored]:
    """Each source's answer by name, in the order of `sources` (the order fusion adds
    their contributions in); sources with nothing for the query are left out."""
    out: dict[str, Scored] = {}
    for source in sources:
        scored = source.retrieve(query, depth)
        if scored:
            out[source.name] = scored
    return out
