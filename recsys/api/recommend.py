"""`/v1/recommend`'s retrieval half: the registered retrieval index, and candidates for a
user from it, with what the database knows now (events posted since the index was built
are excluded; a user the index does not know gets the cold-start path).

The index is the current (promoted, else the latest registered) `index` version — what
`recsys batch` / `recsys demo` build and register — loaded once and replaced when a newer
one is registered (checked at most every `refresh_s`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine

from recsys.db.events import HistoryItem


class NoIndex(RuntimeError):
    """No retrieval index is registered yet."""


@dataclass(frozen=True)
class Retrieved:
    items: list[tuple[str, float]]  # (item id, fused retrieval score), best first
    cold_start: bool


class IndexHolder:
    def __init__(self, engine: Engine, embeddings: str, refresh_s: float = 30.0) -> None:
        self.engine, self.embeddings, self.refresh_s = engine, embeddings, refresh_s
        self._gen = None
        self.version: str | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def current(self):  # type: ignore[no-untyped-def]
        """(generator, version); NoIndex when nothing is registered."""
        with self._lock:
            if self._gen is None or time.monotonic() - self._checked > self.refresh_s:
                self._refresh()
            return self._gen, self.version

    def _refresh(self) -> None:
        from recsys.db.registry import current_model, list_models
        from recsys.pipeline import make_embedder
        from recsys.registry import local_artifact_path
        from retrieval.artifacts import ArtifactStore
        from retrieval.generator import CandidateGenerator

        self._checked = time.monotonic()
        info = current_model("index", engine=self.engine)
        if info is None:
            versions = list_models("index", engine=self.engine)
            info = versions[0] if versions else None  # newest first
        if info is None:
            raise NoIndex(
                "no retrieval index is registered; build one with `recsys batch` (or "
                "`recsys demo`) first"
            )
        if info.version == self.version:
            return
        path = local_artifact_path(info.artifact_uri)
        if path is None or not path.exists():
            raise NoIndex(f"index {info.version!r}: artifact {info.artifact_uri} is not here")
        root = Path(path).parent.parent  # <store>/<artifact name>/<version>
        embedder = make_embedder(self.embeddings, root / "embedding-cache")
        self._gen = CandidateGenerator.load(ArtifactStore(root), path.name, embedder=embedder)
        self.version = info.version


def retrieve(
    gen, user_id: str, history: list[HistoryItem], k: int, exclude: list[str]
) -> Retrieved:  # type: ignore[no-untyped-def]
    """The user's top-k: the index's fused candidates without anything the user has
    interacted with (per the database) or asked to exclude; a user the index does not know
    gets items near their history's titles (or popular items when they have none)."""
    skip = {h.item_id for h in history} | set(exclude)
    if user_id in gen.user_pos:
        depth = min(len(gen.item_ids), k + len(skip))
        items = [(str(c.item), float(c.score)) for c in gen.candidates(user_id, depth)]
        items = [(i, s) for i, s in items if i not in skip][:k]
        if len(items) == k:
            return Retrieved(items, cold_start=False)
        skip |= {i for i, _ in items}
        return Retrieved(items + _cold(gen, k - len(items), None, skip), cold_start=False)
    titles = [h.title for h in history[-5:] if h.title]
    return Retrieved(_cold(gen, k, " ; ".join(titles) or None, skip), cold_start=True)


def _cold(gen, k: int, query: str | None, skip: set[str]) -> list[tuple[str, float]]:  # type: ignore[no-untyped-def]
    from retrieval.errors import RetrievalError

    if k <= 0:
        return []
    try:
        found = gen.cold_start(k, query=query, exclude=sorted(skip))
    except RetrievalError:  # no text index: the popular items
        found = gen.cold_start(k, exclude=sorted(skip))
    return [(str(c.item), float(c.score)) for c in found if str(c.item) not in skip][:k]
