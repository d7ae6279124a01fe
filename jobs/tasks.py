"""Celery tasks, shared by every Celery app (the default one in jobs.celery_app, or one a
test or embedding program builds with `make_celery`). Each is a thin, tracked wrapper over
a recsys function: the job_runs table records parameters, progress, heartbeats, result or
error, so a failed job can be inspected and re-run, and a job whose worker died is seen as
lost and runs again (recsys.job_runs).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from celery import chord, group, shared_task

import jobs.celery_app  # noqa: F401  (the default app: broker and schedule from settings)
from recsys import job_runs

log = logging.getLogger(__name__)


def tracked(kind: str) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    """Record a task's run in job_runs, with a heartbeat while it runs; the wrapped
    function gets `report(progress)`, as `task_id` the Celery task id (stable across
    redeliveries: what a resumed run keys its checkpoints on) and, as `inputs`, what a
    chord hands its callback (the results of the group)."""

    def wrap(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        @functools.wraps(fn)
        def run(self, *inputs: Any, **params: Any) -> dict[str, Any]:  # type: ignore[no-untyped-def]
            from recsys.db.engine import get_engine
            from recsys.db.migrate import ensure_schema
            from recsys.settings import get_settings

            ensure_schema()
            engine, beat = get_engine(), get_settings().task_heartbeat_s
            task_id = self.request.id
            try:
                job_id = job_runs.start_job(
                    kind,
                    params,
                    task_id=task_id,
                    engine=engine,
                    lost_after_s=job_runs.lost_after_s(beat),
                )
            except job_runs.AlreadyDone as exc:  # a duplicate delivery: nothing left to do
                log.warning("%s", exc)
                return {"duplicate": str(exc)}
            except job_runs.AlreadyRunning as exc:  # alive, or died a moment ago: look again
                log.warning("%s; trying again later", exc)
                raise self.retry(
                    countdown=job_runs.lost_after_s(beat) + beat, max_retries=None
                ) from exc
            try:
                with job_runs.Heartbeat(job_id, engine=engine, every_s=beat):
                    result = fn(
                        report=lambda p: job_runs.set_progress(job_id, p, engine=engine),
                        task_id=task_id,
                        **params,
                        **({"inputs": list(inputs)} if inputs else {}),
                    )
            except Exception as exc:
                job_runs.fail_job(job_id, f"{type(exc).__name__}: {exc}", engine=engine)
                raise
            job_runs.finish_job(job_id, result, engine=engine)
            return {"job_id": job_id, **result}

        return run

    return wrap


@shared_task(bind=True, name="jobs.tasks.ingest_file")
@tracked("ingest")
def ingest_file(
    report, task_id: str, path: str, fmt: str = "auto", skip_bad: bool = False
) -> dict[str, Any]:
    """Load a file of interactions (idempotent: a retried ingest adds nothing twice)."""
    from recsys.ingest import ingest

    return ingest(path, fmt, skip_bad=skip_bad, progress=False).to_dict()


@shared_task(bind=True, name="jobs.tasks.rank_requests")
@tracked("rank")
def rank_requests(report, task_id: str, in_path: str, out_path: str, model: str = "") -> dict:
    """Rank a JSONL file of requests into a JSONL file of results (written atomically)."""
    from recsys import runtime
    from recsys.rank_file import rank_file

    ranker = runtime.load_ranker(model=model or None)
    n = rank_file(in_path, out_path, ranker, on_progress=report)
    return {"ranked": n, "out_path": out_path}


@shared_task(bind=True, name="jobs.tasks.batch_recommendations")
@tracked("batch")
def batch_recommendations(report, task_id: str, **options: Any) -> dict[str, Any]:
    """`recsys batch` with BatchConfig options (shard=I, shards=N split the users). A run
    resumes: users already written in `run_id` are skipped, so a redelivered shard finishes
    the lost run's work instead of repeating it."""
    from dataclasses import asdict

    from recsys.batch import BatchConfig, run_batch
    from recsys.settings import get_settings

    # ranking options left out come from the settings (recsys.runtime), as on the CLI
    options.setdefault("artifact_dir", get_settings().resolved_artifact_dir)
    options.setdefault("progress", False)
    result = run_batch(BatchConfig(**options), on_progress=report)
    return asdict(result)


@shared_task(bind=True, name="jobs.tasks.nightly_batch")
@tracked("batch-fanout")
def nightly_batch(report, task_id: str, shards: int = 1, **options: Any) -> dict[str, Any]:
    """Build and register the retrieval index once, then run `shards` batch shards as a
    group on every worker; a chord callback records the run when all are done."""
    signatures = fan_out(shards, **options)
    chord(signatures["shards"])(signatures["done"])
    return {
        "index_version": signatures["index_version"],
        "run_id": signatures["run_id"],
        "shards": shards,
    }


def fan_out(shards: int, **options: Any) -> dict[str, Any]:
    """The index built now, and the shard and callback signatures that use it."""
    from datetime import UTC, datetime

    from recsys.batch import BatchConfig, build_index
    from recsys.errors import UserError
    from recsys.settings import get_settings

    if not 1 <= shards <= 1024:
        raise UserError(f"shards must be in 1..1024, got {shards}")
    options.setdefault("artifact_dir", str(get_settings().resolved_artifact_dir))
    options.setdefault("run_id", f"batch-{datetime.now(UTC):%Y%m%d}")
    config = BatchConfig(**{**options, "progress": False})
    version = build_index(config)
    shard_options = {**options, "index_version": version, "shards": shards}
    parts = group(batch_recommendations.si(**shard_options, shard=i) for i in range(shards))
    done = batch_finished.s(run_id=options["run_id"], index_version=version)
    return {"shards": parts, "done": done, "index_version": version, "run_id": options["run_id"]}


def fan_out_here(shards: int, **options: Any) -> dict[str, Any]:
    """The same fan-out without a broker: the shards one after another in this process,
    then the callback (`recsys batch --shards N` when RECSYS_BROKER_URL is unset)."""
    signatures = fan_out(shards, **options)
    results = [shard.apply().get() for shard in signatures["shards"].tasks]
    return signatures["done"].apply(args=(results,)).get()


@shared_task(bind=True, name="jobs.tasks.batch_finished")
@tracked("batch-done")
def batch_finished(
    report, task_id: str, inputs: list[list[dict[str, Any]]], run_id: str, index_version: str
) -> dict[str, Any]:
    """The chord's callback: one row saying the whole fanned-out run is done."""
    shard_results = inputs[0]
    written = sum(int(r.get("users_written", 0)) for r in shard_results)
    skipped = sum(int(r.get("users_skipped", 0)) for r in shard_results)
    return {
        "run_id": run_id,
        "index_version": index_version,
        "shards": len(shard_results),
        "users_written": written,
        "users_skipped": skipped,
    }


@shared_task(bind=True, name="jobs.tasks.train_ranker")
@tracked("train")
def train_ranker(report, task_id: str, **options: Any) -> dict[str, Any]:
    """RL fine-tuning (`recsys train`); by default on the traffic the API logged. Its
    progress (episodes trained and validated) goes to job_runs."""
    from recsys.training import TrainingOptions, run_training

    options.setdefault("source", "db")
    return run_training(TrainingOptions(**options), report=report)


@shared_task(bind=True, name="jobs.tasks.improve_ranker")
@tracked("loop")
def improve_ranker(report, task_id: str, **options: Any) -> dict[str, Any]:
    """One turn of the closed loop (recsys.loop): fine-tune on the traffic since the
    promoted version, gate, promote when allowed, replay new vs old. A redelivered turn
    resumes its training run from its checkpoint (the run is named after the task)."""
    from recsys.db.engine import get_engine
    from recsys.loop import LoopConfig, improve
    from recsys.settings import get_settings

    settings = get_settings()
    options.setdefault("run_name", f"loop-{(task_id or 'local')[:12]}")
    config = LoopConfig.from_settings(settings, **options)
    return improve(config, settings=settings, engine=get_engine(), report=report)


@shared_task(bind=True, name="jobs.tasks.prune")
@tracked("prune")
def prune(report, task_id: str) -> dict[str, Any]:
    """`recsys prune --apply` with the settings' retention (recsys.retention): beat runs it
    weekly. Safe to redeliver: a second run finds less, or nothing, to delete."""
    from recsys.db.engine import get_engine
    from recsys.retention import Folders, RetentionPolicy, apply_prune, plan_prune
    from recsys.settings import get_settings

    settings = get_settings()
    folders = Folders.of(settings)
    engine = get_engine()
    plan = plan_prune(RetentionPolicy.from_settings(settings), engine=engine, folders=folders)
    return apply_prune(plan, engine=engine, folders=folders)
