"""The LambdaMART stage: features with known values, the ranker, the leakage-free protocol."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from ranking.types import Candidate
from recsys.eval.harness import evaluate
from recsys.eval.ltr import LambdaMARTBaseline, split_last, training_groups
from recsys.eval.tasks import Instance, TaskSet
from retrieval.errors import RetrievalError
from retrieval.features import FEATURE_NAMES, FeatureModels, ItemMeta, title_platform, title_year
from retrieval.ltr import LambdaMART


@pytest.mark.parametrize(
    ("title", "year", "platform"),
    [
        ("Heat (1995)", 1995.0, None),
        ("Fire Emblem: The Sacred Stones", math.nan, None),
        ("GBA 6-Pak Care Case - Game Boy Advance", math.nan, "game boy advance"),
        ("Halo 3 - Xbox 360", math.nan, "xbox 360"),
        ("FIFA 15 - PS4", math.nan, "playstation 4"),
        ("SimCity - PC", math.nan, "pc"),
    ],
)
def test_title_year_and_platform(title: str, year: float, platform: str | None) -> None:
    got = title_year(title)
    assert (math.isnan(got) and math.isnan(year)) or got == year
    assert title_platform(title) == platform


def small_models() -> FeatureModels:
    # u1: a b c, u2: a b d, u3: a c: b follows a twice (adjacent), c once adjacent (u3) and
    # once two steps later (u1), d once two steps later (u2)
    users = ["u1"] * 3 + ["u2"] * 3 + ["u3"] * 2
    items = ["a", "b", "c", "a", "b", "d", "a", "c"]
    meta = {
        "a": ItemMeta.from_title("Alpha Wars (1990)", "Action|Sci-Fi"),
        "b": ItemMeta.from_title("Beta Wars (1992)", "Action"),
        "c": ItemMeta.from_title("Gamma Love (1999)", "Romance"),
        "d": ItemMeta.from_title("Delta (1950)", ""),
        "e": ItemMeta.from_title("Epsilon", None),
    }
    return FeatureModels.fit(users, items, ["a", "b", "c", "d", "e"], meta, factors=4, epochs=2)


def test_features_known_values() -> None:
    fm = small_models()
    x = fm.features("u3", ["a"], ["b", "c", "d", "e"])
    col = {n: x[:, i] for i, n in enumerate(FEATURE_NAMES)}
    np.testing.assert_array_equal(col["transitions"], [2, 2, 1, 0])  # window 10 from a
    np.testing.assert_array_equal(col["trans_last1"], [2, 1, 0, 0])  # adjacent only
    np.testing.assert_allclose(col["log_pop"], np.log1p([2, 2, 1, 0]))
    np.testing.assert_allclose(col["trans_ratio"], [2 / 3, 2 / 3, 1 / 2, 0])
    # history a is Action|Sci-Fi, 1990: b shares a genre, c does not, d has no genres
    assert col["genre_overlap"][0] == 1.0 and col["genre_overlap"][1] == 0.0
    assert math.isnan(col["genre_overlap"][2])
    np.testing.assert_allclose(col["year_gap"][:3], [2, 9, 40])
    assert math.isnan(col["year_gap"][3])
    # {alpha, wars, 1990} vs {beta, wars, 1992}: one shared word of five
    assert col["title_overlap"][0] == pytest.approx(1 / 5)
    assert col["user_activity"][0] == pytest.approx(math.log1p(2))
    assert x.shape == (4, len(FEATURE_NAMES))


def test_unknown_items_and_users_get_neutral_features() -> None:
    fm = small_models()
    x = fm.features("stranger", ["zz"], ["a", "unknown-item"])
    col = {n: x[:, i] for i, n in enumerate(FEATURE_NAMES)}
    assert col["transitions"].tolist() == [0, 0] and col["log_pop"][1] == 0
    assert col["lightfm"][1] == 0.0  # unknown item: no CF score
    assert col["lightfm"][0] == pytest.approx(float(fm.cf.item_biases[fm.items["a"]]))


def synthetic_groups(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Groups of 10 where feature 0 is the truth's signal and feature 1 is noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        y = np.zeros(10)
        y[rng.integers(10)] = 1
        x = np.column_stack([y + 0.2 * rng.normal(size=10), rng.normal(size=10)])
        out.append((x, y))
    return out


def test_lambdamart_learns_the_signal_and_round_trips(tmp_path) -> None:
    model = LambdaMART.fit(synthetic_groups(200), ["signal", "noise"], n_estimators=50)
    test = synthetic_groups(100, seed=1)
    top1 = np.mean([y[np.argmax(model.scores(x))] for x, y in test])
    assert top1 > 0.8  # random would be 0.1
    imp = model.importance()
    assert imp["signal"] > imp["noise"]
    loaded = LambdaMART.load(model.save(tmp_path / "m.json"))
    np.testing.assert_allclose(loaded.scores(test[0][0]), model.scores(test[0][0]))


@pytest.mark.parametrize(
    ("groups", "names", "message"),
    [
        ([], ["a"], "at least one training group"),
        ([(np.zeros((3, 2)), np.zeros(3))], ["a"], "features of shape (n, 1)"),
        ([(np.zeros((3, 1)), np.zeros(2))], ["a"], "and n labels"),
    ],
)
def test_lambdamart_bad_input(groups, names, message: str) -> None:
    with pytest.raises(RetrievalError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LambdaMART.fit(groups, names)


def test_lambdamart_load_refuses_other_files(tmp_path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    with pytest.raises(RetrievalError, match="not a saved LambdaMART model"):
        LambdaMART.load(bad)


def rec_world(n_users: int = 40, n_items: int = 60, length: int = 25, seed: int = 0):
    """Users walk items i, i+1, i+2, ... (mod n_items): the next item is predictable from
    the last one, so transitions-based features rank the truth first."""
    rng = np.random.default_rng(seed)
    rows, instances = [], []
    titles = {str(i): f"item {i}" for i in range(n_items)}
    for u in range(n_users):
        start = int(rng.integers(n_items))
        seq = [str((start + k) % n_items) for k in range(length)]
        rows += [(f"u{u}", it) for it in seq[:-1]]
        target = seq[-1]
        negatives = [i for i in titles if i not in seq][:9]
        cands = [target, *negatives]
        order = rng.permutation(len(cands))
        instances.append(
            Instance(
                id=f"rec-movie:u{u}",
                task="rec-movie",
                request_task="rec-movie",
                candidates=tuple(Candidate(id=cands[i], text=titles[cands[i]]) for i in order),
                relevance={target: 1.0},
                history=tuple(titles[h] for h in seq[-21:-1]),
                history_ids=tuple(seq[-21:-1]),
                user_id=f"u{u}",
            )
        )
    train = pl.DataFrame({"user_id": [u for u, _ in rows], "item_id": [i for _, i in rows]})
    return TaskSet("rec-movie", instances, train=train, catalogue=titles)


def test_split_last_drops_each_users_last_item() -> None:
    train = pl.DataFrame(
        {"user_id": ["a", "a", "a", "b", "b"], "item_id": ["1", "2", "3", "4", "5"]}
    )
    inner, seqs = split_last(train, {"a", "b"})
    assert inner["item_id"].to_list() == ["1", "2", "4"]
    assert seqs == {"a": (["1", "2"], "3"), "b": (["4"], "5")}


def test_training_groups_never_see_the_evaluated_targets() -> None:
    ts = rec_world()
    groups = training_groups(ts, seed=7, hard_negatives=False)
    eval_targets = {i.user_id: i.target for i in ts.instances}
    train_last = dict(ts.train.group_by("user_id").agg(pl.col("item_id").last()).iter_rows())
    for g in groups.instances:
        # the training truth is the user's last *training* item, never the evaluated one
        assert g.target == train_last[g.user_id]
        assert g.target != eval_targets[g.user_id]
        assert g.target not in g.history_ids
    # and the feature models of the training groups were fitted without that item
    seen = groups.models.trans10.sum()
    full = FeatureModels.fit(ts.train["user_id"].to_list(), ts.train["item_id"].to_list(),
                             list(ts.catalogue), factors=4, epochs=1).trans10.sum()  # fmt: skip
    assert seen < full


def test_lambdamart_baseline_ranks_a_predictable_world() -> None:
    ts = rec_world()
    run = evaluate(LambdaMARTBaseline(seed=7), ts, progress=False)
    assert run.metrics["mrr"]["mean"] > 0.9  # random: ~0.29 for 10 candidates
    assert run.bad_permutations == 0 and len(run.instances) == len(ts.instances)
    assert {"id", "user", "cold", "mrr"} <= set(run.instances[0])
