"""FAISS indexes: exact answers for flat, good recall for HNSW/IVF-PQ, save/load round trip."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.errors import RetrievalError
from retrieval.index import IndexParams, VectorIndex, choose_params, gpu_available


def clustered(n, dim, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((32, dim))
    x = centers[rng.integers(0, 32, n)] + 0.3 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(x, q, k):
    return np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]


def test_flat_is_exact():
    x, q = clustered(500, 16), clustered(20, 16, seed=1)
    scores, pos = VectorIndex.build(x, IndexParams(kind="flat")).search(q, 10)
    np.testing.assert_array_equal(pos, brute_force(x, q, 10))
    np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, pos, axis=1), rtol=1e-5)


@pytest.mark.parametrize(
    "params",
    [
        IndexParams(kind="hnsw", hnsw_m=16, ef_construction=64, ef_search=128),
        IndexParams(kind="ivfpq", nlist=16, pq_m=16, pq_bits=6, nprobe=8, refine_factor=8),
    ],
)
def test_approximate_indexes_recall_and_round_trip(tmp_path, params):
    x, q = clustered(4000, 32), clustered(50, 32, seed=1)
    index = VectorIndex.build(x, params)
    _, pos = index.search(q, 10)
    truth = brute_force(x, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(pos, truth, strict=True)])
    assert recall >= 0.9
    index.save(tmp_path / "i.faiss")
    loaded = VectorIndex.load(tmp_path / "i.faiss")
    assert loaded.params == params and loaded.size == 4000
    np.testing.assert_array_equal(loaded.search(q, 10)[1], pos)


def test_add_appends_positions_and_new_vectors_are_found():
    x = clustered(300, 16)
    index = VectorIndex.build(x, IndexParams(kind="flat"))
    new = clustered(2, 16, seed=5)
    assert index.add(new).tolist() == [300, 301]
    assert index.search(new[1], 1)[1][0, 0] == 301


def test_k_larger_than_index_returns_all():
    index = VectorIndex.build(clustered(5, 8), IndexParams(kind="flat"))
    scores, pos = index.search(clustered(1, 8, seed=2), 50)
    assert sorted(pos[0].tolist()) == [0, 1, 2, 3, 4] and scores.shape == (1, 5)


@pytest.mark.parametrize(
    ("n", "dim", "kind"), [(1_000, 64, "flat"), (100_000, 64, "hnsw"), (5_000_000, 384, "ivfpq")]
)
def test_params_chosen_by_catalogue_size(n, dim, kind):
    params = choose_params(n, dim)
    assert params.kind == kind
    if kind == "ivfpq":
        assert dim % params.pq_m == 0 and params.nlist == int(4 * np.sqrt(n))
    if kind == "hnsw":  # the measured operating point (docs/retrieval.md, Benchmarks)
        assert (params.hnsw_m, params.ef_construction, params.ef_search) == (32, 100, 100)
    assert choose_params(n, dim, ef_search=999).ef_search == 999


BAD = [
    (lambda: choose_params(10, 8, efsearch=3), RetrievalError, "unknown index parameter"),
    (lambda: VectorIndex.build(np.ones(8), IndexParams(kind="lsh")), RetrievalError, "kind"),
    (lambda: VectorIndex.build(np.ones((5, 2, 2))), RetrievalError, "2-d array"),
    (
        lambda: VectorIndex.build(np.full((5, 4), np.nan)),
        RetrievalError,
        "NaN or infinity",
    ),
    (
        lambda: VectorIndex.build(np.ones((100, 10)), IndexParams(kind="ivfpq", pq_m=3)),
        RetrievalError,
        "pq_m to divide",
    ),
    (
        lambda: VectorIndex.build(np.ones((5, 4)), IndexParams(kind="flat")).search(
            np.ones((1, 3)), 2
        ),
        RetrievalError,
        "dimension 3, the index has 4",
    ),
    (lambda: VectorIndex.load("/nonexistent/x.faiss"), RetrievalError, "no index at"),
]


@pytest.mark.parametrize(("call", "error", "message"), BAD)
def test_index_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.skipif(gpu_available(), reason="checks the message shown when no GPU is present")
def test_cuda_without_faiss_gpu_names_the_extra():
    with pytest.raises(RetrievalError, match=r"install the `gpu` extra"):
        VectorIndex.build(np.ones((5, 4)), IndexParams(kind="flat", device="cuda"))


def test_tune_changes_search_depth_without_rebuilding():
    x, q = clustered(2000, 16), clustered(20, 16, seed=3)
    index = VectorIndex.build(x, IndexParams(kind="hnsw", hnsw_m=8, ef_construction=32))
    index.tune(ef_search=512)
    assert index.params.ef_search == 512
    assert index._index.hnsw.efSearch == 512
    _, pos = index.search(q, 10)
    truth = brute_force(x, q, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(pos, truth, strict=True)]) >= 0.95


def test_ivfpq_skips_polysemous_training_and_caps_the_training_sample():
    import faiss

    from retrieval.index import _training_sample

    x = clustered(2000, 16)
    index = VectorIndex.build(x, IndexParams(kind="ivfpq", nlist=8, pq_m=8, pq_bits=4, nprobe=8))
    ivf = faiss.extract_index_ivf(index._index)
    assert not faiss.downcast_index(ivf).do_polysemous_training  # ~80% of the build otherwise
    params = IndexParams(kind="ivfpq", nlist=4, pq_bits=4, train_per_list=100)
    assert len(_training_sample(x, params, seed=0)) == 2**4 * 64  # the PQ floor wins
    assert len(_training_sample(x, params.with_overrides(train_per_list=400), 0)) == 1600
