"""The nightly batch job: a fresh recommendation list for every user.

1. read every interaction from the database;
2. retrieval: load a registered index version (`index_version`), or retrain CF, embed the
   catalogue and build the FAISS indexes on all interactions and register the new version;
3. for this shard's users (a stable hash of the user id, so N workers split the work with
   no overlap), retrieve the top-K unseen items and re-rank them with IRanker;
4. write each chunk of users' lists to the run as soon as it is ranked.

A run id names one night's run (default `batch-YYYYMMDD`). Writing a user's list again in
the same run replaces it, and users already written are skipped, so a crashed or retried
job resumes where it stopped and never duplicates rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from recsys.errors import UserError
from recsys.progress import Progress

log = logging.getLogger(__name__)


@dataclass
class BatchConfig:
    run_id: str | None = None
    k: int = 20
    history: int = 20
    rerank: bool = True
    model: str | None = None  # None: the settings' (recsys.runtime)
    device: str | None = None
    batch_size: int | None = None
    chunk_users: int = 64
    shard: int = 0
    shards: int = 1
    limit_users: int | None = None
    index_version: str | None = None
    embeddings: str = "minilm"
    cf_factors: int = 64
    cf_epochs: int = 30
    ltr: bool = True  # a built index gets the LambdaMART stage (docs/retrieval.md)
    ltr_text: bool = False  # ... with its title-embedding features (docs/retrieval.md)
    ltr_bag: int = 1  # ... averaging this many LightGBM fits (docs/retrieval.md)
    next_source: bool = True  # a built index also fuses the `next` source (docs/retrieval.md)
    task: str = "rec-movie"
    artifact_dir: Path = Path("var/artifacts")
    progress: bool = True

    def __post_init__(self) -> None:
        self.artifact_dir = Path(self.artifact_dir)  # job parameters arrive as JSON strings
        from recsys.pipeline import check_ltr_options

        check_ltr_options(ltr=self.ltr, ltr_text=self.ltr_text, ltr_bag=self.ltr_bag,
                          embeddings=self.embeddings)  # fmt: skip


@dataclass
class BatchReport:
    run_id: str
    retrieval_version: str
    model_version: str | None
    users_in_shard: int
    users_written: int
    users_skipped: int  # already in this run (resumed) or without candidates
    timings: dict[str, float] = field(default_factory=dict)


def in_shard(user_id: str, shard: int, shards: int) -> bool:
    digest = hashlib.blake2b(user_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards == shard


def run_batch(
    config: BatchConfig,
    *,
    engine: Engine | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> BatchReport:
    """This shard's users, retrieved, re-ranked and written (module docstring). Progress
    over the users to do (recsys.progress): a bar or periodic lines on stderr when
    `config.progress`, and `on_progress(fraction)` (job_runs under Celery), throttled,
    increasing, 1.0 once every user is written."""
    from recsys.db import runs
    from recsys.db.engine import get_engine
    from recsys.pipeline import rank_requests, retrieve, training_data

    if not 0 <= config.shard < config.shards:
        raise UserError(f"shard {config.shard} is not in 0..{config.shards - 1}")
    engine = engine or get_engine()
    run_id = config.run_id or f"batch-{datetime.now(UTC):%Y%m%d}"
    data = training_data(engine, None)
    gen, version = _generator(config, data, engine)
    users = [u for u in gen.user_ids if in_shard(u, config.shard, config.shards)]
    users = users[: config.limit_users] if config.limit_users else users
    done = runs.users_in_run(run_id, engine=engine)
    todo = [u for u in users if u not in done]
    ranker = _ranker(config, engine) if config.rerank and todo else None
    model_version = ranker.model_id if ranker else f"retrieval:{version}"
    written = 0
    stage = "batch re-rank" if ranker is not None else "batch retrieval"
    # one user is one unit: done when re-ranked (as each model batch finishes), or when
    # retrieved if it is not re-ranked (no candidates, or --no-rerank)
    with Progress(len(todo), stage, "users", show=config.progress, report=on_progress) as progress:
        for start in range(0, len(todo), config.chunk_users):
            chunk = todo[start : start + config.chunk_users]
            candidates = retrieve(gen, chunk, config.k)
            lists = {
                u: [(str(c.item), float(c.score)) for c in cands]
                for u, cands in candidates.items()
                if cands
            }
            ranked = 0
            if ranker is not None and lists:
                requests = rank_requests(gen, candidates, data.titles, history=config.history,
                                         task=config.task, job="batch")  # fmt: skip
                results = ranker.rank_batch(list(requests.values()), on_ranked=progress.update)
                for user, result in zip(requests, results, strict=True):
                    score = dict(lists[user])
                    lists[user] = [(item, score[item]) for item in result.order]
                ranked = len(requests)
            progress.update(len(chunk) - ranked)
            runs.write_recommendations(run_id, lists, model_version=model_version, engine=engine)
            written += len(lists)
            log.info("batch %s: %d/%d users written", run_id, written, len(todo))
    return BatchReport(
        run_id=run_id,
        retrieval_version=version,
        model_version=model_version,
        users_in_shard=len(users),
        users_written=written,
        users_skipped=len(users) - written,
    )


def _generator(config: BatchConfig, data: Any, engine: Engine):  # type: ignore[no-untyped-def]
    """Load the requested index version, or build one on all interactions and register it."""
    from recsys.db.registry import register_model
    from recsys.pipeline import build_index, make_embedder, production_index_config
    from recsys.registry import sha256_of
    from retrieval.artifacts import ArtifactStore, new_version
    from retrieval.generator import CandidateGenerator

    store = ArtifactStore(config.artifact_dir)
    embedder = make_embedder(config.embeddings, config.artifact_dir / "embedding-cache")
    if config.index_version:
        gen = CandidateGenerator.load(store, config.index_version, embedder=embedder)
        return gen, config.index_version
    index_config = production_index_config(
        cf_factors=config.cf_factors,
        cf_epochs=config.cf_epochs,
        ltr=config.ltr,
        ltr_text=config.ltr_text,
        ltr_bag=config.ltr_bag,
        next_source=config.next_source,
    )
    everything = range(len(data.users))
    gen = build_index(data, everything, index_config, embedder, progress=config.progress)
    version = new_version()
    artifact = gen.save(store, version, meta={"job": "batch"})
    register_model(
        "index",
        version,
        str(artifact.path.resolve()),
        sha256=sha256_of(artifact.path),
        metrics={"users": len(gen.user_ids), "items": len(gen.item_ids)},
        engine=engine,
    )
    return gen, version


def build_index(config: BatchConfig, *, engine: Engine | None = None) -> str:
    """Build the retrieval index on every interaction in the database and register it; the
    version returned is what each shard of a fanned-out batch then loads."""
    from recsys.db.engine import get_engine
    from recsys.pipeline import training_data

    engine = engine or get_engine()
    _, version = _generator(dataclasses.replace(config, index_version=None),
                            training_data(engine, None), engine)  # fmt: skip
    return version


def _ranker(config: BatchConfig, engine: Engine):  # type: ignore[no-untyped-def]
    """The ranker, or None when it is served at the retrieval order (the zero-shot default):
    its lists would be the retrieval order, so it is neither loaded nor called."""
    from recsys import runtime

    options = dict(model=config.model, device=config.device, batch_size=config.batch_size)
    served = runtime.served_ranker(engine=engine, **options)
    if served.follows_retrieval:
        log.info("ranker %r is served at the retrieval order: not loaded", served.resolved.model)
        return None
    return runtime.load_ranker(engine=engine, served=served, **options)
