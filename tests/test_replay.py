"""Offline replay: known-answer comparisons and exact propensities of logged rankings."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from ranking.rl.episodes import Episode
from ranking.types import Candidate, RankRequest
from recsys.db.events import LoggedCandidate, LoggedRequest
from recsys.errors import UserError
from recsys.replay.replay import replay, served_log_propensity
from recsys.training import episode_from_logged


def logged_requests(n: int = 12, k: int = 6) -> list[LoggedRequest]:
    """Logged traffic as the database returns it (recsys.db.events.logged_requests)."""
    return [
        LoggedRequest(
            request_id=f"r{u}",
            user_id=f"u{u}",
            task="rec-movie",
            candidates=tuple(
                LoggedCandidate(f"{u}-{j}", f"Movie {j} ({1980 + j})", float(k - j))
                for j in range(k)
            ),
            shown=tuple(f"{u}-{j}" for j in range(k)),
            ground_truth=f"{u}-{u % k}",
            history=("Heat (1995)", "Fargo (1996)"),
        )
        for u in range(n)
    ]


def episodes(n: int = 12, k: int = 6) -> list[Episode]:
    return [episode_from_logged(r) for r in logged_requests(n, k)]


def oracle(logged):
    truth = {e.request.ids[0].split("-")[0]: e.ground_truth for e in logged}

    def rank(requests):
        out = []
        for r in requests:
            t = truth[r.ids[0].split("-")[0]]
            out.append([t] + [i for i in r.ids if i != t])
        return out

    return rank


def test_oracle_against_worst_order_has_a_known_difference():
    logged = episodes()
    assert logged[0].request.history == ("Heat (1995)", "Fargo (1996)")
    assert list(logged[0].logged_order) == logged[0].request.ids == [f"0-{j}" for j in range(6)]
    best = oracle(logged)

    def worst(requests):
        return [list(reversed(o)) for o in best(requests)]

    report = replay(logged, worst, best)
    assert report.policies["B"]["mrr"] == 1.0
    assert report.policies["A"]["mrr"] == pytest.approx(1 / 6)
    diff = report.difference["mrr"]
    assert diff["mean"] == pytest.approx(5 / 6)
    assert diff["low"] > 0  # the interval excludes zero
    assert "| mrr |" in report.markdown("worst", "oracle")


def test_replaying_nothing_says_what_to_do():
    with pytest.raises(UserError, match="log impressions first"):
        replay([], oracle([]), oracle([]))


def test_logged_propensity_equals_the_engines_sampling_propensity(tiny_ranker):
    """The engine's log_propensity of a sampled ranking equals the one replay scores."""
    request = RankRequest(
        task="rec-movie",
        history=("Heat (1995)",),
        candidates=tuple(Candidate(str(i), f"Movie number {i}") for i in range(7)),
        temperature=1.0,
        seed=3,
    )
    result = tiny_ranker.rank(request)
    entry = Episode(
        dataclasses.replace(request, temperature=0.0), "3", logged_order=tuple(result.order)
    )
    (scored,) = served_log_propensity(tiny_ranker)([entry])
    assert scored == pytest.approx(result.log_propensity, abs=1e-4)
    assert scored < 0 and math.isfinite(scored)


def test_off_policy_estimates_of_the_logging_policy_itself(tiny_ranker):
    """Target = logging policy: every weight is 1, so IPS = SNIPS = the logged mean."""
    logged = []
    for u in range(5):
        record = logged_requests(1, 5)[0]
        request = episode_from_logged(record).request
        sampled = tiny_ranker.rank(dataclasses.replace(request, temperature=1.0, seed=u))
        shown = dataclasses.replace(
            record, shown=tuple(sampled.order), log_propensity=sampled.log_propensity
        )
        logged.append(episode_from_logged(shown))
    by_order = oracle(logged)
    report = replay(
        logged,
        by_order,
        by_order,
        target_log_propensity=served_log_propensity(tiny_ranker),
    )
    ope = report.off_policy
    assert ope["ess"] == pytest.approx(5.0, abs=1e-3)
    mean = ope["logging policy (on-policy mean)"]
    assert ope["ips"].startswith(mean) and ope["snips"].startswith(mean)


def test_replay_command_on_logged_traffic(database_url, tmp_path):
    """Impressions + later interactions in the database -> report.md / json / png."""
    from datetime import timedelta

    from typer.testing import CliRunner

    from recsys.cli import app
    from recsys.db.engine import make_engine
    from recsys.db.events import (
        ImpressionRecord,
        InteractionRecord,
        log_impressions,
        log_interactions,
    )
    from recsys.db.migrate import ensure_schema
    from recsys.db.models import utcnow

    ensure_schema(database_url)
    engine = make_engine(database_url)
    now = utcnow()
    shown = ["i1", "i2", "i3", "i4"]  # logged order; the user then picks i4 (shown last)
    for u in range(6):
        log_impressions(
            [
                ImpressionRecord(
                    f"req{u}",
                    f"u{u}",
                    item,
                    pos,
                    "iranker-incremental",
                    context={"task": "rec-movie", "score": float(pos), "log_propensity": -2.0},
                    timestamp=now,
                )
                for pos, item in enumerate(shown)
            ],
            engine=engine,
        )
        log_interactions(
            [InteractionRecord(f"u{u}", "i4", "click", now + timedelta(minutes=5))],
            engine=engine,
        )
    engine.dispose()
    result = CliRunner().invoke(
        app,
        [
            "replay",
            "--a",
            "logged",
            "--b",
            "retrieval",
            "--url",
            database_url,
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["n"] == 6
    assert report["policies"]["A"]["mrr"] == pytest.approx(0.25)  # i4 shown 4th
    assert report["policies"]["B"]["mrr"] == 1.0  # highest score first
    assert (tmp_path / "replay.png").stat().st_size > 1000
    assert "| mrr |" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize(("k", "exact"), [(4, True), (6, False)])
def test_replay_progress_counts_every_ranking_and_ends_at_1(
    tiny_model_dir, tmp_path, monkeypatch, capsys, k, exact
):
    """One progress over the replay's rankings: B's re-ranking of each request, B's scoring
    of each logged ranking (its off-policy propensity), then the rankings drawn (or, with few
    candidates, enumerated) per policy for the per-position estimates; the reports rise and
    end at 1.0, the last line says every ranking is done."""
    from recsys import progress
    from recsys.db import events
    from recsys.replay.run import ReplayConfig, run_replay

    class Ticking:  # every reading 10 s on: every update is due for a report
        now = 0.0

        def monotonic(self) -> float:
            self.now += 10.0
            return self.now

    traffic = [dataclasses.replace(r, log_propensity=-3.0) for r in logged_requests(4, k)]
    monkeypatch.setattr(events, "logged_requests", lambda **kw: traffic)
    monkeypatch.setattr(progress, "time", Ticking())
    model = str(tiny_model_dir)
    config = ReplayConfig(a="logged", b=model, slate_draws=3, logging_model=model,
                          device="cpu", out=tmp_path)  # fmt: skip
    reports: list[float] = []
    result = run_replay(config, engine=None, report=reports.append)  # type: ignore[arg-type]
    assert result.slate["exact"] is exact
    # B ranks 4 requests and scores their 4 logged rankings; per policy 4 x 4! enumerated,
    # or 4 x 3 drawn
    total = 4 + 4 + 2 * (4 * math.factorial(k) if exact else 4 * 3)
    assert f"replay: {total}/{total} rankings (100%)" in capsys.readouterr().err
    assert len(reports) > 2 and reports[-1] == 1.0
    assert reports == sorted(set(reports))  # strictly increasing


def built_episodes(n: int = 8, k: int = 5) -> list[Episode]:
    """Episodes as `recsys index-episodes` writes them: no logged order or propensity; the
    candidates carry the index's scores."""
    return [
        dataclasses.replace(e, logged_order=None, logged_log_propensity=None)
        for e in episodes(n, k)
    ]


def test_replay_of_an_episode_file_against_the_order_it_re_ranks(tiny_model_dir, tmp_path):
    """`--episodes FILE`: the file's requests, not the database's log; retrieval (by score)
    has a known MRR, a model's orders are permutations, and no off-policy estimate is made
    (built episodes log no propensity)."""
    from ranking.rl.episodes import write_episodes
    from recsys.replay.run import ReplayConfig, run_replay

    eps = built_episodes()
    path = tmp_path / "eps.jsonl"
    write_episodes(path, eps)
    config = ReplayConfig(a="retrieval", b=str(tiny_model_dir), episodes=path, limit=6,
                          device="cpu", out=tmp_path / "out", progress=False)  # fmt: skip
    report = run_replay(config, engine=None)  # type: ignore[arg-type]  # no database read
    assert report.n == 6
    # by score: candidate j of user u has score k - j, the truth is candidate u % k
    expected = [1 / (1 + u % 5) for u in range(6)]
    assert report.per_request["A"] == pytest.approx(expected)
    assert all(0 < rr <= 1 for rr in report.per_request["B"])
    assert "carries a logged propensity" in report.off_policy["note"] and not report.slate
    assert report.markdown("retrieval", "B").startswith("Replay of 6 requests from eps.jsonl")
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["n"] == 6 and set(saved["difference"]) >= {"mrr", "ndcg@10"}
    assert saved["episodes"] == str(path)


@pytest.mark.parametrize(
    ("lines", "extra", "message"),
    [
        (None, [], "episode file {path} not found; write one with recsys index-episodes"),
        (["{not json"], [], "{path}:1:"),
        ([], ["--a", "logged"], "policy 'logged' needs the order each request was shown in"),
    ],
)
def test_bad_episode_files_are_one_clear_line(tmp_path, monkeypatch, capsys, lines, extra, message):
    import sys

    from ranking.rl.episodes import episode_to_dict
    from recsys.cli import main

    path = tmp_path / "eps.jsonl"
    if lines is not None:
        rows = lines or [json.dumps(episode_to_dict(e)) for e in built_episodes(2)]
        path.write_text("\n".join(rows) + "\n")
    args = ["replay", "--episodes", str(path), "--b", "retrieval", "--out", str(tmp_path),
            "--url", f"sqlite:///{tmp_path / 'db.sqlite'}", "--no-progress", *extra]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["recsys", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message.format(path=path) in err and "Traceback" not in err


def test_an_episode_file_over_the_limit_is_refused_unless_limit_is_given(tmp_path, monkeypatch):
    from ranking.rl.episodes import write_episodes
    from recsys.replay import run
    from recsys.replay.run import ReplayConfig, _replayed

    path = tmp_path / "eps.jsonl"
    write_episodes(path, built_episodes(5))
    monkeypatch.setattr(run, "MAX_EPISODES", 4)
    with pytest.raises(UserError, match="holds more than 4 episodes: replay a part of it"):
        _replayed(ReplayConfig(episodes=path), engine=None)  # type: ignore[arg-type]
    kept = _replayed(ReplayConfig(episodes=path, limit=3), engine=None)  # type: ignore[arg-type]
    assert [e.user for e in kept] == [e.user for e in built_episodes(3)]


def test_with_episodes_policy_a_defaults_to_the_order_it_re_ranks(tmp_path):
    """Built episodes were never shown, so `--a` defaults to retrieval with `--episodes`."""
    from typer.testing import CliRunner

    from ranking.rl.episodes import write_episodes
    from recsys.cli import app

    path = tmp_path / "eps.jsonl"
    write_episodes(path, built_episodes(4))
    args = ["replay", "--episodes", str(path), "--b", "retrieval", "--out", str(tmp_path),
            "--url", f"sqlite:///{tmp_path / 'db.sqlite'}", "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["a"] == "retrieval" and saved["n"] == 4
    assert saved["difference"]["mrr"]["mean"] == 0.0  # the same policy on both sides
