"""Training episodes from the production index: what the LM stage is served in `recsys
batch` and `recsys demo`, as a JSONL file `recsys train --source FILE` reads.

Why: the shipped rankers were trained on the eval harness's instances (the truth among 19
sampled negatives, 4 of them hard). In production the LM re-ranks the index's top 20 — fusion,
then the LambdaMART stage — and is fused with that stage's scores: every candidate is hard,
and the order it re-ranks is already good. Measured on that path, the stage is level with the
order it re-ranks (README "The main job"). These episodes are that path's requests.

The log is the database's (every source, as `recsys batch` reads it), or a MovieLens folder
ingested first (`data`, as `recsys demo`). For each cut c in `cuts`: every user's last c items
are left out (`recsys.pipeline.leave_last_out(data, c)`), the production index is built on
the rest (`recsys.pipeline.build_index`; `index`, the demo's settings by default), and each
user's item c from the end is the truth; the request is exactly the one the demo and batch
would serve then (`recsys.pipeline.rank_requests`: the user's last `history` items, the
retrieved top `k` with the stage's scores and signals). Cut 1 is the demo's own evaluation,
so cuts start at 2. Only requests whose truth was retrieved are episodes: a re-ranker cannot
move a truth that is not in its list.

Users: `users="train"` keeps only the users a model's held-out rule (`heldout_fraction`,
`seed`; `recsys.eval.instances.is_heldout`) does not hold out, so a ranker tuned on the file
is still measured on users it never saw (the demo's "never trained on" rows); "all" keeps
everyone. No user's last item is ever an episode's truth, so the demo's all-users rows stay
free of trained-on targets as well.

`users="heldout"` is the other side: only the held-out users, and cut 1 allowed. That file is
a test set, not training data: `recsys replay --episodes FILE --a retrieval --b MODEL`
measures a ranker against the order it re-ranks on exactly the requests the production
index serves users it never saw (docs/replay.md).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ranking.rl.episodes import Episode, episode_to_dict
from ranking.types import TASKS, RankRequest
from recsys.errors import UserError
from recsys.pipeline import Interactions
from retrieval.generator import GeneratorConfig

MAX_CUT = 50
MAX_K = 100  # the most candidates a request has (a prompt's labels)
MAX_HISTORY = 200
EPISODE_USERS = ("train", "all", "heldout")
REC_TASKS = tuple(t for t in TASKS if t.startswith("rec-"))  # a user's next item


@dataclass(frozen=True)
class IndexEpisodesOptions:
    out: Path
    data: Path | None = None  # a MovieLens folder, ingested first; None: the database's log
    index: GeneratorConfig = field(default_factory=GeneratorConfig)  # as the index is built
    cuts: tuple[int, ...] = (2, 3, 4, 5, 6)
    users: str = "train"  # one of EPISODE_USERS
    heldout_fraction: float = 0.35
    heldout_seed: int = 7
    task: str = "rec-movie"  # the requests' task (their prompt's wording), as `recsys batch`
    k: int = 20  # candidates retrieved per request
    history: int = 20  # history items a request shows
    embeddings: str = "minilm"  # recsys.pipeline.EMBEDDINGS
    progress: bool = True
    database_url: str | None = None
    artifact_dir: Path = Path("var/artifacts")

    def __post_init__(self) -> None:
        """Every option checked before the minutes of index builds (a UserError)."""
        from recsys.pipeline import EMBEDDINGS, check_ltr_options

        cuts = ",".join(map(str, self.cuts)) or "(none)"
        first = 1 if self.users == "heldout" else 2
        checks = [
            (bool(self.cuts) and all(first <= c <= MAX_CUT for c in self.cuts),
             f"--cuts {cuts}: give cuts from {first} to {MAX_CUT} (cut 1, each user's last "
             "item, is what the demo evaluates: only --users heldout, a test set, may use it)"),
            (len(set(self.cuts)) == len(self.cuts), f"--cuts {cuts}: each cut once"),
            (self.users in EPISODE_USERS,
             f"--users {self.users!r}: use one of {', '.join(EPISODE_USERS)}"),
            (0 < self.heldout_fraction < 1,
             f"--heldout-fraction {self.heldout_fraction}: use a share in (0, 1)"),
            (1 <= self.k <= MAX_K, f"--k {self.k}: use 1 to {MAX_K}"),
            (1 <= self.history <= MAX_HISTORY, f"--history {self.history}: use 1 to {MAX_HISTORY}"),
            (self.task in REC_TASKS,
             f"--task {self.task!r}: use a recommendation task, one of {', '.join(REC_TASKS)}"),
            (self.embeddings in EMBEDDINGS,
             f"unknown --embeddings {self.embeddings!r}; use one of {list(EMBEDDINGS)}"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        check_ltr_options(ltr=self.index.ltr, ltr_text=self.index.ltr_text,
                          ltr_bag=self.index.ltr_bag, embeddings=self.embeddings)  # fmt: skip


@dataclass(frozen=True)
class CutSummary:
    cut: int
    users: int  # users with a truth at this cut (after the users rule)
    episodes: int  # of them, those whose truth was retrieved
    seconds: float


def build_index_episodes(
    opts: IndexEpisodesOptions, echo: Callable[[str], None] = print
) -> list[CutSummary]:
    """Write the episodes of every cut to `opts.out` (whole or not at all); one summary per
    cut."""
    from ranking.folders import write_whole
    from recsys.db.engine import get_engine
    from recsys.db.migrate import ensure_schema
    from recsys.pipeline import ingest_dataset, make_embedder, training_data

    engine = get_engine(opts.database_url)
    ensure_schema(engine.url.render_as_string(hide_password=False))
    source = ingest_dataset(opts.data, engine, progress=opts.progress) if opts.data else None
    data = training_data(engine, source)
    embedder = make_embedder(opts.embeddings, opts.artifact_dir / "embedding-cache")
    lines: list[str] = []
    summaries = []
    for cut in opts.cuts:
        started = time.perf_counter()
        episodes, n_users = cut_episodes(data, cut, opts, embedder)
        lines += [_line(e) for e in episodes]
        summary = CutSummary(cut, n_users, len(episodes), round(time.perf_counter() - started, 1))
        summaries.append(summary)
        echo(f"cut {cut}: {summary.episodes} episodes (truth retrieved) of {summary.users} "
             f"users, {summary.seconds:.0f} s")  # fmt: skip
    if not lines:
        raise UserError("no episodes: no user's truth was retrieved at any cut")
    write_whole(opts.out, "".join(lines))
    return summaries


def cut_episodes(
    data: Interactions, cut: int, opts: IndexEpisodesOptions, embedder: Any
) -> tuple[list[Episode], int]:
    """The episodes of one cut (module doc), and how many users had a truth there."""
    from recsys.pipeline import build_index, leave_last_out, rank_requests, retrieve

    rows, targets = leave_last_out(data, cut)
    targets = {u: t for u, t in targets.items() if _kept(u, opts)}
    gen = build_index(data, rows, opts.index, embedder, progress=opts.progress)
    found = retrieve(gen, sorted(targets), opts.k)
    hits = {u: c for u, c in found.items() if targets[u] in {str(x.item) for x in c}}
    requests = rank_requests(gen, hits, data.titles, history=opts.history, task=opts.task,
                             job="index")  # fmt: skip
    episodes = [
        Episode(request=_named(req, cut), ground_truth=targets[user], user=user)
        for user, req in requests.items()
    ]
    return episodes, len(targets)


def _kept(user: str, opts: IndexEpisodesOptions) -> bool:
    from recsys.eval.instances import is_heldout

    if opts.users == "all":
        return True
    return is_heldout(user, opts.heldout_seed, opts.heldout_fraction) == (opts.users == "heldout")


def _named(request: RankRequest, cut: int) -> RankRequest:
    return dataclasses.replace(request, request_id=f"{request.request_id}-cut{cut}")


def _line(episode: Episode) -> str:
    return json.dumps(episode_to_dict(episode)) + "\n"
