"""Known-answer tests for reciprocal rank fusion, score fusion and seen-item filtering."""

from __future__ import annotations

import pytest

from retrieval.errors import RetrievalError
from retrieval.fusion import fuse


def test_rrf_known_answer():
    sources = {
        "cf": [("a", 0.9), ("b", 0.8), ("c", 0.1)],
        "text": [("c", 0.99), ("a", 0.5), ("d", 0.4)],
    }
    out = fuse(sources, 4, rrf_k=60)
    # a: 1/61 + 1/62; c: 1/63 + 1/61; b: 1/62; d: 1/63
    assert [c.item for c in out] == ["a", "c", "b", "d"]
    assert out[0].score == pytest.approx(1 / 61 + 1 / 62)
    assert out[1].score == pytest.approx(1 / 63 + 1 / 61)
    # per-source ranks and raw scores are kept
    assert out[0].ranks == {"cf": 1, "text": 2} and out[0].scores == {"cf": 0.9, "text": 0.5}
    assert out[3].ranks == {"text": 3} and out[3].scores == {"text": 0.4}


def test_weights_change_the_winner():
    sources = {"cf": [("a", 1.0), ("b", 0.0)], "text": [("b", 1.0), ("a", 0.0)]}
    assert fuse(sources, 1, weights={"cf": 1.0, "text": 2.0})[0].item == "b"
    assert fuse(sources, 1, weights={"cf": 2.0, "text": 1.0})[0].item == "a"
    # weight 0 silences a source but keeps its signals
    out = fuse(sources, 2, weights={"text": 0.0})
    assert [c.item for c in out] == ["a", "b"] and out[0].ranks["text"] == 2


def test_seen_items_are_excluded_and_ranks_stay_source_ranks():
    sources = {"cf": [("seen1", 5.0), ("x", 4.0), ("seen2", 3.0), ("y", 2.0)]}
    out = fuse(sources, 10, exclude={"seen1", "seen2"})
    assert [c.item for c in out] == ["x", "y"]
    assert [c.ranks["cf"] for c in out] == [2, 4]


def test_score_fusion_min_max_known_answer():
    sources = {"cf": [("a", 10.0), ("b", 5.0), ("c", 0.0)], "pop": [("c", 100.0), ("b", 0.0)]}
    out = fuse(sources, 3, method="score")
    # a: 1.0; b: 0.5 + 0.0; c: 0.0 + 1.0 -> tie a/c broken by best single rank (both 1), then id
    assert [(c.item, round(c.score, 6)) for c in out] == [("a", 1.0), ("c", 1.0), ("b", 0.5)]


def test_ties_are_deterministic_and_k_truncates():
    sources = {"s1": [("b", 1.0)], "s2": [("a", 1.0)]}
    assert [c.item for c in fuse(sources, 2)] == ["a", "b"]
    assert len(fuse(sources, 1)) == 1


def test_duplicate_item_in_one_source_counts_once():
    out = fuse({"cf": [("a", 1.0), ("a", 0.5), ("b", 0.1)]}, 3)
    assert out[0].ranks == {"cf": 1}
    assert out[0].score == pytest.approx(1 / 61)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "k must be >= 1"),
        ({"k": 3, "method": "borda"}, "unknown fusion method"),
        ({"k": 3, "weights": {"cf": -1.0}}, "weights must be >= 0"),
    ],
)
def test_fusion_bad_input(kwargs, message):
    with pytest.raises(RetrievalError, match=message):
        fuse({"cf": [("a", 1.0)]}, **kwargs)
