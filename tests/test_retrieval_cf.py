"""CF learns a planted block structure; bad input gets a clear RetrievalError."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from retrieval.cf import CFModel, interactions_matrix
from retrieval.errors import RetrievalError


def planted(n_users=120, n_items=80, n_groups=4, per_user=12, seed=0):
    """Users in group g interact only with items in block g; one held out per user."""
    rng = np.random.default_rng(seed)
    block = n_items // n_groups
    train_u, train_i, held = [], [], {}
    for u in range(n_users):
        g = u % n_groups
        items = rng.choice(np.arange(g * block, (g + 1) * block), per_user + 1, replace=False)
        held[u] = int(items[-1])
        train_u += [u] * per_user
        train_i += items[:-1].tolist()
    m = interactions_matrix(np.array(train_u), np.array(train_i), n_users, n_items)
    return m, held


@pytest.mark.parametrize("loss", ["warp", "bpr"])
def test_cf_learns_planted_structure(loss):
    m, held = planted()
    model = CFModel.fit(m, loss=loss, factors=16, epochs=20, seed=7)
    k = 10
    hits = 0
    for u, target in held.items():
        top, scores = model.recommend(u, k, exclude=m[u].indices)
        assert not set(top) & set(m[u].indices), "seen items must be excluded"
        assert np.all(np.diff(scores) <= 1e-6), "recommendations sorted by score"
        hits += target in top
    recall = hits / len(held)
    random_recall = k / (m.shape[1] - 12)  # ~0.15
    # within-block candidates: 20 - 12 = 8 unseen, all fit in top-10 -> near 1
    assert recall > 0.8 > 3 * random_recall


def test_cf_exports_vectors_that_reproduce_scores():
    m, _ = planted(n_users=40, n_items=40, per_user=5)
    model = CFModel.fit(m, factors=8, epochs=3, seed=1)
    assert model.user_factors.shape == (40, 8) and model.item_factors.shape == (40, 8)
    via_vectors = model.user_vectors()[3] @ model.item_vectors().T
    np.testing.assert_allclose(via_vectors, model.scores(3), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(model.user_vector(3), model.user_vectors()[3])


def test_cf_is_seeded():
    m, _ = planted(n_users=40, n_items=40, per_user=5)
    a = CFModel.fit(m, factors=8, epochs=3, seed=3)
    b = CFModel.fit(m, factors=8, epochs=3, seed=3)
    np.testing.assert_array_equal(a.item_factors, b.item_factors)


def test_cf_with_item_features_learns_too():
    m, held = planted()
    # one-hot block membership as an item feature: shared signal across a block
    n_items = m.shape[1]
    feats = sp.csr_matrix((np.ones(n_items), (np.arange(n_items), np.arange(n_items) // 20)))
    model = CFModel.fit(m, factors=16, epochs=20, item_features=feats, seed=7)
    assert model.item_factors.shape == (n_items, 16)
    hits = sum(t in model.recommend(u, 10, exclude=m[u].indices)[0] for u, t in held.items())
    assert hits / len(held) > 0.8


BAD = [
    (lambda m: CFModel.fit(m.toarray()), "scipy sparse matrix"),
    (lambda m: CFModel.fit(sp.csr_matrix(m.shape)), "empty"),
    (lambda m: CFModel.fit(m, loss="hinge"), "unknown CF loss"),
    (lambda m: CFModel.fit(m, item_features=np.ones((3, 2))), "item_features has 3 rows"),
]


@pytest.mark.parametrize(("call", "message"), BAD)
def test_cf_bad_input(call, message):
    m, _ = planted(n_users=20, n_items=20, per_user=3)
    with pytest.raises(RetrievalError, match=message):
        call(m)


@pytest.mark.parametrize("user", [-1, 20, 10**6, "alice"])
def test_unknown_user_is_a_clear_error(user):
    m, _ = planted(n_users=20, n_items=20, per_user=3)
    model = CFModel.fit(m, factors=4, epochs=1)
    with pytest.raises(RetrievalError, match="unknown user index"):
        model.recommend(user, 5)
