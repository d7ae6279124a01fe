"""Collaborative filtering with LightFM (package `lightfm-next`): WARP or BPR loss.

Trained from a scipy sparse user x item interactions matrix (implicit feedback: any
non-zero entry is a positive), optionally with item features (e.g. text embeddings
or genres). The learned factors are exported so that the FAISS index can serve
CF retrieval by inner product:

    score(u, i) = user_factors[u] . item_factors[i] + item_bias[i]  (+ a per-user constant)

`CFModel.user_vectors()` / `CFModel.item_vectors()` return augmented vectors (the item
bias as an extra item column, a constant 1 on the user side), so their inner product
equals `CFModel.scores` and an inner-product index ranks exactly like the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import scipy.sparse as sp

from retrieval.errors import RetrievalError

Loss = Literal["warp", "bpr", "warp-kos", "logistic"]
LOSSES = ("warp", "bpr", "warp-kos", "logistic")


@dataclass
class CFModel:
    """A fitted LightFM model plus the exported factors. Build it with `CFModel.fit`."""

    user_factors: np.ndarray  # (n_users, factors)
    item_factors: np.ndarray  # (n_items, factors): item representations (features included)
    user_biases: np.ndarray  # (n_users,)
    item_biases: np.ndarray  # (n_items,)
    loss: str = "warp"
    params: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return int(self.user_factors.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_factors.shape[0])

    @classmethod
    def fit(
        cls,
        interactions: sp.spmatrix | sp.sparray,
        *,
        loss: Loss = "warp",
        factors: int = 64,
        epochs: int = 30,
        learning_rate: float = 0.05,
        item_alpha: float = 0.0,
        user_alpha: float = 0.0,
        item_features: sp.spmatrix | np.ndarray | None = None,
        sample_weight: sp.spmatrix | None = None,
        seed: int = 7,
        threads: int = 1,
    ) -> CFModel:
        """Train on `interactions` (n_users x n_items, non-zero = positive).

        `item_features` (n_items x n_features, dense or sparse): LightFM then represents
        an item as the sum of its feature embeddings; an identity block is prepended so
        each item keeps its own free vector as well (the usual hybrid set-up).
        `threads` > 1 makes training non-deterministic (Hogwild), so the default is 1.
        """
        if loss not in LOSSES:
            raise RetrievalError(f"unknown CF loss {loss!r}; use one of {list(LOSSES)}")
        if factors < 1 or epochs < 1:
            raise RetrievalError(f"factors and epochs must be >= 1 (got {factors}, {epochs})")
        coo = _as_positive_coo(interactions)
        n_items = coo.shape[1]
        features = _with_identity(item_features, n_items) if item_features is not None else None

        from lightfm import LightFM  # heavy-ish import kept local

        model = LightFM(
            no_components=factors,
            loss=loss,
            learning_rate=learning_rate,
            item_alpha=item_alpha,
            user_alpha=user_alpha,
            random_state=np.random.RandomState(seed),
        )
        model.fit(
            coo,
            item_features=features,
            sample_weight=sample_weight,
            epochs=epochs,
            num_threads=threads,
        )
        item_biases, item_factors = model.get_item_representations(features)
        user_biases, user_factors = model.get_user_representations()
        return cls(
            user_factors=np.ascontiguousarray(user_factors, dtype=np.float32),
            item_factors=np.ascontiguousarray(item_factors, dtype=np.float32),
            user_biases=np.asarray(user_biases, dtype=np.float32),
            item_biases=np.asarray(item_biases, dtype=np.float32),
            loss=loss,
            params={
                "factors": factors,
                "epochs": epochs,
                "learning_rate": learning_rate,
                "seed": seed,
                "item_features": None if item_features is None else int(features.shape[1]),
            },
        )

    # -- scoring -----------------------------------------------------------------

    def _check_user(self, user_idx: int) -> int:
        if not isinstance(user_idx, int | np.integer) or not 0 <= user_idx < self.n_users:
            raise RetrievalError(
                f"unknown user index {user_idx!r}: the CF model knows users 0..{self.n_users - 1}; "
                "retrain after ingesting new users, or use cold-start retrieval"
            )
        return int(user_idx)

    def scores(self, user_idx: int, item_idxs: np.ndarray | list[int] | None = None) -> np.ndarray:
        """Predicted affinity of one user for the given items (all items when None)."""
        u = self._check_user(user_idx)
        items = np.arange(self.n_items) if item_idxs is None else np.asarray(item_idxs, dtype=int)
        if items.size and (items.min() < 0 or items.max() >= self.n_items):
            raise RetrievalError(f"item index out of range 0..{self.n_items - 1}")
        return self.item_factors[items] @ self.user_factors[u] + self.item_biases[items]

    def recommend(
        self, user_idx: int, k: int, exclude: np.ndarray | list[int] | set[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indices and their scores for a user, best first, `exclude` removed."""
        s = self.scores(user_idx).astype(np.float64)
        if exclude is not None and len(exclude):
            s[np.fromiter(exclude, dtype=int)] = -np.inf
        k = min(k, int(np.isfinite(s).sum()))
        top = np.argpartition(-s, k - 1)[:k] if k > 0 else np.array([], dtype=int)
        top = top[np.argsort(-s[top], kind="stable")]
        return top, s[top]

    # -- export for the ANN index ------------------------------------------------------

    def item_vectors(self) -> np.ndarray:
        """Item factors with the item bias as one extra column (for inner-product search)."""
        return np.hstack([self.item_factors, self.item_biases[:, None]]).astype(np.float32)

    def user_vectors(self) -> np.ndarray:
        """User factors with a constant 1 column, matching `item_vectors()`."""
        ones = np.ones((self.n_users, 1), dtype=np.float32)
        return np.hstack([self.user_factors, ones]).astype(np.float32)

    def user_vector(self, user_idx: int) -> np.ndarray:
        """One row of `user_vectors()`, without building the whole matrix."""
        u = self._check_user(user_idx)
        return np.append(self.user_factors[u], np.float32(1.0)).astype(np.float32)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "user_factors": self.user_factors,
            "item_factors": self.item_factors,
            "user_biases": self.user_biases,
            "item_biases": self.item_biases,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], loss: str = "warp", params=None) -> CFModel:
        return cls(
            user_factors=np.asarray(arrays["user_factors"], dtype=np.float32),
            item_factors=np.asarray(arrays["item_factors"], dtype=np.float32),
            user_biases=np.asarray(arrays["user_biases"], dtype=np.float32),
            item_biases=np.asarray(arrays["item_biases"], dtype=np.float32),
            loss=loss,
            params=dict(params or {}),
        )


def interactions_matrix(
    user_idx: np.ndarray, item_idx: np.ndarray, n_users: int, n_items: int
) -> sp.csr_matrix:
    """A binary user x item CSR matrix from index pairs (duplicates collapse to 1)."""
    user_idx = np.asarray(user_idx, dtype=np.int64)
    item_idx = np.asarray(item_idx, dtype=np.int64)
    data = np.ones(len(user_idx), dtype=np.float32)
    m = sp.csr_matrix((data, (user_idx, item_idx)), shape=(n_users, n_items))
    m.data[:] = 1.0
    return m


def _as_positive_coo(interactions) -> sp.coo_matrix:
    if not sp.issparse(interactions):
        raise RetrievalError(
            "interactions must be a scipy sparse matrix (n_users x n_items); "
            "build one with retrieval.cf.interactions_matrix(users, items, n_users, n_items)"
        )
    coo = sp.coo_matrix(interactions)
    coo.sum_duplicates()
    if coo.nnz == 0:
        raise RetrievalError("interactions matrix is empty: nothing to train on")
    keep = coo.data > 0
    return sp.coo_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (coo.row[keep], coo.col[keep])),
        shape=coo.shape,
    )


def _with_identity(item_features, n_items: int) -> sp.csr_matrix:
    feats = sp.csr_matrix(item_features, dtype=np.float32)
    if feats.shape[0] != n_items:
        raise RetrievalError(
            f"item_features has {feats.shape[0]} rows but the interactions have {n_items} items"
        )
    return sp.hstack([sp.identity(n_items, dtype=np.float32, format="csr"), feats]).tocsr()
