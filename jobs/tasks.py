"""Celery tasks, shared by every Celery app (the default one in jobs.celery_app, or one a
test or embedding program builds with `make_celery`). Each is a thin, tracked wrapper over
a recsys function: the job_runs table records parameters, progress, result or error, so a
failed job can be inspected and re-run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from celery import shared_task

import jobs.celery_app  # noqa: F401  (the default app: broker and schedule from settings)
from recsys import job_runs


def tracked(kind: str) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    """Record a task's run in job_runs; the wrapped function gets `report(progress)`."""

    def wrap(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        @functools.wraps(fn)
        def run(self, **params: Any) -> dict[str, Any]:  # type: ignore[no-untyped-def]
            from recsys.db.engine import get_engine
            from recsys.db.migrate import ensure_schema

            ensure_schema()
            engine = get_engine()
            job_id = job_runs.start_job(kind, params, task_id=self.request.id, engine=engine)
            try:
                result = fn(
                    report=lambda p: job_runs.set_progress(job_id, p, engine=engine), **params
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
def ingest_file(report, path: str, fmt: str = "auto", skip_bad: bool = False) -> dict[str, Any]:
    """Load a file of interactions (idempotent: a retried ingest adds nothing twice)."""
    from recsys.ingest import ingest

    return ingest(path, fmt, skip_bad=skip_bad, progress=False).to_dict()


@shared_task(bind=True, name="jobs.tasks.rank_requests")
@tracked("rank")
def rank_requests(report, in_path: str, out_path: str, model: str = "") -> dict[str, Any]:
    """Rank a JSONL file of requests into a JSONL file of results (written atomically)."""
    from recsys import runtime
    from recsys.rank_file import rank_file

    ranker = runtime.load_ranker(model=model or None)
    n = rank_file(in_path, out_path, ranker, on_progress=report)
    return {"ranked": n, "out_path": out_path}


@shared_task(bind=True, name="jobs.tasks.batch_recommendations")
@tracked("batch")
def batch_recommendations(report, **options: Any) -> dict[str, Any]:
    """The nightly job: `recsys batch` with BatchConfig options (shard="I/N" splits users)."""
    from dataclasses import asdict

    from recsys.batch import BatchConfig, run_batch
    from recsys.settings import get_settings

    # ranking options left out come from the settings (recsys.runtime), as on the CLI
    options.setdefault("artifact_dir", get_settings().resolved_artifact_dir)
    result = run_batch(BatchConfig(**options), on_progress=report)
    return asdict(result)


@shared_task(bind=True, name="jobs.tasks.train_ranker")
@tracked("train")
def train_ranker(report, **options: Any) -> dict[str, Any]:
    """RL fine-tuning (`recsys train`); by default on the traffic the API logged."""
    from recsys.training import TrainingOptions, run_training

    options.setdefault("source", "db")
    return run_training(TrainingOptions(**options))
