"""CandidateGenerator: fused candidates, seen-item filtering, cold start, new items, artifacts."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval import coldstart
from retrieval.artifacts import ArtifactStore
from retrieval.coldstart import popular_items
from retrieval.embeddings import HashingEncoder, TextEmbedder
from retrieval.errors import RetrievalError
from retrieval.fusion import fuse
from retrieval.generator import CandidateGenerator, GeneratorConfig

GENRES = ["space", "romance", "horror", "western"]


def synthetic(n_users=60, per_genre=10, per_user=8, seed=0):
    """Users in genre g watch items of genre g; item texts name their genre."""
    rng = np.random.default_rng(seed)
    catalogue = {f"{g}-{j}": f"a {g} film number {j}" for g in GENRES for j in range(per_genre)}
    users, items, ts = [], [], []
    for u in range(n_users):
        g = GENRES[u % len(GENRES)]
        for t, j in enumerate(rng.choice(per_genre, per_user, replace=False)):
            users.append(f"u{u}")
            items.append(f"{g}-{j}")
            ts.append(t)
    return users, items, ts, catalogue


@pytest.fixture(scope="module")
def generator():
    users, items, ts, catalogue = synthetic()
    config = GeneratorConfig(cf_factors=8, cf_epochs=15)
    return CandidateGenerator.build(
        users, items, ts, catalogue, embedder=TextEmbedder(HashingEncoder(64)), config=config
    )


def test_candidates_exclude_seen_and_follow_the_users_genre(generator):
    seen = set(generator.history("u0", limit=100))
    cands = generator.candidates("u0", k=2)
    ids = [c.item for c in cands]
    assert len(ids) == 2 and not set(ids) & seen
    # u0 watched 8 of 10 space films: the 2 unseen ones are the best candidates
    assert all(i.startswith("space-") for i in ids)
    assert {"cf", "text"} <= set(cands[0].ranks)
    assert cands[0].score >= cands[1].score


def test_candidates_without_exclusion_may_return_seen(generator):
    ids = [c.item for c in generator.candidates("u0", k=5, exclude_seen=False)]
    assert set(ids) & set(generator.history("u0", limit=100))


def test_history_is_time_ordered():
    users = ["a", "a", "a"]
    gen = CandidateGenerator.build(
        users,
        ["x", "y", "z"],
        [3, 1, 2],
        {"x": "x", "y": "y", "z": "z"},
        config=GeneratorConfig(cf_factors=2, cf_epochs=1),
    )
    assert gen.history("a") == ["y", "z", "x"]
    assert "text" not in gen.source_lists("a", 3)  # no embedder: the text source is off


def test_popular_items_known_answer():
    pop = np.array([5.0, 9.0, 9.0, 1.0])
    assert popular_items(pop, 3) == [(1, 9.0), (2, 9.0), (0, 5.0)]
    assert popular_items(pop, 2, exclude={1}) == [(2, 9.0), (0, 5.0)]


def test_cold_start_popular_and_query(generator):
    popular = [c.item for c in generator.cold_start(k=3)]
    counts = dict(zip(generator.item_ids, generator.popularity, strict=True))
    assert [counts[i] for i in popular] == sorted(counts.values(), reverse=True)[:3]
    near = [c.item for c in generator.cold_start(k=3, query="horror")]
    assert all(i.startswith("horror-") for i in near)
    assert generator.cold_start(k=3, exclude=[popular[0]])[0].item == popular[1]


def test_new_item_enters_through_its_text(tmp_path):
    users, items, ts, catalogue = synthetic()
    gen = CandidateGenerator.build(
        users,
        items,
        ts,
        catalogue,
        embedder=TextEmbedder(HashingEncoder(64)),
        config=GeneratorConfig(cf_factors=4, cf_epochs=2),
    )
    gen.add_item("new-1", "zombie apocalypse musical")
    assert gen.cold_start(k=1, query="zombie musical")[0].item == "new-1"
    with pytest.raises(RetrievalError, match="already exists"):
        gen.add_item("new-1", "again")
    # the new item survives a save/load round trip
    store = ArtifactStore(tmp_path)
    gen.save(store, "v1")
    loaded = CandidateGenerator.load(store, "v1", embedder=gen.embedder)
    assert loaded.cold_start(k=1, query="zombie musical")[0].item == "new-1"


def test_artifact_round_trip_gives_the_same_candidates(generator, tmp_path):
    store = ArtifactStore(tmp_path)
    generator.save(store, "v1", meta={"note": "test"})
    loaded = CandidateGenerator.load(store, "v1", embedder=generator.embedder)
    for user in ["u0", "u1", "u7"]:
        a = generator.candidates(user, k=5)
        b = loaded.candidates(user, k=5)
        assert [(c.item, c.ranks) for c in a] == [(c.item, c.ranks) for c in b]
    assert store.load("retrieval", "v1").meta["users"] == 60


BAD = [
    (lambda g, s: g.candidates("nobody"), r"unknown user 'nobody'.*cold_start"),
    (lambda g, s: CandidateGenerator.load(s, "v404"), r"version 'v404' does not exist"),
    (lambda g, s: g.candidates("u0", k=0), "k must be >= 1"),
]


@pytest.mark.parametrize(("call", "message"), BAD)
def test_generator_bad_input(generator, tmp_path, call, message):
    with pytest.raises(RetrievalError, match=message):
        call(generator, ArtifactStore(tmp_path))


def test_text_features_needed_for_query():
    users, items, ts, catalogue = synthetic(n_users=8)
    gen = CandidateGenerator.build(
        users, items, ts, catalogue, config=GeneratorConfig(cf_factors=2, cf_epochs=1)
    )
    with pytest.raises(RetrievalError, match="needs a text embedder"):
        gen.cold_start(k=3, query="space")


def old_source_lists(gen: CandidateGenerator, user: str, depth: int) -> dict:
    """The generator's per-source branches as they were before retrieval.sources (the
    expectation the composed sources must reproduce)."""
    u = gen.user_pos[user]
    cf = gen.cf_source
    out = {"cf": coldstart.nearest_items(cf.index, cf.cf.user_vector(u), depth)}
    recent = gen.recent[u][-gen.config.profile_items :]
    profile = coldstart.profile_vector(gen.text_vectors, recent)
    if profile is not None:
        out["text"] = coldstart.nearest_items(gen.text_source.index, profile, depth)
    out["popular"] = coldstart.popular_items(gen.popularity, depth)
    return out


def old_cold_start(gen: CandidateGenerator, k: int, query: str | None, exclude=()) -> list:
    skip = {gen.item_pos[i] for i in exclude if i in gen.item_pos}
    depth = min(len(gen.item_ids), k + len(skip))
    sources, weights = {}, {"popular": 1.0}
    if query is not None:
        text = gen.text_source
        sources["text"] = coldstart.items_near_text(text.embedder, text.index, query, depth)
        weights = {"text": 1.0, "popular": 0.2}
    sources["popular"] = coldstart.popular_items(gen.popularity, depth)
    return fuse(sources, k, weights=weights, exclude=skip)


def as_rows(cands) -> list[tuple]:
    return [(str(c.item), c.score, c.ranks, c.scores) for c in cands]


@pytest.mark.parametrize("method", ["rrf", "score"])
def test_composed_sources_return_what_the_branches_did(method):
    users, items, ts, catalogue = synthetic(n_users=24)
    config = GeneratorConfig(cf_factors=8, cf_epochs=5, fusion=method)
    gen = CandidateGenerator.build(
        users, items, ts, catalogue, embedder=TextEmbedder(HashingEncoder(64)), config=config
    )
    for user in gen.user_ids:
        for k in (1, 5, 20):
            seen = set(gen.seen[gen.user_pos[user]].indices.tolist())
            depth = min(len(gen.item_ids), k + len(seen))
            lists = old_source_lists(gen, user, depth)
            assert gen.source_lists(user, depth) == lists
            want = fuse(lists, k, weights=config.weights, method=method, exclude=seen)
            for c in want:
                c.item = gen.item_ids[c.item]
            assert as_rows(gen.candidates(user, k=k)) == as_rows(want)
    for query in (None, "horror", "space film"):
        want = old_cold_start(gen, 7, query, exclude=["space-1"])
        for c in want:
            c.item = gen.item_ids[c.item]
        assert as_rows(gen.cold_start(k=7, query=query, exclude=["space-1"])) == as_rows(want)
