"""The LambdaMART stage in production: fitted without leakage on the index's log, between
fusion and the LM in `CandidateGenerator.candidates`, persisted in the index artifact, and
what /v1/recommend serves when the registered index has it."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient

from ranking.backends.fake import ScriptedBackend
from ranking.engine import Ranker
from retrieval.artifacts import ArtifactStore
from retrieval.errors import RetrievalError
from retrieval.generator import ARTIFACT_NAME, LTR_FOLDER, CandidateGenerator, GeneratorConfig
from retrieval.ltr_stage import LTRStage, split_last
from tests.fixtures.catalogue import seed_catalogue, seed_interactions
from tests.fixtures.chain import N_USERS, SMALL, chain_world


@pytest.fixture(scope="module")
def world():
    return chain_world()


@pytest.fixture(scope="module")
def gen(world):
    (users, items, stamps), _, titles = world
    config = GeneratorConfig(**SMALL, ltr=True, ltr_pool=100)
    return CandidateGenerator.build(users, items, stamps, titles, config=config)


@pytest.fixture(scope="module")
def plain(world):
    (users, items, stamps), _, titles = world
    return CandidateGenerator.build(users, items, stamps, titles, config=GeneratorConfig(**SMALL))


def test_the_stage_puts_the_next_item_first_far_more_often_than_fusion(gen, world) -> None:
    _, targets, _ = world
    ltr = np.mean([gen.candidates(u, 10)[0].item == t for u, t in targets.items()])
    fused = np.mean([gen.candidates(u, 10, ltr=False)[0].item == t for u, t in targets.items()])
    assert ltr >= 0.8, ltr  # trans_last1 names the next item
    assert ltr >= fused + 0.3, (ltr, fused)


def test_candidates_are_the_pools_top_in_ltr_order(gen, world, monkeypatch) -> None:
    monkeypatch.setattr(gen.config, "ltr_pool", 15)
    (users, items, _), _, _ = world
    for user in ("u0", "u7", "u42"):
        seen = {i for u, i in zip(users, items, strict=True) if u == user}
        pool = gen.candidates(user, 15, ltr=False)
        got = gen.candidates(user, 6)
        ids = [c.item for c in got]
        assert len(ids) == 6 == len(set(ids)) and not set(ids) & seen
        # the k best by LambdaMART of the fused top ltr_pool, scored by the stage
        scores = gen.ltr.rerank(user, gen.history(user, 20), [c.item for c in pool])
        best = np.argsort(-scores, kind="stable")[:6]
        assert ids == [pool[i].item for i in best]
        np.testing.assert_array_equal([c.score for c in got], scores[best])
        assert [c.ranks["ltr"] for c in got] == list(range(1, 7))
        assert [c.ranks["fused"] for c in got] == [int(i) + 1 for i in best]
        assert [c.scores["fused"] for c in got] == [pool[i].score for i in best]
        assert {"cf", "popular"} & set(got[0].ranks)  # the source ranks are kept
        # k = the pool: a permutation of the whole pool
        everything = gen.candidates(user, 15)
        assert sorted(c.item for c in everything) == sorted(c.item for c in pool)
        # k above the pool: the pool grows to k
        assert len({c.item for c in gen.candidates(user, 25)}) == 25


def test_save_load_round_trip_gives_identical_scores(gen, tmp_path) -> None:
    store = ArtifactStore(tmp_path)
    gen.save(store, "v1")
    assert (tmp_path / ARTIFACT_NAME / "v1" / LTR_FOLDER / "lambdamart.json").exists()
    loaded = CandidateGenerator.load(store, "v1")
    assert loaded.ltr is not None and loaded.config.ltr
    for user in ("u1", "u2", "u79"):
        a, b = gen.candidates(user, 10), loaded.candidates(user, 10)
        assert [c.item for c in a] == [c.item for c in b]
        assert [c.score for c in a] == [c.score for c in b]
        cands = [c.item for c in gen.candidates(user, 30, ltr=False)]
        hist = gen.history(user, 20)
        np.testing.assert_array_equal(
            gen.ltr.rerank(user, hist, cands), loaded.ltr.rerank(user, hist, cands)
        )
    stage = LTRStage.load(gen.ltr.save(tmp_path / "stage"))
    args = ("u3", ["i1", "i2"], ["i3", "i9", "i4"])
    np.testing.assert_array_equal(stage.rerank(*args), gen.ltr.rerank(*args))
    assert stage.info == gen.ltr.info and stage.info["queries"] == N_USERS


def test_an_index_without_the_stage_is_unchanged(gen, plain, tmp_path) -> None:
    assert plain.ltr is None
    for user in ("u0", "u5", "u60"):
        a, b = plain.candidates(user, 12), gen.candidates(user, 12, ltr=False)
        assert [(c.item, c.score, c.ranks) for c in a] == [(c.item, c.score, c.ranks) for c in b]
        assert not {"ltr", "fused"} & set(a[0].ranks)
    store = ArtifactStore(tmp_path)
    art = plain.save(store, "plain")
    assert not (art.path / LTR_FOLDER).exists()

    # an index written before the stage existed: config.json without the ltr fields
    def old_files(folder) -> None:
        for f in art.path.iterdir():
            if f.name != "manifest.json":
                shutil.copy(f, folder / f.name)
        config = json.loads((art.path / "config.json").read_text())
        for key in [k for k in config if k.startswith("ltr")]:
            del config[key]
        (folder / "config.json").write_text(json.dumps(config))

    store.save(ARTIFACT_NAME, "old", old_files)
    for version in ("plain", "old"):
        loaded = CandidateGenerator.load(store, version)
        assert loaded.ltr is None and not loaded.config.ltr
        for user in ("u0", "u5"):
            a, b = plain.candidates(user, 12), loaded.candidates(user, 12)
            assert [(c.item, c.score, c.ranks) for c in a] == [
                (c.item, c.score, c.ranks) for c in b
            ]


def test_cold_start_keeps_its_path(gen, plain) -> None:
    assert [c.item for c in gen.cold_start(8)] == [c.item for c in plain.cold_start(8)]


def test_training_never_sees_the_targets(world) -> None:
    (users, items, stamps), _, titles = world
    ts = LTRStage.training_set(users, items, stamps, titles, factors=4, epochs=1)
    log = list(zip(ts.users, ts.items, strict=True))
    # the log is in time order per user, each user's last row dropped from the inner log
    by_user: dict[str, list[str]] = {}
    for u, i in log:
        by_user.setdefault(u, []).append(i)
    for u, seq in by_user.items():
        rows = zip(users, items, stamps, strict=True)
        ordered = [i for _, i in sorted((s, i) for uu, i, s in rows if uu == u)]
        assert seq == ordered
    inner = [pair for pair, keep in zip(log, ts.inner, strict=True) if keep]
    expected = [(u, i) for u, seq in by_user.items() for i in seq[:-1]]
    assert sorted(inner) == sorted(expected) and len(inner) == len(log) - N_USERS
    inner_items = {}
    for u, i in inner:
        inner_items.setdefault(u, set()).add(i)
    assert len(ts.queries) == N_USERS
    for q in ts.queries:
        assert q.target == by_user[q.user][-1]  # the label: the held-out last item ...
        assert q.target not in inner_items[q.user]  # ... which the inner log lacks
        assert list(q.history) == by_user[q.user][-21:-1]
        assert q.labels().sum() == 1 and len(set(q.candidates)) == len(q.candidates) == 20
        assert not (set(q.candidates) - {q.target}) & set(by_user[q.user])  # unseen negatives
    # the feature models the queries are scored with were fitted on the inner log only
    assert ts.models.popularity.sum() == len(inner)
    assert ts.models.trans1.sum() == len(inner) - N_USERS  # one transition fewer per user
    for q in ts.queries:
        last = by_user[q.user][-2]
        # only other users' walks can have taught "target follows last"
        followers = sum(
            1 for s in by_user.values() for a, b in itertools.pairwise(s)
            if (a, b) == (last, q.target) and s is not by_user[q.user]
        )  # fmt: skip
        row, col = ts.models.items[last], ts.models.items[q.target]
        assert ts.models.trans1[row, col] <= followers


def test_split_last_keeps_users_without_history_out() -> None:
    keep, seqs = split_last(["a", "a", "b", "c", "c"], ["1", "2", "3", "4", "5"])
    assert keep.tolist() == [True, False, False, True, False]
    assert seqs == {"a": (["1"], "2"), "c": (["4"], "5")}
    keep, seqs = split_last(["a", "a", "b", "b"], ["1", "2", "3", "4"], only={"b"})
    assert keep.tolist() == [True, True, True, False] and seqs == {"b": (["3"], "4")}


TITLES = {"a": "A", "b": "B"}


@pytest.mark.parametrize(
    ("log", "titles", "options", "message"),
    [
        (([], [], []), TITLES, {}, "needs a non-empty interaction log"),
        ((["u"], ["a", "b"], [1.0]), TITLES, {}, "must be equally long"),
        ((["u", "v"], ["a", "b"], [1.0, 2.0]), TITLES, {}, "users with at least 2 interactions"),
        ((["u", "u"], ["a", "b"], [1.0, 2.0]), TITLES, {}, "found no negatives"),
        ((["u", "u"], ["a", "b"], [1.0, 2.0]), {**TITLES, "c": "C"}, {"negatives": 0},
         "negatives and history must be >= 1"),
    ],
)  # fmt: skip
def test_bad_training_input_is_refused_clearly(log, titles, options, message) -> None:
    with pytest.raises(RetrievalError, match=message):
        LTRStage.fit(*log, titles, factors=2, epochs=1, **options)


def test_bad_generator_options_and_artifacts_are_refused(world, gen, tmp_path) -> None:
    (users, items, stamps), _, titles = world
    with pytest.raises(RetrievalError, match="ltr_pool must be >= 1"):
        CandidateGenerator.build(users, items, stamps, titles,
                                 config=GeneratorConfig(**SMALL, ltr=True, ltr_pool=0))  # fmt: skip
    with pytest.raises(RetrievalError, match="at least 2 interactions"):
        CandidateGenerator.build(["u", "v"], ["i1", "i2"], [1.0, 2.0], titles,
                                 config=GeneratorConfig(**SMALL, ltr=True))  # fmt: skip
    store = ArtifactStore(tmp_path)
    art = gen.save(store, "v1")

    def without_stage(folder) -> None:
        for f in art.path.iterdir():
            if f.is_file() and f.name != "manifest.json":
                shutil.copy(f, folder / f.name)

    store.save(ARTIFACT_NAME, "broken", without_stage)
    with pytest.raises(RetrievalError, match="built with the LambdaMART stage but"):
        CandidateGenerator.load(store, "broken")
    with pytest.raises(RetrievalError, match="not a saved LambdaMART stage"):
        LTRStage.load(tmp_path / "nowhere")


# -- the service ---------------------------------------------------------------------------


@pytest.fixture
def engine(sqlite_engine):
    """SQLite only: these tests are about the index, not the database."""
    return sqlite_engine


def test_recommend_serves_the_ltr_order_when_the_index_has_the_stage(engine, tmp_path) -> None:
    from recsys.api import create_app
    from recsys.settings import Settings

    histories = seed_catalogue(engine, tmp_path, version="idx-ltr", ltr=True, ltr_pool=30)
    loaded = CandidateGenerator.load(ArtifactStore(tmp_path / "artifacts"), "idx-ltr")
    assert loaded.ltr is not None
    # an LM without an opinion (uniform steps) fused with the scores: the scores' order
    ranker = Ranker(ScriptedBackend(), fusion_alpha=50.0)
    settings = Settings(embeddings="hashing", batch_wait_ms=5.0, require_api_key=False,
                        reload_poll_s=0)  # fmt: skip
    with TestClient(create_app(ranker=ranker, settings=settings, engine=engine)) as client:
        for user in ("u3", "u10"):
            seen = set(histories[user])
            expected = [c for c in loaded.candidates(user, 6 + len(seen)) if c.item not in seen]
            pool = loaded.candidates(user, 30, ltr=False)
            scores = loaded.ltr.rerank(user, loaded.history(user, 20), [c.item for c in pool])
            best = [pool[i].item for i in np.argsort(-scores, kind="stable")[:6]]
            assert [c.item for c in expected[:6]] == best  # the stage's top 6 of the pool
            for body in (
                {"user_id": user, "k": 6, "deadline_ms": 0},  # the retrieval order
                {"user_id": user, "k": 6},
            ):  # through the LM, fused with the scores
                answer = client.post("/v1/recommend", json=body).json()
                assert answer["index_version"] == "idx-ltr" and answer["cold_start"] is False
                assert [i["id"] for i in answer["items"]] == best, body
                assert [i["score"] for i in answer["items"]] == pytest.approx(
                    [c.score for c in expected[:6]]
                )
            assert answer["fallback"] is False
        # a user the index does not know: the cold-start path, as before
        cold = client.post("/v1/recommend", json={"user_id": "nobody", "k": 4}).json()
        assert cold["cold_start"] is True and len(cold["items"]) == 4


def test_the_batch_builds_the_stage_unless_told_not_to(engine, sqlite_url, tmp_path,
                                                      monkeypatch, capsys) -> None:  # fmt: skip
    from recsys.batch import BatchConfig, build_index
    from recsys.db.registry import list_models
    from recsys.settings import get_settings
    from tests.fixtures.cli import run_cli

    seed_interactions(engine)
    assert BatchConfig().ltr is True  # the measured default (docs/retrieval.md)
    store = ArtifactStore(tmp_path / "artifacts")
    for ltr in (True, False):
        config = BatchConfig(embeddings="off", cf_factors=8, cf_epochs=2, ltr=ltr,
                             artifact_dir=store.root, progress=False)  # fmt: skip
        gen = CandidateGenerator.load(store, build_index(config, engine=engine))
        assert (gen.ltr is not None) is ltr and gen.config.ltr is ltr
    # the command line: --ltr by default, --no-ltr without the stage, --ltr-bag N bagged
    monkeypatch.setenv("RECSYS_VAR_DIR", str(tmp_path / "var"))
    get_settings.cache_clear()
    try:
        runs = (([], True, 1), (["--no-ltr"], False, None), (["--ltr-bag", "2"], True, 2))
        for flags, has_stage, bag in runs:
            args = ["batch", "--no-rerank", "--embeddings", "off", "--url", sqlite_url, *flags]
            code, _, err = run_cli(monkeypatch, capsys, args)
            assert code == 0, err
            newest = list_models("index", engine=engine)[0]  # newest first
            cli_store = ArtifactStore(tmp_path / "var" / "artifacts")
            stage = CandidateGenerator.load(cli_store, newest.version).ltr
            assert (stage is not None) is has_stage
            assert bag is None or stage.ranker.bag == bag
    finally:
        get_settings.cache_clear()


def test_the_stage_reads_the_title_embeddings_when_asked(world, tmp_path) -> None:
    from retrieval.embeddings import HashingEncoder, TextEmbedder
    from retrieval.features import TEXT_FEATURE_NAMES

    (users, items, stamps), _, titles = world
    config = GeneratorConfig(**SMALL, ltr=True, ltr_text=True)
    gen = CandidateGenerator.build(users, items, stamps, titles, config=config,
                                   embedder=TextEmbedder(HashingEncoder(dim=16)))  # fmt: skip
    assert gen.ltr is not None and gen.ltr.ranker.feature_names[-3:] == TEXT_FEATURE_NAMES
    order = gen.candidates("u3", 5)
    store = ArtifactStore(tmp_path)
    gen.save(store, "v1")
    loaded = CandidateGenerator.load(store, "v1", embedder=TextEmbedder(HashingEncoder(dim=16)))
    assert loaded.config.ltr_text is True and loaded.candidates("u3", 5) == order
    with pytest.raises(RetrievalError, match="ltr_text needs the title embeddings"):
        CandidateGenerator.build(users, items, stamps, titles, config=config)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ltr_text": True, "embeddings": "off"}, "--ltr-text adds title-embedding features"),
        ({"ltr_text": True, "ltr": False}, "it needs --ltr and --embeddings minilm|hashing"),
    ],
)
def test_batch_refuses_text_features_it_cannot_compute(options, message) -> None:
    from recsys.batch import BatchConfig
    from recsys.errors import UserError

    with pytest.raises(UserError, match=message):
        BatchConfig(**options)
