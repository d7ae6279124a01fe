"""`recsys index-episodes`: the production index's requests at earlier cuts of each log, as
training episodes (recsys.index_episodes); and the card a run on them writes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ranking.rl.episodes import read_episodes
from recsys.cli import app
from recsys.errors import UserError
from recsys.eval.instances import is_heldout
from recsys.index_episodes import IndexEpisodesOptions
from retrieval.generator import GeneratorConfig
from tests.test_demo import demo_env, write_movielens  # noqa: F401 (a fixture)


def logs(folder: Path) -> dict[str, list[str]]:
    """Each user's items in time order, from the u.data the fixture wrote."""
    rows = [line.split("\t") for line in (folder / "u.data").read_text().splitlines()]
    out: dict[str, list[str]] = {}
    for user, item, _, _ in sorted(rows, key=lambda r: (int(r[3]), int(r[0]))):
        out.setdefault(user, []).append(item)
    return out


def episodes_of_tiny_movielens(tmp: Path, *options: str):  # type: ignore[no-untyped-def]
    """(the MovieLens folder, the episodes file, the CLI result) of `recsys index-episodes`
    on the demo tests' tiny genre-structured MovieLens, with hashing embeddings."""
    folder, out = tmp / "ml-tiny", tmp / "eps.jsonl"
    write_movielens(folder)
    args = ["index-episodes", "--data", str(folder), "--out", str(out), "--embeddings",
            "hashing", "--no-progress", *options]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return folder, out, result


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_episodes_are_the_index_requests_at_each_cut(demo_env):  # noqa: F811
    folder, out, result = episodes_of_tiny_movielens(
        demo_env, "--cuts", "2,3", "--k", "5", "--users", "all"
    )
    episodes = read_episodes(out)
    assert episodes and f"wrote {len(episodes)} episodes" in result.output
    by_user = logs(folder)
    cuts = {2: 0, 3: 0}
    for ep in episodes:
        assert ep.request.request_id.startswith(f"index-{ep.user}-cut")
        cut = int(ep.request.request_id.rsplit("-cut", 1)[1])
        cuts[cut] += 1
        items = by_user[ep.user]
        # the truth is the item `cut` from the end; the history the items before it
        assert ep.ground_truth == items[-cut]
        assert list(ep.request.history_ids) == items[:-cut][-20:]
        assert len(ep.request.candidates) == 5 and ep.ground_truth in ep.request.ids
        assert not set(ep.request.ids) & set(items[:-cut]), "seen items are not candidates"
        assert all(c.signals["popularity"] >= 0 for c in ep.request.candidates)
    assert cuts[2] and cuts[3]
    assert f"cut 2: {cuts[2]} episodes" in result.output


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_train_users_only_leaves_the_heldout_users_out(demo_env):  # noqa: F811
    _, out, _ = episodes_of_tiny_movielens(
        demo_env, "--cuts", "2", "--k", "8", "--heldout-fraction", "0.5"
    )
    users = {ep.user for ep in read_episodes(out)}
    assert users and not any(is_heldout(u, 7, 0.5) for u in users)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_heldout_users_make_a_test_set_that_may_use_each_users_last_item(demo_env):  # noqa: F811
    folder, out, result = episodes_of_tiny_movielens(
        demo_env, "--cuts", "1", "--k", "8", "--heldout-fraction", "0.5", "--users", "heldout"
    )
    episodes = read_episodes(out)
    by_user = logs(folder)
    assert episodes and all(is_heldout(ep.user, 7, 0.5) for ep in episodes)
    assert all(ep.ground_truth == by_user[ep.user][-1] for ep in episodes)
    assert "cut 1:" in result.output


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cuts": (1, 2)}, "give cuts from 2 to 50"),
        ({"cuts": ()}, "give cuts from 2 to 50"),
        ({"cuts": (2, 2)}, "each cut once"),
        ({"users": "some"}, "--users 'some': use one of train, all, heldout"),
        ({"users": "heldout", "cuts": (0, 1)}, "give cuts from 1 to 50"),
        ({"users": "all", "cuts": (1,)}, "only --users heldout, a test set, may use it"),
        ({"heldout_fraction": 1.0}, "use a share in (0, 1)"),
        ({"k": 0}, "--k 0: use 1 to 100"),
        ({"history": 500}, "--history 500: use 1 to 200"),
        ({"embeddings": "bert"}, "unknown --embeddings 'bert'"),
        ({"task": "passage"}, "--task 'passage': use a recommendation task, one of rec-movie"),
        ({"index": GeneratorConfig(ltr=True, ltr_bag=0)}, "--ltr-bag 0: give a whole number"),
        ({"index": GeneratorConfig(ltr=False, ltr_bag=3)}, "--ltr-bag averages the LambdaMART"),
        (
            {"index": GeneratorConfig(ltr=True, ltr_text=True), "embeddings": "off"},
            "--ltr-text adds title-embedding features",
        ),
    ],
)
def test_bad_options_are_refused(changes, message) -> None:
    base = {"out": Path("o.jsonl")}
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        IndexEpisodesOptions(**{**base, **changes})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--cuts", "2,b"], "--cuts '2,b': give whole numbers separated by commas"),
        (["--cuts", "1"], "give cuts from 2 to 50"),
        (["--embeddings", "bert"], "unknown --embeddings 'bert'"),
        (["--k", "0"], "--k 0: use 1 to 100"),
        (["--ltr-bag", "99"], "--ltr-bag 99: give a whole number of LightGBM fits"),
    ],
)
def test_bad_input_on_the_command_line_is_one_line(monkeypatch, capsys, extra, message) -> None:
    from recsys.cli import main

    monkeypatch.setattr(sys, "argv", ["recsys", "index-episodes", "--out", "x.jsonl", *extra])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_leave_last_out_at_a_cut_drops_the_future_too() -> None:
    import numpy as np

    from recsys.pipeline import Interactions, leave_last_out

    data = Interactions(
        users=["a", "a", "b", "a", "b", "a", "c"],
        items=["1", "2", "3", "4", "5", "6", "7"],
        timestamps=np.arange(7.0),
        titles={},
        texts={},
    )
    rows, targets = leave_last_out(data, 2)
    assert targets == {"a": "4"}  # b has 2 events, c 1: no item 2 from their end
    assert rows == [0, 1, 2, 4, 6]  # a's "4" and "6" left out; b and c whole
    rows, targets = leave_last_out(data, 1)
    assert targets == {"a": "6", "b": "5"} and rows == [0, 1, 2, 3, 6]
    with pytest.raises(UserError, match="cut >= 1"):
        leave_last_out(data, 0)


@pytest.mark.parametrize(("heldout_in_episodes", "users"), [(False, "train"), (True, "all")])
def test_a_run_keeps_the_bases_heldout_rule_when_no_episode_breaks_it(
    tmp_path, heldout_in_episodes, users
) -> None:
    from types import SimpleNamespace

    from recsys.hybrid_loop import _users_trained_on

    base = tmp_path / "base"
    base.mkdir()
    card = {"options": {"users": "train"}, "data": {"heldout_fraction": 0.35, "seed": 7}}
    (base / "card.json").write_text(json.dumps(card))
    names = [str(u) for u in range(1, 60)]
    chosen = [u for u in names if is_heldout(u, 7, 0.35) == heldout_in_episodes][:3]
    chosen += [u for u in names if not is_heldout(u, 7, 0.35)][:3]
    record = _users_trained_on(base, [SimpleNamespace(user=u) for u in chosen])
    assert record["options"]["users"] == users
    if users == "train":
        assert record["data"] == {"heldout_fraction": 0.35, "seed": 7}
    else:
        assert "data" not in record


def test_a_file_of_one_side_of_the_heldout_rule_needs_another_split_seed() -> None:
    """The validation split hashes users as the held-out rule does: a file of the rule's
    training users has no validation user under the same seed, and the error says what to do."""
    from types import SimpleNamespace

    from recsys.training import TrainingOptions, split

    users = [str(u) for u in range(1, 400) if not is_heldout(str(u), 7, 0.35)]
    eps = [SimpleNamespace(user=u) for u in users]
    with pytest.raises(UserError, match=r"0 validation episodes.*pass another --seed"):
        split(TrainingOptions(seed=7), eps)  # type: ignore[arg-type]
    train, val = split(TrainingOptions(seed=8, val_users=1000), eps)  # type: ignore[arg-type]
    assert train and val and not {e.user for e in train} & {e.user for e in val}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_without_data_the_database_log_is_read_as_batch_reads_it(demo_env):  # noqa: F811
    folder = demo_env / "ml-tiny"
    write_movielens(folder)
    common = ["--cuts", "2", "--k", "5", "--embeddings", "hashing", "--users", "all",
              "--no-progress"]  # fmt: skip
    empty = CliRunner().invoke(app, ["index-episodes", "--out", "x.jsonl", *common])
    assert empty.exit_code != 0 and "no interactions" in str(empty.exception)
    first, again = demo_env / "a.jsonl", demo_env / "b.jsonl"
    with_data = ["index-episodes", "--data", str(folder), "--out", str(first), *common]
    assert CliRunner().invoke(app, with_data).exit_code == 0  # ingests the folder
    result = CliRunner().invoke(app, ["index-episodes", "--out", str(again), *common])
    assert result.exit_code == 0, result.output
    assert again.read_text() == first.read_text() != ""


def test_validation_keeps_each_users_last_episode() -> None:
    """Validation numbers are per user; a user's earlier episodes would be ranked, then
    overwritten by the last one (`reciprocal_ranks`), and counted in n_val."""
    from types import SimpleNamespace

    from recsys.training import TrainingOptions, split

    eps = [SimpleNamespace(user=str(u), cut=c) for c in (2, 3, 4) for u in range(1, 200)]
    train, val = split(TrainingOptions(seed=8, val_users=1000), eps)  # type: ignore[arg-type]
    users = [e.user for e in val]
    assert val and len(users) == len(set(users))
    assert {e.cut for e in val} == {4}  # the last of each user's three
    assert len(train) == 3 * (199 - len(users))  # training keeps every episode
