"""Bagged LambdaMART (retrieval.ltr `bag=N`): a bag of one is the plain fit, a bag of N
scores the mean of the N seeds' fits, it round-trips, and every layer refuses bad sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recsys.errors import UserError
from recsys.eval.harness import evaluate, make_ranker
from recsys.eval.ltr import LambdaMARTBaseline, LambdaMARTTextBaseline
from recsys.eval.rankers import make_baseline
from retrieval.errors import RetrievalError
from retrieval.generator import CandidateGenerator, GeneratorConfig
from retrieval.ltr import MAX_BAG, LambdaMART
from retrieval.ltr_stage import LTRStage
from tests.fixtures.chain import SMALL, chain_world
from tests.test_ltr import rec_world, synthetic_groups

NAMES = ["signal", "noise"]
FAST = {"n_estimators": 20}


@pytest.fixture(scope="module")
def groups():
    return synthetic_groups(150)


def test_a_bag_of_one_is_the_plain_fit(groups) -> None:
    import lightgbm

    x = np.vstack([x for x, _ in groups])
    plain = lightgbm.LGBMRanker(**_params(seed=3))
    plain.fit(x, np.concatenate([y for _, y in groups]), group=[len(y) for _, y in groups])
    bagged = LambdaMART.fit(groups, NAMES, seed=3, bag=1, **FAST)
    assert bagged.bag == 1 and bagged.params["bag"] == 1
    np.testing.assert_array_equal(bagged.scores(x), plain.predict(x, num_threads=1))


def _params(seed: int) -> dict:
    from retrieval.ltr import DEFAULT_PARAMS

    return {**DEFAULT_PARAMS, **FAST, "random_state": seed, "n_jobs": 1}


def test_a_bag_scores_the_mean_of_its_seeds_fits(groups) -> None:
    bag = LambdaMART.fit(groups, NAMES, seed=5, bag=3, **FAST)
    singles = [LambdaMART.fit(groups, NAMES, seed=s, **FAST) for s in (5, 6, 7)]
    test = np.vstack([x for x, _ in synthetic_groups(20, seed=1)])
    mean = np.mean([m.scores(test) for m in singles], axis=0)
    np.testing.assert_allclose(bag.scores(test), mean, rtol=1e-12, atol=1e-12)
    # the seeds' fits differ (row and column subsampling), so the bag is not one of them
    assert not np.allclose(singles[0].scores(test), singles[1].scores(test))
    assert sum(bag.importance().values()) == pytest.approx(1.0, abs=1e-3)


def test_a_bag_round_trips_and_old_single_files_load(groups, tmp_path) -> None:
    test = np.vstack([x for x, _ in synthetic_groups(5, seed=2)])
    bag = LambdaMART.fit(groups, NAMES, bag=2, **FAST)
    loaded = LambdaMART.load(bag.save(tmp_path / "bag.json"))
    assert loaded.bag == 2
    np.testing.assert_array_equal(loaded.scores(test), bag.scores(test))
    # a file written before bags existed: one booster under "model"
    one = LambdaMART.fit(groups, NAMES, **FAST)
    doc = {"feature_names": NAMES, "params": one.params,
           "model": one.boosters[0].model_to_string()}  # fmt: skip
    (tmp_path / "old.json").write_text(json.dumps(doc))
    np.testing.assert_array_equal(LambdaMART.load(tmp_path / "old.json").scores(test),
                                  one.scores(test))  # fmt: skip
    (tmp_path / "empty.json").write_text(json.dumps({**doc, "models": []}))
    with pytest.raises(RetrievalError, match="not a saved LambdaMART model"):
        LambdaMART.load(tmp_path / "empty.json")


@pytest.mark.parametrize("bag", [0, -1, MAX_BAG + 1, 2.0, True, "5"])
def test_lambdamart_refuses_a_bad_bag(groups, bag) -> None:
    with pytest.raises(
        RetrievalError, match=f"bag must be a whole number of boosters from 1 to {MAX_BAG}"
    ):
        LambdaMART.fit(groups, NAMES, bag=bag)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: make_baseline("lambdamart", bag=0), UserError, "--lgb-bag 0: give a whole number"),
        (lambda: make_baseline("lambdamart", bag=MAX_BAG + 1), UserError, "from 1 to 20"),
        (lambda: make_baseline("transitions", bag=3), UserError,
         "it applies to lambdamart and lambdamart-text"),
        (lambda: make_ranker("incremental", fusion_signal="transitions", lgb_bag=3), UserError,
         "it needs --fusion-signal lambdamart or lambdamart-text"),
        (lambda: make_ranker("lambdamart-lm", lgb_bag=3), UserError,
         "it needs --fusion-signal lambdamart"),
    ],
)  # fmt: skip
def test_the_eval_layer_refuses_bags_it_cannot_use(call, error, message) -> None:
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ltr_bag": 0}, "--ltr-bag 0: give a whole number of LightGBM fits"),
        ({"ltr_bag": MAX_BAG + 1}, "from 1 to 20"),
        ({"ltr_bag": 3, "ltr": False}, "--ltr-bag averages the LambdaMART stage's fits"),
    ],
)
def test_batch_refuses_a_bad_bag(options, message) -> None:
    from recsys.batch import BatchConfig

    with pytest.raises(UserError, match=message):
        BatchConfig(**options)


def test_the_baseline_bag_is_in_its_cache_key_and_its_model_name() -> None:
    ts = rec_world()
    plain, bag = LambdaMARTBaseline(seed=7), LambdaMARTBaseline(seed=7, bag=3)
    assert plain.fit_key(ts) != bag.fit_key(ts)
    assert bag.fit_key(ts) != LambdaMARTBaseline(seed=7, bag=4).fit_key(ts)
    assert plain.model == "lightgbm-lambdamart" and bag.model == "lightgbm-lambdamart-bag3"
    assert LambdaMARTTextBaseline(bag=2).model == "lightgbm-lambdamart+minilm-bag2"
    run = evaluate(bag, ts, progress=False)
    assert bag.ranker.bag == 3 and run.bad_permutations == 0
    assert run.metrics["mrr"]["mean"] > 0.9  # the predictable world, as the single fit


def test_the_production_stage_bags_and_keeps_its_bag(tmp_path) -> None:
    from retrieval.artifacts import ArtifactStore

    (users, items, stamps), _, titles = chain_world()
    config = GeneratorConfig(**SMALL, ltr=True, ltr_bag=2)
    gen = CandidateGenerator.build(users, items, stamps, titles, config=config)
    assert gen.ltr is not None and gen.ltr.ranker.bag == 2 and gen.ltr.info["bag"] == 2
    order = gen.candidates("u3", 5)
    store = ArtifactStore(tmp_path)
    gen.save(store, "v1")
    loaded = CandidateGenerator.load(store, "v1")
    assert loaded.config.ltr_bag == 2 and loaded.ltr.ranker.bag == 2
    assert loaded.candidates("u3", 5) == order
    with pytest.raises(RetrievalError, match="ltr_bag must be from 1 to 20"):
        CandidateGenerator.build(users, items, stamps, titles,
                                 config=GeneratorConfig(**SMALL, ltr=True, ltr_bag=0))  # fmt: skip
    stage = LTRStage.fit(users, items, stamps, titles, factors=2, epochs=1, bag=3)
    assert stage.ranker.bag == 3


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("19:half:50", {"ltr_hard": None, "ltr_text": False, "ltr_bag": 1}),
        ("19:9:30:bag5", {"ltr_hard": 9, "ltr_hard_depth": 30, "ltr_bag": 5}),
        ("19:half:50:text:bag3", {"ltr_text": True, "ltr_bag": 3}),
    ],
)
def test_the_stage_benchmark_reads_bag_variants(text, fields) -> None:
    from benchmarks.bench_ltr_stage import variant

    parsed = variant(text)
    assert {k: parsed[k] for k in fields} == fields
    GeneratorConfig(ltr=True, **parsed)  # every parsed field is a config field


@pytest.mark.parametrize("text", ["19:half:50:texts", "19:half:50:bag2:bag3"])
def test_the_stage_benchmark_refuses_unknown_variants(text) -> None:
    from benchmarks.bench_ltr_stage import variant

    with pytest.raises(SystemExit, match="only :text and :bagN"):
        variant(text)
