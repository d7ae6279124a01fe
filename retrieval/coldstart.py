"""Cold start: users without history and items without interactions.

- A user with no history gets the most popular items, or, given a text query (a search box,
  a stated interest), the items whose text embedding is nearest to the query's.
- A new item enters through its text embedding: it is added to the text index at once and is
  retrievable by text-profile and query search before CF has ever seen it.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from retrieval.embeddings import TextEmbedder
from retrieval.index import VectorIndex

Ranked = list[tuple[int, float]]


def popular_items(popularity: np.ndarray, k: int, exclude: Collection[int] = ()) -> Ranked:
    """The k most popular item positions (ties: lower position first), `exclude` removed."""
    order = np.lexsort((np.arange(len(popularity)), -popularity))
    excluded = set(exclude)
    out: Ranked = []
    for pos in order:
        if int(pos) in excluded:
            continue
        out.append((int(pos), float(popularity[pos])))
        if len(out) == k:
            break
    return out


def nearest_items(index: VectorIndex, query_vector: np.ndarray, k: int) -> Ranked:
    """Items nearest to one query vector, best first."""
    scores, positions = index.search(query_vector[None, :], k)
    return [(int(p), float(s)) for p, s in zip(positions[0], scores[0], strict=True) if p >= 0]


def items_near_text(embedder: TextEmbedder, index: VectorIndex, query: str, k: int) -> Ranked:
    """Items whose text embedding is nearest to a free-text query."""
    return nearest_items(index, embedder.embed([query])[0], k)


def profile_vector(item_vectors: np.ndarray, recent_items: list[int]) -> np.ndarray | None:
    """A user's text profile: the normalised mean embedding of their recent items."""
    if not recent_items:
        return None
    mean = item_vectors[recent_items].mean(axis=0)
    norm = float(np.linalg.norm(mean))
    return (mean / norm).astype(np.float32) if norm > 0 else None
