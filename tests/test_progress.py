"""Progress of long stages (recsys.progress): throttled job_runs reports that end at 1.0,
plain lines with rate and ETA off a terminal, a tqdm bar on one, sub-stage ranges; and the
stages that use it: Ranker.rank_batch's `on_ranked`, the batch job, training, replay."""

from __future__ import annotations

import io
import itertools

import pytest

from recsys import progress as progress_module
from recsys.progress import Progress, duration, within


class Clock:
    """A clock only the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TickingTime:
    """Stands in for the `time` module of recsys.progress: every reading is 10 s later, so
    every update is due for a report (the throttle is then visible in what is reported)."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 10.0
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_reports_are_throttled_increasing_and_end_at_1():
    clock, reports = Clock(), []
    p = Progress(10, "work", report=reports.append, report_every_s=2.0, clock=clock,
                 stream=io.StringIO())  # fmt: skip
    p.update(1)  # the first update reports at once
    clock.now += 0.5
    p.update(1)  # 0.5 s later: too soon
    clock.now += 1.0
    p.update(1)  # 1.5 s after the last report: still too soon
    clock.now += 1.0
    p.update(2)  # 2.5 s: due
    clock.now += 5.0
    p.update(5)  # all done, but 1.0 is only said when the stage ends
    assert reports == [0.1, 0.5]
    p.close()
    p.close()  # once
    assert reports == [0.1, 0.5, 1.0]


def test_a_stage_that_fails_never_reports_1():
    reports: list[float] = []
    with pytest.raises(RuntimeError), Progress(4, "w", report=reports.append, clock=Clock()) as p:
        p.update(1)
        raise RuntimeError("boom")
    assert reports == [0.25]


def test_an_empty_stage_reports_1_when_it_ends():
    reports: list[float] = []
    with Progress(0, "nothing to do", report=reports.append, show=False):
        pass
    assert reports == [1.0]


def test_off_a_terminal_a_plain_line_every_period_with_rate_and_eta():
    clock, out = Clock(), io.StringIO()
    p = Progress(600, "batch re-rank", "users", every_s=30, clock=clock, stream=out)
    clock.now += 10
    p.update(31)  # 10 s in: no line yet
    assert out.getvalue() == ""
    clock.now += 30
    p.update(89)  # 40 s in: 120 users at 3 users/s, 480 left: 160 s
    assert out.getvalue() == "batch re-rank: 120/600 users (20%), 3 users/s, ETA 2m40s\n"
    clock.now += 5
    p.update(10)  # 5 s after the line: none
    assert out.getvalue().count("\n") == 1
    clock.now += 155
    p.update(470)
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[-1] == "batch re-rank: 600/600 users (100%), 3 users/s, done in 3m20s"
    assert p.rate == pytest.approx(3.0) and p.eta_s == 0.0


def test_a_resumed_stage_counts_only_its_own_work_in_the_rate():
    clock = Clock()
    p = Progress(100, "training", "episodes", initial=40, show=False, clock=clock)
    assert p.rate is None and p.eta_s is None and p.fraction == 0.4
    clock.now += 10
    p.update(20)
    assert p.rate == pytest.approx(2.0) and p.eta_s == pytest.approx(20.0)
    assert "60/100 episodes (60%), 2 episodes/s, ETA 20s" in p.line()


def test_no_output_when_not_shown_or_lines_are_off():
    for kwargs in ({"show": False}, {"every_s": None}):
        out, clock = io.StringIO(), Clock()
        with Progress(3, "quiet", stream=out, clock=clock, **kwargs) as p:
            clock.now += 100
            p.update(3)
        assert out.getvalue() == ""


def test_on_a_terminal_a_tqdm_bar_and_no_plain_lines():
    out, clock = Terminal(), Clock()
    with Progress(3, "ranking", "reqs", every_s=1, stream=out, clock=clock) as p:
        clock.now += 100
        p.update(3)
    text = out.getvalue()
    assert "ranking" in text and "3/3" in text and "reqs/s" in text  # tqdm's own format
    assert "ETA" not in text  # the plain line's word: not written on a terminal


def test_within_maps_a_sub_stage_into_its_range():
    seen: list[float] = []
    mapped = within(seen.append, 0.05, 0.6)
    assert mapped is not None
    for f in (0.0, 0.5, 1.0, 1.5):
        mapped(f)
    assert seen[:2] == pytest.approx([0.05, 0.325]) and seen[2:] == [0.6, 0.6]
    assert within(None, 0.1, 0.2) is None


def test_durations_read_like_a_clock():
    assert [duration(s) for s in (0, 45, 155, 3725)] == ["0s", "45s", "2m35s", "1h02m"]


def test_rank_batch_calls_on_ranked_per_model_batch(tiny_ranker):
    from tests.fixtures.requests import make_request

    requests = [make_request(3 + i % 3) for i in range(10)]  # batch_size 4: 4 + 4 + 2
    counts: list[int] = []
    results = tiny_ranker.rank_batch(requests, on_ranked=counts.append)
    assert sum(counts) == len(requests) == len(results)
    assert sorted(counts) == [2, 4, 4]
    assert [sorted(r.order) for r in results] == [sorted(q.ids) for q in requests]


@pytest.fixture
def ticking(monkeypatch) -> TickingTime:
    fake = TickingTime()
    monkeypatch.setattr(progress_module, "time", fake)
    return fake


def increasing_to_1(reports: list[float]) -> bool:
    return reports[-1] == 1.0 and all(a < b for a, b in itertools.pairwise(reports))


def test_slate_sampling_reports_every_ranking_drawn(tiny_ranker):
    """`policy_rankings` moves progress by exactly what `planned_rankings` says, sampled
    or enumerated."""
    from ranking.rl.synthetic import rule_episodes
    from recsys.replay.run import _prob_of
    from recsys.replay.slate_report import planned_rankings, policy_rankings

    episodes = rule_episodes(3, 1, k=4)
    for prob_of in (None, _prob_of(tiny_ranker)):
        counts: list[int] = []
        _, exact = policy_rankings(tiny_ranker, episodes, 5, prob_of=prob_of,
                                   on_ranked=counts.append)  # fmt: skip
        assert exact is (prob_of is not None)
        assert sum(counts) == planned_rankings(episodes, 5, prob_of is not None)
    assert planned_rankings(episodes, 5, False) == 15
    assert planned_rankings(episodes, 5, True) == 3 * 24


def test_training_reports_increasing_fractions_and_records_carry_rate_and_eta(
    tiny_model_dir, tmp_path, monkeypatch, ticking
):
    from ranking.rl.episodes import write_episodes
    from ranking.rl.synthetic import rule_episodes
    from recsys.settings import get_settings
    from recsys.training import TrainingOptions, run_training

    monkeypatch.setenv("RECSYS_VAR_DIR", str(tmp_path / "var"))
    get_settings.cache_clear()
    path = tmp_path / "episodes.jsonl"
    write_episodes(path, rule_episodes(12, 3, k=3))
    opts = TrainingOptions(source=str(path), model=str(tiny_model_dir), device="cpu",
                           steps=3, batch_size=2, eval_every=0, val_fraction=0.3,
                           run_name="progress", register=False)  # fmt: skip
    reports: list[float] = []
    records: list[dict] = []
    try:
        metrics = run_training(opts, log=records.append, report=reports.append)
    finally:
        get_settings.cache_clear()
    assert metrics["steps"] == 3
    assert increasing_to_1(reports) and len(reports) >= 3  # zero-shot, steps, tuned eval
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(r["steps_per_s"] > 0 and r["episodes_per_s"] > 0 for r in steps)
    assert all(r["eta_s"] >= 0 for r in steps)
    evaluations = [r for r in records if "evaluating" in r]
    assert evaluations and all("eta_s" in r for r in evaluations)
    # log.jsonl keeps the trainer's own records, without the additions
    log = (tmp_path / "var" / "artifacts" / "training" / "progress" / "log.jsonl").read_text()
    assert "eta_s" not in log and '"loss"' in log
