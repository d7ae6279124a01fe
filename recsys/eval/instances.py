"""The shape of an evaluation task: `Instance`, `TaskSet`, the held-out user folds, the
seeded per-key generators and the task file format (recsys.eval.tasks builds tasks)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ranking.types import Candidate, RankRequest
from recsys import datasets
from recsys.errors import UserError

HISTORY_LEN = 20
N_NEGATIVES = 19
PASSAGE_DRAWS = 5
TIE_BREAKS = ("file", "item-id")
ROUTER_WEIGHTS = {
    "router-perf": (1.0, 0.0),
    "router-balance": (0.5, 0.5),
    "router-cost": (0.2, 0.8),
}


@dataclass(frozen=True)
class Instance:
    """One thing to rank and its truth. `relevance` maps candidate id -> grade (> 0 is
    relevant); single-target tasks have exactly one positive grade."""

    id: str
    task: str  # the evaluation task, e.g. "passage-5"
    request_task: str  # RankRequest.task, e.g. "passage"
    candidates: tuple[Candidate, ...]
    relevance: dict[str, float]
    history: tuple[str, ...] = ()  # titles, oldest first
    history_ids: tuple[str, ...] = ()
    query: str | None = None
    user_id: str | None = None
    group: str | None = None  # e.g. the TREC query id

    @property
    def target(self) -> str:
        """The most relevant candidate (the ground truth of single-target tasks)."""
        return max(self.relevance, key=lambda cid: (self.relevance[cid], cid))

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.candidates]

    def to_request(self, mode: str = "incremental", **fields: Any) -> RankRequest:
        return RankRequest(
            task=self.request_task,
            candidates=self.candidates,
            history=self.history,
            history_ids=self.history_ids,
            query=self.query,
            mode=mode,  # type: ignore[arg-type]
            request_id=self.id,
            **fields,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Instance:
        data = dict(data)
        data["candidates"] = tuple(Candidate(**c) for c in data["candidates"])
        for key in ("history", "history_ids"):
            data[key] = tuple(data.get(key) or ())
        return cls(**data)


@dataclass
class TaskSet:
    """The instances of one task, what was left out (reason -> count) and how it was built.
    `train` (rec tasks) is every interaction except the evaluated targets, time-ordered,
    for the baselines that learn from data; `train_queries` (router tasks) the training
    queries' utilities (`router_pool`), for the router baselines."""

    name: str
    instances: list[Instance]
    skipped: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    train: pl.DataFrame | None = None
    metric: str = "mrr"  # the headline metric: "mrr" or "ndcg@10"
    catalogue: dict[str, str] | None = None  # rec tasks: item id -> title
    genres: dict[str, str] | None = None  # rec tasks with genres: item id -> "A|B"
    train_queries: pl.DataFrame | None = None  # router tasks: id, question, llm, utility, split

    def limited(self, limit: int | None, seed: int) -> TaskSet:
        """A seeded random subset of `limit` instances (all when limit is None)."""
        if limit is None or limit >= len(self.instances):
            return self
        if limit < 1:
            raise UserError(f"--limit must be >= 1, got {limit}")
        pick = np.random.default_rng(seed).permutation(len(self.instances))[:limit]
        chosen = [self.instances[i] for i in sorted(pick)]
        info = {**self.info, "limit": limit, "of": len(self.instances)}
        return dataclasses.replace(self, instances=chosen, info=info)


HELDOUT_FRACTION = 0.35  # share of users kept out of every training run (>= 300 on rec-movie)
USER_SPLITS = ("all", "heldout", "train")


def user_fold(user: str, seed: int) -> float:
    """A user's place in [0, 1), from a seeded hash: the same split as
    `ranking.rl.episodes.split_by_user`, stable as users are added."""
    digest = hashlib.sha256(f"{seed}:{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_heldout(user: str, seed: int, fraction: float = HELDOUT_FRACTION) -> bool:
    return user_fold(user, seed) < fraction


def for_users(taskset: TaskSet, which: str, seed: int) -> TaskSet:
    """The instances of held-out users (never trained on by `recsys train-ranker` with the
    same seed), of the training users, or all."""
    if which not in USER_SPLITS:
        raise UserError(f"--users must be one of {list(USER_SPLITS)}, got {which!r}")
    if which == "all":
        return taskset
    if taskset.train is None:
        raise UserError(f"--users {which} applies to rec tasks (users), not {taskset.name!r}")
    keep = [
        i for i in taskset.instances if is_heldout(str(i.user_id), seed) == (which == "heldout")
    ]
    info = {**taskset.info, "users": which, "heldout_fraction": HELDOUT_FRACTION}
    return dataclasses.replace(taskset, instances=keep, info=info)


def rng_for(seed: int, key: str) -> np.random.Generator:
    """A generator that depends only on the seed and one key (a user, a query), so an
    instance does not change when other users or queries are added or removed."""
    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])


def write_task_file(taskset: TaskSet, path: str | Path) -> None:
    """JSON lines: a header (task, counts, info), then one instance per line."""
    header = {"task": taskset.name, "skipped": taskset.skipped, "info": taskset.info}
    lines = [json.dumps(header, sort_keys=True, ensure_ascii=False)]
    lines += [
        json.dumps(i.to_dict(), sort_keys=True, ensure_ascii=False) for i in taskset.instances
    ]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_task_file(path: str | Path) -> TaskSet:
    rows = [json.loads(line) for line in Path(path).read_text("utf-8").splitlines() if line]
    if not rows or "task" not in rows[0]:
        raise UserError(f"{path}: not a task file (the first line must be its header)")
    header = rows[0]
    return TaskSet(
        header["task"], [Instance.from_dict(r) for r in rows[1:]], header["skipped"], header["info"]
    )


def read_json(path: Path) -> Any:
    datasets.read_lines(path)  # missing / empty / not UTF-8 -> a clear error
    try:
        return json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg})") from None
