"""The `next` retrieval source inside the index (retrieval.generator): counted from the log
in time order, fused when `weights["next"] > 0`, persisted with the index, refused clearly
when its file is missing; the LambdaMART stage trained for the pool it feeds
(`ltr_hard_next`); on by default in `recsys batch`. The source itself:
tests/contracts/test_source_contract.py."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from retrieval.artifacts import ArtifactStore
from retrieval.errors import RetrievalError
from retrieval.generator import (
    ARTIFACT_NAME,
    DEFAULT_WEIGHTS,
    NEXT_FILE,
    CandidateGenerator,
    GeneratorConfig,
)
from tests.fixtures.chain import SMALL, chain_world

WITH_NEXT = {**DEFAULT_WEIGHTS, "next": 1.0}


def build(world, **config) -> CandidateGenerator:
    (users, items, stamps), _, titles = world
    return CandidateGenerator.build(
        users, items, stamps, titles, config=GeneratorConfig(**SMALL, **config)
    )


@pytest.fixture(scope="module")
def world():
    return chain_world()


@pytest.fixture(scope="module")
def with_next(world) -> CandidateGenerator:
    return build(world, weights=dict(WITH_NEXT), next_recent=2, next_window=1)


@pytest.fixture(scope="module")
def without(world) -> CandidateGenerator:
    return build(world, weights={k: v for k, v in WITH_NEXT.items() if k != "next"})


def test_the_next_item_comes_first_far_more_often_with_the_source(world, with_next, without):
    _, targets, _ = world
    hit = np.mean([with_next.candidates(u, 5)[0].item == t for u, t in targets.items()])
    base = np.mean([without.candidates(u, 5)[0].item == t for u, t in targets.items()])
    assert hit >= 0.8, hit  # window 1: the last item's successor is the source's first
    assert hit >= base + 0.3, (hit, base)
    assert [s.name for s in with_next.sources][-1] == "next"
    assert without.next_source is None


def test_counts_follow_the_timestamps_not_the_log_order():
    # one user, rows shuffled: a (t=1), b (t=2), c (t=3); window 1 and 2
    users, items, stamps = ["u", "u", "u"], ["c", "a", "b"], [3.0, 1.0, 2.0]
    titles = {"a": "A", "b": "B", "c": "C"}
    for window, want in ((1, {("a", "b"), ("b", "c")}), (2, {("a", "b"), ("b", "c"), ("a", "c")})):
        gen = CandidateGenerator.build(
            users, items, stamps, titles,
            config=GeneratorConfig(cf_factors=2, cf_epochs=1, weights=dict(WITH_NEXT),
                                   next_window=window),
        )  # fmt: skip
        assert gen.next_source is not None
        rows, cols = gen.next_source.counts.nonzero()
        got = {(gen.item_ids[r], gen.item_ids[c]) for r, c in zip(rows, cols, strict=True)}
        assert got == want


def test_the_index_round_trip_keeps_the_source(with_next, without, tmp_path):
    store = ArtifactStore(tmp_path)
    art = with_next.save(store, "v1")
    assert (art.path / NEXT_FILE).exists()
    loaded = CandidateGenerator.load(store, "v1")
    assert loaded.next_source is not None and loaded.next_source.recent_items == 2
    for user in ("u0", "u7", "u42"):
        assert [c.item for c in loaded.candidates(user, 10)] == [
            c.item for c in with_next.candidates(user, 10)
        ]
    plain = without.save(store, "v2")  # an index without the source has no file and loads
    assert not (plain.path / NEXT_FILE).exists()
    assert CandidateGenerator.load(store, "v2").next_source is None


def test_a_new_item_joins_the_source_without_counts(world):
    from retrieval.embeddings import HashingEncoder, TextEmbedder

    (users, items, stamps), _, titles = world
    gen = CandidateGenerator.build(
        users, items, stamps, titles, embedder=TextEmbedder(HashingEncoder(16)),
        config=GeneratorConfig(**SMALL, weights=dict(WITH_NEXT)),
    )  # fmt: skip
    n = len(gen.item_ids)
    gen.add_item("fresh", "A brand new item")
    assert gen.next_source.counts.shape == (n + 1, n + 1)
    assert gen.next_source.counts[n].nnz == 0 and gen.next_source.counts[:, n].nnz == 0
    from retrieval.sources import SourceQuery

    assert gen.next_source.retrieve(SourceQuery(recent=[n]), 5) == []  # nothing followed it


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"next_recent": 0}, "next_recent and next_window must be >= 1"),
        ({"next_window": 0}, "next_recent and next_window must be >= 1"),
    ],
)
def test_bad_options_are_refused(world, config, message):
    with pytest.raises(RetrievalError, match=message):
        build(world, weights=dict(WITH_NEXT), **config)


def test_an_index_missing_its_counts_is_refused(with_next, tmp_path):
    store = ArtifactStore(tmp_path)
    art = with_next.save(store, "v1")

    def without_counts(folder) -> None:
        for f in art.path.iterdir():
            if f.is_file() and f.name not in ("manifest.json", NEXT_FILE):
                shutil.copy(f, folder / f.name)

    store.save(ARTIFACT_NAME, "broken", without_counts)
    with pytest.raises(RetrievalError, match=r"fuses the `next` source but its next\.npz"):
        CandidateGenerator.load(store, "broken")


def test_the_batch_builds_the_source_unless_told_not_to(sqlite_engine, sqlite_url, tmp_path,
                                                    monkeypatch, capsys):  # fmt: skip
    from recsys.batch import BatchConfig
    from recsys.db.registry import list_models
    from recsys.settings import get_settings
    from tests.fixtures.catalogue import seed_interactions
    from tests.fixtures.cli import run_cli

    seed_interactions(sqlite_engine)
    assert BatchConfig().next_source is True  # on by default: the plan's rule (retrieval.md)
    monkeypatch.setenv("RECSYS_VAR_DIR", str(tmp_path / "var"))
    get_settings.cache_clear()
    try:
        for flags, on in (([], True), (["--no-next-source"], False)):
            args = ["batch", "--no-rerank", "--embeddings", "off", "--url", sqlite_url,
                    *flags]  # fmt: skip
            code, _, err = run_cli(monkeypatch, capsys, args)
            assert code == 0, err
            newest = list_models("index", engine=sqlite_engine)[0]  # newest first
            store = ArtifactStore(tmp_path / "var" / "artifacts")
            gen = CandidateGenerator.load(store, newest.version)
            assert (gen.next_source is not None) is on
            assert ("next" in gen.config.weights) is on
            assert gen.ltr is not None and gen.ltr.info["hard_next"] is on  # trained for it
    finally:
        get_settings.cache_clear()


# -- the LambdaMART stage trained for the pool the source feeds (ltr_hard_next) -------------


def test_next_ranked_is_the_sources_order_on_the_inner_log():
    from retrieval.features import FeatureModels
    from retrieval.ltr_stage import next_ranked

    # one walk a b c d e f: within 10 steps b follows a, c follows a and b, ...
    items = list("abcdef")
    models = FeatureModels.fit(["u"] * 6, items, items, factors=2, epochs=1)
    pool = np.array(list("cdef"))
    # last 2 items a, b: c follows both (2), d, e, f follow both (2 each): ties keep pool order
    assert next_ranked(models, ["a", "b"], pool, 3).tolist() == ["c", "d", "e"]
    assert next_ranked(models, ["e"], pool, 5).tolist() == ["f"]  # only what followed
    assert next_ranked(models, ["f"], pool, 5).tolist() == []  # nothing followed the last one
    assert next_ranked(models, [], pool, 5).tolist() == []


def test_the_stage_draws_hard_negatives_from_the_next_top_when_asked(world):
    from retrieval.ltr_stage import LTRStage

    (users, items, stamps), _, titles = world

    def successors_drawn(hard_next: bool) -> float:
        # a hard pool of 5 (of 49 unseen): the CF top-5, or it and the next top-5
        ts = LTRStage.training_set(users, items, stamps, titles, factors=8, epochs=2,
                                   hard_depth=5, hard_next=hard_next)  # fmt: skip
        share = []
        for q in ts.queries:
            last = int(q.history[-1][1:])
            near = {f"i{(last + d) % 60}" for d in range(1, 11)}  # what the walk reaches next
            negatives = [c for c in q.candidates if c != q.target]
            share.append(np.mean([c in near for c in negatives]))
        return float(np.mean(share))

    assert successors_drawn(True) >= successors_drawn(False) + 0.1
    stage = LTRStage.fit(users, items, stamps, titles, factors=8, epochs=2, hard_next=True)
    assert stage.info["hard_next"] is True


@pytest.mark.parametrize(
    ("weights", "hard_next", "want"),
    [
        (DEFAULT_WEIGHTS, None, False),  # the library default: no source, today's stage
        (WITH_NEXT, None, True),  # an index that fuses the source trains its stage for it
        (WITH_NEXT, False, False),
        (DEFAULT_WEIGHTS, True, True),
    ],
)
def test_the_stage_is_trained_for_the_pool_the_index_fuses(weights, hard_next, want):
    from retrieval.generator import stage_hard_next

    config = GeneratorConfig(weights=dict(weights), ltr=True, ltr_hard_next=hard_next)
    assert stage_hard_next(config) is want
