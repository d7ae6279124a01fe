"""The retrieval source contract (retrieval.sources.RetrievalSource), one suite over every
source, on a five-item catalogue whose answers are known by hand:

* CF: user 0 = (1, 0), user 1 = (0, 1); item factors and biases below, so score(u, i) =
  user . item + bias is a small table;
* text: item texts made of three words, embedded as word counts (normalised), so a query
  "space" is nearest to the item that is only "space", then to "space space romance";
* popularity: counts 5, 9, 9, 1, 0;
* next: the transition counts TRANSITIONS below (row a, column b: how often b followed a),
  read over the user's last 2 items.

Each source answers (item position, score) pairs, best first, at most `depth`, no item twice,
the known answer for its queries, and [] for a query it has nothing to say about. The
generator composes them in one fixed order and fuses what they answer.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from retrieval.cf import CFModel
from retrieval.embeddings import TextEmbedder
from retrieval.fusion import RRF_K
from retrieval.generator import CandidateGenerator, GeneratorConfig
from retrieval.index import VectorIndex
from retrieval.sources import (
    CFSource,
    PopularitySource,
    RetrievalSource,
    SourceQuery,
    TextSource,
    TransitionsSource,
    source_lists,
)

WORDS = ("space", "romance", "horror")
TEXTS = ("space", "romance", "space space romance", "horror", "horror romance")
USER_FACTORS = np.array([[1.0, 0.0], [0.0, 1.0]])
ITEM_FACTORS = np.array([[3.0, 0.0], [0.0, 3.0], [1.0, 1.0], [2.0, 0.0], [-1.0, -0.5]])
ITEM_BIASES = np.array([0.0, 0.0, 0.5, 0.25, 0.0])
COUNTS = np.array([5.0, 9.0, 9.0, 1.0, 0.0], dtype=np.float32)
TRANSITIONS = np.array(
    [
        [0, 2, 0, 1, 0],
        [1, 0, 3, 0, 0],
        [0, 0, 0, 2, 1],
        [4, 0, 1, 0, 0],
        [0, 1, 0, 0, 0],
    ],
    dtype=np.float64,
)


class WordCountEncoder:
    """Texts as counts of WORDS: cosine similarities anyone can work out."""

    name = "word-counts"
    dim = len(WORDS)

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.array([[t.split().count(w) for w in WORDS] for t in texts], dtype=np.float32)


def cf_source() -> CFSource:
    cf = CFModel.from_arrays(
        {
            "user_factors": USER_FACTORS,
            "item_factors": ITEM_FACTORS,
            "user_biases": np.zeros(2),
            "item_biases": ITEM_BIASES,
        }
    )
    return CFSource(cf, VectorIndex.build(cf.item_vectors()))


def text_source(profile_items: int = 10) -> TextSource:
    embedder = TextEmbedder(WordCountEncoder())
    vectors = embedder.embed(list(TEXTS))
    return TextSource(vectors, VectorIndex.build(vectors), embedder, profile_items)


def popularity_source() -> PopularitySource:
    return PopularitySource(COUNTS.copy())


def transitions_source() -> TransitionsSource:
    return TransitionsSource(sp.csr_matrix(TRANSITIONS), recent_items=2)


SOURCES = {
    "cf": cf_source,
    "text": text_source,
    "popular": popularity_source,
    "next": transitions_source,
}
# sources that score every item; `next` names only items that followed the user's last ones
FILLS = {"cf", "text", "popular"}
R5 = 1 / np.sqrt(5)
# (source, query, depth, the known answer)
KNOWN = [
    ("cf", SourceQuery(user=0), 5, [(0, 3.0), (3, 2.25), (2, 1.5), (1, 0.0), (4, -1.0)]),
    ("cf", SourceQuery(user=1), 3, [(1, 3.0), (2, 1.5), (3, 0.25)]),
    ("text", SourceQuery(text="space"), 2, [(0, 1.0), (2, 2 * R5)]),
    ("text", SourceQuery(text="horror"), 2, [(3, 1.0), (4, np.sqrt(0.5))]),
    # a profile: the normalised mean of the last item(s) only (profile_items = 10 here)
    ("text", SourceQuery(user=0, recent=[1]), 2, [(1, 1.0), (4, np.sqrt(0.5))]),
    ("popular", SourceQuery(), 3, [(1, 9.0), (2, 9.0), (0, 5.0)]),
    ("popular", SourceQuery(user=0, text="space"), 2, [(1, 9.0), (2, 9.0)]),
    # rows 0 + 3 = (4, 2, 1, 1, 0): item 4 never followed them; ties by position
    ("next", SourceQuery(user=0, recent=[0, 3]), 5, [(0, 4.0), (1, 2.0), (2, 1.0), (3, 1.0)]),
    # the last 2 of 1, 2, 4: rows 2 + 4 = (0, 1, 0, 2, 1)
    ("next", SourceQuery(user=1, recent=[1, 2, 4]), 5, [(3, 2.0), (1, 1.0), (4, 1.0)]),
]
# queries a source has nothing to say about
SILENT = [
    ("cf", SourceQuery(text="space")),
    ("text", SourceQuery(user=0)),
    ("next", SourceQuery(user=0)),  # no history
    ("next", SourceQuery(user=0, recent=[9])),  # an item newer than its counts
]


@pytest.fixture(params=sorted(SOURCES))
def source(request) -> RetrievalSource:
    return SOURCES[request.param]()


def assert_well_formed(scored, depth: int, n_items: int = len(TEXTS)) -> None:
    assert len(scored) <= depth
    positions = [p for p, _ in scored]
    assert len(set(positions)) == len(positions)  # no item twice
    assert all(isinstance(p, int) and 0 <= p < n_items for p in positions)
    assert all(isinstance(s, float) for _, s in scored)
    scores = [s for _, s in scored]
    assert scores == sorted(scores, reverse=True)  # best first


def test_a_source_implements_the_interface(source):
    assert isinstance(source, RetrievalSource)
    assert source.name in SOURCES


@pytest.mark.parametrize("depth", [1, 3, 5, 50])
def test_answers_are_scored_positions_best_first(source, depth):
    for query in (SourceQuery(user=0, recent=[0, 3]), SourceQuery(user=1, text="romance")):
        scored = source.retrieve(query, depth)
        assert_well_formed(scored, depth)
        if source.name in FILLS:
            assert len(scored) == min(depth, len(TEXTS))  # it can fill the catalogue


@pytest.mark.parametrize(("name", "query", "depth", "want"), KNOWN)
def test_known_answers(name, query, depth, want):
    got = SOURCES[name]().retrieve(query, depth)
    assert [p for p, _ in got] == [p for p, _ in want]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-6)


@pytest.mark.parametrize(("name", "query"), SILENT)
def test_a_source_with_nothing_to_say_answers_nothing(name, query):
    assert SOURCES[name]().retrieve(query, 5) == []


def test_a_longer_answer_extends_a_shorter_one(source):
    """The top 2 are the first 2 of the top 4: depth cuts a list, it does not re-rank."""
    query = SourceQuery(user=1, recent=[2, 4])
    assert source.retrieve(query, 4)[:2] == source.retrieve(query, 2)


def test_the_text_profile_averages_the_last_items_only():
    query = SourceQuery(user=0, recent=[0, 3])  # "space", then "horror"
    assert [p for p, _ in text_source(profile_items=1).retrieve(query, 1)] == [3]
    both = text_source(profile_items=10).retrieve(query, 2)  # equidistant from the two
    assert {p for p, _ in both} == {0, 3}
    assert both[0][1] == pytest.approx(np.sqrt(0.5))


def test_a_query_without_an_embedder_is_an_error():
    from retrieval.errors import RetrievalError

    source = text_source()
    source.embedder = None
    with pytest.raises(RetrievalError, match="needs a text embedder"):
        source.retrieve(SourceQuery(text="space"), 2)
    assert source.retrieve(SourceQuery(user=0, recent=[1]), 1)[0][0] == 1  # a profile needs none


def test_the_next_source_reads_only_the_last_items_and_grows_with_the_catalogue():
    query = SourceQuery(user=0, recent=[0, 3])
    assert TransitionsSource(sp.csr_matrix(TRANSITIONS), 1).retrieve(query, 5) == [
        (0, 4.0),
        (2, 1.0),
    ]  # row 3 only
    source = transitions_source()
    source.add(2)
    assert source.counts.shape == (7, 7)
    assert source.retrieve(query, 7) == transitions_source().retrieve(query, 7)
    assert source.retrieve(SourceQuery(user=0, recent=[5, 6]), 3) == []  # nothing follows them
    from retrieval.errors import RetrievalError

    with pytest.raises(RetrievalError, match="recent_items must be >= 1"):
        TransitionsSource(sp.csr_matrix(TRANSITIONS), 0)


def test_source_lists_keep_the_order_and_leave_out_the_silent():
    sources = [cf_source(), text_source(), popularity_source()]
    lists = source_lists(sources, SourceQuery(user=0), 2)
    assert list(lists) == ["cf", "popular"]  # no history: the text profile is silent
    assert lists["cf"][0][0] == 0 and lists["popular"][0][0] == 1


def test_the_generator_fuses_its_sources_known_answer():
    """Weighted RRF over the sources above, worked out by hand for user 0 (recent: item 1)."""
    gen = CandidateGenerator(
        user_ids=["u0", "u1"],
        item_ids=[f"i{n}" for n in range(5)],
        seen=sp.csr_matrix(np.array([[0, 1, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=np.float32)),
        recent=[[1], []],
        popularity=COUNTS.copy(),
        cf=cf_source().cf,
        cf_index=cf_source().index,
        text_vectors=text_source().vectors,
        text_index=text_source().index,
        config=GeneratorConfig(),
        embedder=text_source().embedder,
    )
    assert [s.name for s in gen.sources] == ["cf", "text", "popular"]
    # ranks over the 5 items (depth 5: k + 1 seen), item 1 (seen) dropped:
    #   cf 0,3,2,1,4   text (profile = item 1) 1,4,2,...   popular 1,2,0,3,4
    ranks = {
        "cf": {0: 1, 3: 2, 2: 3, 4: 5},
        "text": {4: 2},
        "popular": {2: 2, 0: 3, 3: 4, 4: 5},
    }
    text = gen.source_lists("u0", 5)["text"]
    ranks["text"] |= {p: r for r, (p, _) in enumerate(text, 1) if p not in (1, 4)}
    weights = GeneratorConfig().weights
    want = {
        i: sum(weights[s] / (RRF_K + r[i]) for s, r in ranks.items() if i in r)
        for i in (0, 2, 3, 4)
    }
    got = gen.candidates("u0", k=4)
    assert [c.item for c in got] == [f"i{i}" for i in sorted(want, key=lambda i: -want[i])]
    for c in got:
        assert c.score == pytest.approx(want[int(c.item[1:])])
