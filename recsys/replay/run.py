"""One replay, end to end: logged traffic from the database -> policies A and B -> paired
replay, off-policy and per-position estimates -> report.md / report.json / replay.png.
`recsys replay` and the scheduled loop (jobs.tasks.improve_ranker) both run this."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

from ranking.engine import Ranker
from ranking.folders import write_whole
from ranking.rl.episodes import Episode
from ranking.types import RankRequest
from recsys.progress import Progress
from recsys.replay.replay import (
    ReplayReport,
    TargetLogPropensity,
    has_propensity,
    plot_report,
    rank_function,
    replay,
    served_log_propensity,
)
from recsys.replay.slate_report import RankingProb

MAX_EPISODES = 200_000  # an episode file replayed whole (about 18 h of LM ranking on a CPU)


@dataclass(frozen=True)
class ReplayConfig:
    a: str = "logged"  # logged | retrieval | a model spec
    b: str = "default"
    limit: int | None = None
    window_days: float = 7.0
    since: datetime | None = None  # only requests shown from then on
    # a JSONL file of episodes (`recsys index-episodes`, `recsys train --source`) replayed
    # instead of the database's log; None: the log
    episodes: Path | None = None
    mode: str = "incremental"
    off_policy: bool = True
    slate_draws: int = 16  # sampled rankings per policy for per-position marginals; 0: off
    logging_model: str | None = None  # the policy that logged; None: A if a model, else settings'
    device: str | None = None
    out: Path = Path("var/replay")
    progress: bool = True  # on stderr: a bar on a terminal, else a line every 30 s


def run_replay(
    config: ReplayConfig, *, engine: Engine, report: Callable[[float], None] | None = None
) -> ReplayReport:
    """The replay (module docstring). Progress (recsys.progress) counts rankings: the
    requests each model policy re-ranks, and the rankings sampled (or enumerated) for the
    per-position estimates; on stderr when `config.progress`, and to `report(fraction)`
    (job_runs), throttled and increasing, 1.0 when the report is written."""
    from recsys.replay.slate_report import planned_rankings

    # every policy ranks, samples and scores in the replay's mode
    logged = [_in_mode(e, config.mode) for e in _replayed(config, engine)]
    rank_a, ranker_a = rank_function(config.a, logged, device=config.device, mode=config.mode)
    rank_b, ranker_b = rank_function(config.b, logged, device=config.device, mode=config.mode)
    usable = [e for e in logged if has_propensity(e)]
    off_policy = config.off_policy and ranker_b is not None
    logging = None
    if config.slate_draws and ranker_b is not None and usable:
        logging = _logging_ranker(config, ranker_a)
    total = len(logged) * ((ranker_a is not None) + (ranker_b is not None))
    total += len(usable) if off_policy else 0
    if logging is not None and ranker_b is not None:
        total += 2 * planned_rankings(usable, config.slate_draws, True)
    with Progress(total, "replay", "rankings", show=config.progress, report=report) as progress:
        counted_a = _counted(rank_a, progress) if ranker_a is not None else rank_a
        counted_b = _counted(rank_b, progress) if ranker_b is not None else rank_b
        target = None
        if off_policy and ranker_b is not None:  # scored once: the slate section reuses it
            target = _once(served_log_propensity(ranker_b, on_ranked=progress.update))
        result = replay(logged, counted_a, counted_b, target_log_propensity=target)
        if config.episodes is not None:
            result.source = f"requests from {config.episodes.name}"
        if logging is not None and ranker_b is not None:
            result.slate = slate_section(usable, logging, ranker_b, config.slate_draws, target,
                                         on_ranked=progress.update)  # fmt: skip
        write_report(result, config)
    return result


def _replayed(config: ReplayConfig, engine: Engine) -> list[Episode]:
    """The episodes replayed: the database's logged requests with their outcome, or the
    file's episodes (the first `limit` of either)."""
    if config.episodes is None:
        from recsys.db.events import logged_requests
        from recsys.training import episode_from_logged

        records = logged_requests(window=timedelta(days=config.window_days), limit=config.limit,
                                  since=config.since, engine=engine)  # fmt: skip
        return [episode_from_logged(r) for r in records]
    from ranking.errors import RequestError
    from ranking.rl.episodes import read_episodes
    from recsys.errors import UserError

    if not config.episodes.is_file():
        raise UserError(f"episode file {config.episodes} not found; write one with recsys "
                        "index-episodes (or give none to replay the database's log)")  # fmt: skip
    try:  # one past the cap, to tell a file over it
        episodes = read_episodes(config.episodes, limit=config.limit or MAX_EPISODES + 1)
    except RequestError as exc:
        raise UserError(f"{exc}; each line is one episode as recsys index-episodes writes "
                        "it") from None  # fmt: skip
    if not config.limit and len(episodes) > MAX_EPISODES:
        raise UserError(f"{config.episodes} holds more than {MAX_EPISODES:,} episodes: replay "
                        "a part of it with --limit N")  # fmt: skip
    return episodes


def _counted(rank: Callable[..., Any], progress: Progress) -> Callable[..., Any]:
    """A model policy's rank function that moves `progress` as its batches finish."""
    return lambda requests: rank(requests, on_ranked=progress.update)


def _once(log_propensity: TargetLogPropensity) -> TargetLogPropensity:
    """`log_propensity`, each episode scored the first time it is asked for only."""
    seen: dict[int, float] = {}

    def cached(entries: Sequence[Episode]) -> list[float]:
        missing = [e for e in entries if id(e) not in seen]
        if missing:
            seen.update(zip(map(id, missing), log_propensity(missing), strict=True))
        return [seen[id(e)] for e in entries]

    return cached


def _in_mode(entry: Episode, mode: str) -> Episode:
    return dataclasses.replace(entry, request=dataclasses.replace(entry.request, mode=mode))


def slate_section(
    episodes: list[Episode],
    logging: Ranker,
    target: Ranker,
    draws: int,
    target_lp: TargetLogPropensity | None,
    on_ranked: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Per-position estimates (recsys.replay.slate_report) on the rounds with propensities;
    `on_ranked(n)` follows the sampling (slate_report.planned_rankings per policy). The
    logging policy's marginals come from each request as it was served (its logged fusion
    weight and abstention threshold, `Episode.as_logged`); the target ranks with its own."""
    from recsys.replay.slate_report import policy_rankings, slate_estimates

    lp0, lp1 = _prob_of(logging), _prob_of(target)
    as_served = [e.as_logged() for e in episodes]
    p0, exact0 = policy_rankings(logging, as_served, draws, prob_of=lp0, include_logged=True,
                                 on_ranked=on_ranked)  # fmt: skip
    p1, exact1 = policy_rankings(target, episodes, draws, prob_of=lp1, seed=1_000_003,
                                 on_ranked=on_ranked)  # fmt: skip
    weights = None
    if target_lp is not None:
        logged_lp = np.array([e.logged_log_propensity for e in episodes], dtype=np.float64)
        weights = np.exp(np.asarray(target_lp(episodes), dtype=np.float64) - logged_lp)
    out = slate_estimates(episodes, p0, p1, whole_ranking_weights=weights)
    return {**out, "draws": draws, "exact": exact0 and exact1}


def _prob_of(ranker: Ranker) -> RankingProb:
    """(request, rankings) -> each ranking's probability under what `ranker` serves, at
    T = 1 (`Ranker.log_probabilities`), for exact marginals on small requests."""

    def prob(request: RankRequest, orders: Sequence[Sequence[str]]) -> list[float]:
        greedy = dataclasses.replace(request, temperature=0.0)
        lps = ranker.log_probabilities([greedy] * len(orders), orders)
        return [math.exp(lp) for lp in lps]

    return prob


def _logging_ranker(config: ReplayConfig, ranker_a: Ranker | None) -> Ranker:
    from recsys import runtime

    if config.logging_model:
        return runtime.load_ranker(model=config.logging_model, device=config.device)
    return ranker_a or runtime.load_ranker(device=config.device)


def write_report(report: ReplayReport, config: ReplayConfig) -> Path:
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    text = report.markdown(config.a, config.b)
    write_whole(out / "report.md", text + "\n\n![replay](replay.png)\n")
    body = {"a": config.a, "b": config.b, "mode": config.mode,
            "episodes": None if config.episodes is None else str(config.episodes),
            **report.__dict__}  # fmt: skip
    write_whole(out / "report.json", json.dumps(body, indent=2, default=str))
    plot_report(report, config.a, config.b, str(out / "replay.png"))
    return out
