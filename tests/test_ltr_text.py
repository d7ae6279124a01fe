"""LambdaMART's text features: title-embedding similarities of each candidate to the history
(retrieval.features), known values, persistence, the stage and the eval baseline."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.eval.harness import evaluate
from recsys.eval.ltr import LambdaMARTBaseline, LambdaMARTTextBaseline
from recsys.eval.rankers import make_baseline
from retrieval.embeddings import HashingEncoder
from retrieval.errors import RetrievalError
from retrieval.features import FEATURE_NAMES, TEXT_FEATURE_NAMES, FeatureModels
from retrieval.ltr_stage import LTRStage
from tests.test_ltr import rec_world

USERS = ["u1"] * 3 + ["u2"] * 3 + ["u3"] * 2
ITEMS = ["a", "b", "c", "a", "b", "d", "a", "c"]
CATALOGUE = ["a", "b", "c", "d", "e"]
# unit vectors on three axes (b is a at 60 degrees) and one item without a vector
VECTORS = {
    "a": np.array([1.0, 0.0, 0.0]),
    "b": np.array([0.5, np.sqrt(3) / 2, 0.0]),
    "c": np.array([0.0, 0.0, 2.0]),  # not unit length: normalised on fit
    "d": np.array([0.0, 1.0, 0.0]),
}


def text_models() -> FeatureModels:
    return FeatureModels.fit(USERS, ITEMS, CATALOGUE, factors=4, epochs=2, text_vectors=VECTORS)


def test_text_columns_known_values() -> None:
    fm = text_models()
    assert fm.feature_names == (*FEATURE_NAMES, *TEXT_FEATURE_NAMES)
    x = fm.features("u1", ["a", "c"], ["b", "d", "e", "unknown"])
    assert x.shape == (4, len(FEATURE_NAMES) + 3)
    col = {n: x[:, i] for i, n in enumerate(fm.feature_names)}
    mean = np.array([1.0, 0.0, 1.0]) / np.sqrt(2)  # mean of a and c, normalised
    np.testing.assert_allclose(col["text_mean"][:2], [VECTORS["b"] @ mean, 0.0], atol=1e-6)
    np.testing.assert_allclose(col["text_max"][:2], [0.5, 0.0], atol=1e-6)  # b vs a
    np.testing.assert_allclose(col["text_last"][:2], [0.0, 0.0], atol=1e-6)  # vs c
    # an item without a vector and one outside the catalogue: zeros
    assert not col["text_mean"][2:].any() and not col["text_max"][2:].any()
    # without a known history every text column is 0
    assert not fm.features("u1", ["zz"], ["a", "b"])[:, len(FEATURE_NAMES) :].any()


def test_without_text_the_features_are_unchanged() -> None:
    plain = FeatureModels.fit(USERS, ITEMS, CATALOGUE, factors=4, epochs=2)
    assert plain.feature_names == FEATURE_NAMES and plain.text is None
    x = plain.features("u1", ["a"], ["b", "c"])
    np.testing.assert_allclose(text_models().features("u1", ["a"], ["b", "c"])[:, :15], x)


def test_text_models_round_trip(tmp_path) -> None:
    fm = text_models()
    fm.save(tmp_path)
    loaded = FeatureModels.load(tmp_path)
    assert loaded.feature_names == fm.feature_names
    np.testing.assert_allclose(
        loaded.features("u2", ["a", "b"], CATALOGUE), fm.features("u2", ["a", "b"], CATALOGUE)
    )


@pytest.mark.parametrize(
    ("vectors", "message"),
    [
        ({"a": np.ones(3), "b": np.ones(4)}, "1-d of one length"),
        ({"a": np.ones((2, 3))}, "1-d of one length"),
        ({}, "1-d of one length"),
    ],
)
def test_bad_text_vectors_are_refused(vectors, message: str) -> None:
    with pytest.raises(RetrievalError, match=message):
        FeatureModels.fit(USERS, ITEMS, CATALOGUE, factors=4, epochs=1, text_vectors=vectors)


def _stage_inputs(n_users: int = 12, n_items: int = 30, length: int = 8):
    rng = np.random.default_rng(0)
    users, items = [], []
    for u in range(n_users):
        start = int(rng.integers(n_items))
        users += [f"u{u}"] * length
        items += [str((start + k) % n_items) for k in range(length)]
    titles = {str(i): f"item number {i}" for i in range(n_items)}
    vectors = {i: rng.normal(size=8) for i in titles}
    return users, items, np.arange(len(users), dtype=float), titles, vectors


def test_the_stage_trains_saves_and_loads_with_text(tmp_path) -> None:
    users, items, times, titles, vectors = _stage_inputs()
    stage = LTRStage.fit(users, items, times, titles, factors=4, epochs=2, text_vectors=vectors)
    assert stage.ranker.feature_names == stage.models.feature_names
    assert len(stage.ranker.feature_names) == len(FEATURE_NAMES) + 3
    assert stage.info["text_features"] is True
    scores = stage.rerank("u0", items[:5], ["10", "11", "12"])
    loaded = LTRStage.load(stage.save(tmp_path / "ltr"))
    np.testing.assert_allclose(loaded.rerank("u0", items[:5], ["10", "11", "12"]), scores)


def test_a_stage_whose_features_do_not_match_its_models_is_refused(tmp_path) -> None:
    users, items, times, titles, vectors = _stage_inputs()
    with_text = LTRStage.fit(users, items, times, titles, factors=4, epochs=2,
                             text_vectors=vectors)  # fmt: skip
    plain = LTRStage.fit(users, items, times, titles, factors=4, epochs=2)
    folder = with_text.save(tmp_path / "ltr")
    plain.models.save(folder)  # models without text beside a ranker trained with it
    with pytest.raises(RetrievalError, match="rebuild the index"):
        LTRStage.load(folder)


def test_the_text_baseline_ranks_and_has_its_own_cache_key() -> None:
    ts = rec_world()
    text = LambdaMARTTextBaseline(seed=7, encoder=HashingEncoder(dim=16))
    run = evaluate(text, ts, progress=False)
    assert run.bad_permutations == 0 and run.metrics["mrr"]["mean"] > 0.9
    assert text.ranker.feature_names[-3:] == TEXT_FEATURE_NAMES
    assert text.fit_key(ts) != LambdaMARTBaseline(seed=7).fit_key(ts)
    assert isinstance(make_baseline("lambdamart-text"), LambdaMARTTextBaseline)
