"""The same-log protocol (`train-ranker --users all`): the LM trains on every user's log,
the held-out users' included, and never on an evaluated target; `--positions` and
`--min-items` choose which of a log's items become episodes; an evaluation on held-out
users records that its model saw their logs."""

from __future__ import annotations

import json
import re

import pytest

from recsys.errors import UserError
from recsys.hybrid_training import HybridTrainOptions, build_episodes, episode_positions
from recsys.resolver import trained_on_users
from tests.fixtures.cli import run_cli
from tests.fixtures.data import tiny_ml100k


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_ml100k(tmp_path_factory.mktemp("samelog") / "movielens-100k", users=30)


def _episodes(data, **options):
    return _episode_set(data, **options).train


def _episode_set(data, **options):
    opts = HybridTrainOptions(task="rec-movie", **options)
    return build_episodes("rec-movie", data.parent, opts)


def _evaluated(data):
    from recsys.eval.tasks import build_task, is_heldout

    taskset = build_task("rec-movie", data, 7)
    targets = {i.user_id: next(iter(i.relevance)) for i in taskset.instances}
    heldout = {u for u in targets if is_heldout(u, 7)}
    log = dict(taskset.train.group_by("user_id").agg("item_id").iter_rows())
    return targets, heldout, log


def test_all_users_adds_the_heldout_logs_and_never_an_evaluated_target(data) -> None:
    targets, heldout, log = _evaluated(data)
    assert heldout  # the fixture has held-out users to add
    only_train = _episodes(data, positions=3)
    every = _episodes(data, positions=3, users="all")
    assert not {ep.user for ep in only_train} & heldout
    assert {ep.user for ep in every} & heldout == heldout
    # the training users' episodes are the same either way
    assert [ep.request.request_id for ep in every if ep.user not in heldout] == [
        ep.request.request_id for ep in only_train
    ]
    for ep in every:
        t = int(ep.request.request_id.rsplit(":", 1)[1])
        assert ep.ground_truth == log[ep.user][t] != targets[ep.user]
        assert t >= len(log[ep.user]) - 3  # --positions 3: the last three items only


def test_history_is_the_last_n_items_before_each_truth(data) -> None:
    _, _, log = _evaluated(data)
    for n in (3, 40):
        episodes = _episode_set(data, positions=4, history=n)
        assert episodes.info["history"] == n
        for ep in [*episodes.train, *episodes.val]:
            t = int(ep.request.request_id.rsplit(":", 1)[1])
            assert ep.request.history_ids == tuple(log[ep.user][max(0, t - n) : t])
    for n in (3, 10):  # the cap binds: users have more items than that
        assert max(len(e.request.history_ids) for e in _episodes(data, history=n)) == n


def test_val_positions_adds_each_validation_users_earlier_items(data) -> None:
    one, three = _episode_set(data, positions=3), _episode_set(data, positions=3, val_positions=3)
    assert one.val, "the fixture has validation users"
    assert [ep.request.request_id for ep in three.train] == [
        ep.request.request_id for ep in one.train
    ]  # training episodes unchanged
    per_user = {ep.user: [] for ep in three.val}
    for ep in three.val:
        per_user[ep.user].append(int(ep.request.request_id.rsplit(":", 1)[1]))
    assert set(per_user) == {ep.user for ep in one.val}
    last = {ep.user: int(ep.request.request_id.rsplit(":", 1)[1]) for ep in one.val}
    assert all(ts == [last[u] - 2, last[u] - 1, last[u]] for u, ts in per_user.items())
    assert three.info["val_positions"] == 3 and len(three.val) == 3 * len(one.val)


def test_min_items_skips_users_with_shorter_logs(data) -> None:
    assert len(_episodes(data, min_items=21)) == len(_episodes(data))  # every log holds 21
    with pytest.raises(UserError, match="no training episodes"):
        _episodes(data, min_items=22)


@pytest.mark.parametrize(
    ("n_items", "is_val", "options", "expected"),
    [
        (30, False, {}, range(5, 30)),  # every prefix with 5 items before it
        (30, False, {"positions": 10}, range(20, 30)),
        (8, False, {"positions": 10}, range(5, 8)),  # never fewer than min_history before
        (30, True, {"positions": 10}, range(29, 30)),  # a validation user: the last item
        (30, True, {"val_positions": 4}, range(26, 30)),  # --val-positions 4: the last four
        (7, True, {"val_positions": 4}, range(5, 7)),  # never fewer than min_history before
        (30, False, {"min_history": 2, "positions": 40}, range(2, 30)),
    ],
)
def test_episode_positions(n_items, is_val, options, expected) -> None:
    opts = HybridTrainOptions(task="rec-movie", **options)
    assert episode_positions(n_items, is_val, opts) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--users", "heldout"], "--users 'heldout': use one of train, all"),
        (["--positions", "-1"], "--positions -1: use 0 (all) to 1000"),
        (["--min-items", "-2"], "--min-items -2: use 0 to 10000"),
        (["--users", "all", "--residual-alpha", "5"], "--users all, --positions, --min-items"),
        (["--val-positions", "0"], "--val-positions 0: use 1 to 100"),
        (["--val-positions", "3", "--residual-alpha", "5"], "and --val-positions apply to"),
        (["--positions", "3", "--residual-alpha", "5"], "takes its episodes from --residual-pos"),
        (["--history", "0"], "--history 0: use 1 to 200"),
        (["--history", "40", "--residual-alpha", "5"], "--history applies to the plain"),
    ],
)
def test_train_ranker_refuses_bad_user_options(args, message, monkeypatch, capsys) -> None:
    code, _, err = run_cli(monkeypatch, capsys, ["train-ranker", "--task", "rec-movie", *args])
    assert code != 0 and message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("card", "expected"),
    [
        (None, None),  # not a model folder with a card: nothing to record
        ({"fusion_alpha": 5}, "train"),  # cards written before --users: training users only
        ({"options": {"users": "train"}}, "train"),
        ({"options": {"users": "all"}}, "all"),
    ],
)
def test_trained_on_users_reads_the_card(card, expected, tmp_path) -> None:
    if card is not None:
        (tmp_path / "card.json").write_text(json.dumps(card))
    assert trained_on_users(str(tmp_path)) == expected
    assert trained_on_users(None) is None


@pytest.mark.parametrize(
    ("text", "why"),
    [("{not json", "Expecting property name"), ("[1, 2]", "not a JSON object"),
     ('{"options": 3}', "'options' is not an object")],
)  # fmt: skip
def test_an_unreadable_card_is_named(text, why, tmp_path) -> None:
    (tmp_path / "card.json").write_text(text)
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'card.json'} is not a readable")):
        trained_on_users(str(tmp_path))
    with pytest.raises(UserError, match=re.escape(why)):
        trained_on_users(str(tmp_path))
