"""Simulated live traffic: a data set's held-out interactions played against the serving
policy, so that a fresh install has logged impressions and outcomes to train and replay on.

For each held-out interaction (user u chose item i), in time order:

1. `POST /v1/recommend {user_id: u, k, temperature, seed}` — the served answer is logged as
   impressions with the ranking's propensity, exactly as for a real client;
2. the click model decides what u did with the answer; what u did is posted to
   `POST /v1/events` (idempotent by event id, so re-running a simulation stores no event
   twice), stamped with the time of the click, so that the impression it followed joins it
   (`recsys.db.events.logged_requests`).

Click models:

* `next-item` — u's real next item counts as the click when it was shown (kind `click`);
  when it was not, u still consumed it elsewhere (kind `interaction`), as the log says.
* `position` — a position-based model: a shown item at 0-based position p is examined with
  probability 1/log2(p + 2) and then clicked; an item not shown, or not examined, is not
  consumed at all (the simulated world departs from the log).

Played in process (the app built from the settings, served through its ASGI interface) or
against a running server (`--api URL`): the same requests either way.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl

from recsys.errors import UserError

MAX_REQUESTS = 1_000_000


@dataclass(frozen=True)
class HeldOut:
    """One interaction the database has not seen: what the simulation plays."""

    user_id: str
    item_id: str
    timestamp: datetime


class Client(Protocol):
    """What the simulation needs of an HTTP client (httpx.Client, starlette's TestClient)."""

    def post(self, url: str, *, json: Any) -> Any: ...


# ---------------------------------------------------------------- click models


class ClickModel(ABC):
    name: str

    @abstractmethod
    def click(self, item: str, shown: Sequence[str], rng: np.random.Generator) -> str | None:
        """The event kind u posts for `item` after seeing `shown` (None: nothing happens)."""


class NextItemClicks(ClickModel):
    """The logged next item is the click when shown; consumed anyway when not."""

    name = "next-item"

    def click(self, item: str, shown: Sequence[str], rng: np.random.Generator) -> str | None:
        return "click" if item in shown else "interaction"


class PositionClicks(ClickModel):
    """Position-based: examined with probability 1/log2(position + 2), clicked if examined."""

    name = "position"

    def click(self, item: str, shown: Sequence[str], rng: np.random.Generator) -> str | None:
        if item not in shown:
            return None
        examined = 1.0 / math.log2(list(shown).index(item) + 2)
        return "click" if rng.random() < examined else None


CLICK_MODELS: dict[str, type[ClickModel]] = {m.name: m for m in (NextItemClicks, PositionClicks)}


# ---------------------------------------------------------------- held-out traffic


def held_out_interactions(
    path: Path,
    *,
    since: datetime,
    fmt: str = "auto",
    users: int | None = None,
    limit: int | None = None,
    per_user: int | None = None,
    seed: int = 7,
) -> list[HeldOut]:
    """The interactions at or after `since` (those `recsys ingest --until` left out), in time
    order; `users` keeps a seeded sample of the users, `per_user` each user's first N (a
    few heavy users would otherwise be all of the first interactions), `limit` the first N
    interactions of what is left."""
    from recsys.db.events import epoch_micros
    from recsys.ingest import open_source
    from recsys.ingest_formats import ColumnMap

    cutoff = epoch_micros(since)
    source = open_source(Path(path), fmt, ColumnMap())
    parts = [
        chunk.filter(pl.col("error").is_null() & (pl.col("ts_us") >= cutoff)).select(
            "user", "item", "ts_us"
        )
        for chunk in source.chunks
    ]
    frame = pl.concat(parts).sort("ts_us", "user", "item") if parts else None
    if frame is None or frame.height == 0:
        raise UserError(
            f"{path} has no interactions at or after {since:%Y-%m-%d %H:%M}: pick an earlier "
            "--since (the date `recsys ingest --until` used)"
        )
    if users is not None:
        everyone = sorted(set(frame["user"].to_list()))
        rng = np.random.default_rng(seed)
        keep = rng.choice(everyone, size=min(users, len(everyone)), replace=False).tolist()
        frame = frame.filter(pl.col("user").is_in(keep))
    if per_user is not None:
        frame = frame.filter(pl.int_range(pl.len()).over("user") < per_user)
    if limit is not None:
        frame = frame.head(limit)
    return [
        HeldOut(u, i, datetime.fromtimestamp(us / 1_000_000, UTC)) for u, i, us in frame.iter_rows()
    ]


# ---------------------------------------------------------------- the loop


@dataclass(frozen=True)
class SimulationConfig:
    k: int = 20
    temperature: float = 1.0  # > 0: the served ranking is a draw, so replay can reweight it
    mode: str = "incremental"
    click_model: str = "next-item"
    deadline_ms: float | None = None
    seed: int = 7
    source: str = "simulate"  # part of every event id
    concurrency: int = 8  # clients at once (each user's requests stay in order)

    def __post_init__(self) -> None:
        if self.click_model not in CLICK_MODELS:
            raise UserError(
                f"unknown click model {self.click_model!r}; use one of {', '.join(CLICK_MODELS)}"
            )
        if not 1 <= self.k <= 100:
            raise UserError(f"k must be in 1..100, got {self.k}")
        if not 1 <= self.concurrency <= 64:
            raise UserError(f"concurrency must be in 1..64, got {self.concurrency}")


@dataclass
class SimulationReport:
    requests: int = 0
    answered: int = 0
    shown: int = 0  # answers that contained the user's real next item
    clicks: int = 0
    events_stored: int = 0
    reciprocal_rank_sum: float = 0.0
    fallbacks: int = 0
    cold_start: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # HTTP status -> count
    models: dict[str, int] = field(default_factory=dict)  # served model -> answers
    seconds: float = 0.0

    @property
    def mrr(self) -> float:
        """Mean reciprocal rank of the real next item in the served lists (0 when absent)."""
        return self.reciprocal_rank_sum / self.answered if self.answered else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mrr": round(self.mrr, 4)}

    def summary(self) -> str:
        rate = self.requests / self.seconds if self.seconds else 0.0
        lines = [
            f"{self.requests} requests in {self.seconds:.1f} s ({rate:.2f}/s): "
            f"{self.answered} answered, next item shown in {self.shown}, {self.clicks} clicks, "
            f"MRR of the next item {self.mrr:.4f}",
            f"  {self.fallbacks} fallbacks, {self.cold_start} cold-start answers, "
            f"{self.events_stored} events stored; served by "
            + ", ".join(f"{m} ({n})" for m, n in self.models.items()),
        ]
        if self.errors:
            lines.append("  errors: " + ", ".join(f"HTTP {s}: {n}" for s, n in self.errors.items()))
        return "\n".join(lines)


def simulate(
    client: Client,
    traffic: Sequence[HeldOut],
    config: SimulationConfig,
    *,
    progress: bool = True,
) -> SimulationReport:
    """Play `traffic` through `client`; see the module docstring. Users are spread over
    `config.concurrency` lanes that run at once (so the server's micro-batcher sees
    concurrent requests, as in production); each user's interactions stay in order."""
    if len(traffic) > MAX_REQUESTS:
        raise UserError(f"{len(traffic)} requests: at most {MAX_REQUESTS:,} per simulation")
    lanes: list[list[tuple[int, HeldOut]]] = [[] for _ in range(config.concurrency)]
    for n, held in enumerate(traffic):
        lanes[_lane(held.user_id, config.concurrency)].append((n, held))
    report, bar = SimulationReport(), _bar(len(traffic), progress)
    lock = threading.Lock()
    started = time.perf_counter()

    def play(lane: int) -> None:
        clicks = CLICK_MODELS[config.click_model]()
        rng = np.random.default_rng([config.seed, lane])
        for n, held in lanes[lane]:
            outcome = _play_one(client, held, config, n, clicks, rng)
            with lock:
                _count(report, held, outcome)
                bar.update(1)

    with ThreadPoolExecutor(config.concurrency) as pool:
        for done in [pool.submit(play, lane) for lane in range(config.concurrency)]:
            done.result()
    bar.close()
    report.seconds = round(time.perf_counter() - started, 2)
    return report


@dataclass(frozen=True)
class _Outcome:
    status: int
    body: dict[str, Any]
    kind: str | None = None
    stored: int = 0


def _play_one(client: Client, held: HeldOut, config: SimulationConfig, n: int,
              clicks: ClickModel, rng: np.random.Generator) -> _Outcome:  # fmt: skip
    answer = client.post("/v1/recommend", json=_recommend_body(held, config, n))
    if answer.status_code != 200:
        return _Outcome(answer.status_code, {})
    body = answer.json()
    kind = clicks.click(held.item_id, [item["id"] for item in body["items"]], rng)
    stored = _post_event(client, held, kind, config.source) if kind is not None else 0
    return _Outcome(200, body, kind, stored)


def _lane(user_id: str, lanes: int) -> int:
    digest = hashlib.blake2b(user_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % lanes


def _recommend_body(held: HeldOut, config: SimulationConfig, n: int) -> dict[str, Any]:
    body: dict[str, Any] = {"user_id": held.user_id, "k": config.k, "mode": config.mode,
                            "temperature": config.temperature, "seed": config.seed + n}  # fmt: skip
    if config.deadline_ms is not None:
        body["deadline_ms"] = config.deadline_ms
    return body


def _count(report: SimulationReport, held: HeldOut, outcome: _Outcome) -> None:
    report.requests += 1
    if outcome.status != 200:
        report.errors[str(outcome.status)] = report.errors.get(str(outcome.status), 0) + 1
        return
    body = outcome.body
    report.answered += 1
    report.fallbacks += bool(body.get("fallback"))
    report.cold_start += bool(body.get("cold_start"))
    model = body.get("model") or f"retrieval:{body.get('index_version')}"
    report.models[model] = report.models.get(model, 0) + 1
    shown = [item["id"] for item in body["items"]]
    if held.item_id in shown:
        report.shown += 1
        report.reciprocal_rank_sum += 1.0 / (shown.index(held.item_id) + 1)
    report.clicks += outcome.kind == "click"
    report.events_stored += outcome.stored


def _post_event(client: Client, held: HeldOut, kind: str, source: str) -> int:
    """Stamped now (just after the impression it follows); the id names the logged event,
    so a re-run simulation posts the same ids and the service stores each once."""
    event_id = f"{source}:{held.user_id}:{held.item_id}:{int(held.timestamp.timestamp())}"
    event = {"event_id": event_id[:255], "user_id": held.user_id, "item_id": held.item_id,
             "kind": kind, "timestamp": time.time()}  # fmt: skip
    answer = client.post("/v1/events", json={"events": [event]})
    if answer.status_code != 200:
        raise UserError(f"/v1/events refused a simulated event: {answer.text[:300]}")
    return int(answer.json()["stored"])


def _bar(total: int, enabled: bool):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    return tqdm(total=total, desc="simulated requests", unit="req", disable=not enabled)
