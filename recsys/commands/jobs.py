"""`recsys jobs list|show`: background job runs (batch, train, ingest, rank) and their state."""

from __future__ import annotations

import json

import typer


def register(app: typer.Typer) -> None:
    jobs = typer.Typer(help="Background job runs recorded in job_runs.", no_args_is_help=True)

    @jobs.command("list")
    def list_(
        limit: int = typer.Option(20, help="newest N runs"),
        url: str | None = typer.Option(None, "--url", help="database URL"),
    ) -> None:
        from recsys.db.engine import get_engine
        from recsys.db.migrate import ensure_schema
        from recsys.db.runs import recent_job_runs
        from recsys.job_runs import lost_after_s, shown_status
        from recsys.settings import get_settings

        ensure_schema(url)
        lost_after = lost_after_s(get_settings().task_heartbeat_s)
        for run in recent_job_runs(limit, engine=get_engine(url)):
            started = f"{run.started_at:%Y-%m-%d %H:%M}" if run.started_at else "-"
            typer.echo(
                f"{run.id:>6} {run.kind:<12} {shown_status(run, after_s=lost_after):<10} "
                f"{run.progress * 100:5.1f}% {started}  {run.error or ''}".rstrip()
            )

    @jobs.command("show")
    def show(
        job_id: int,
        as_json: bool = typer.Option(False, "--json", help="the run's JSON only"),
        url: str | None = typer.Option(None, "--url", help="database URL"),
    ) -> None:
        """Print one run as JSON: parameters (to re-run it), result or error; then, for a
        loop turn, its replay report of the new ranker vs the old (--json: the JSON only)."""
        from dataclasses import asdict
        from pathlib import Path

        from recsys.db.engine import get_engine
        from recsys.db.migrate import ensure_schema
        from recsys.db.runs import job_run
        from recsys.job_runs import lost_after_s, shown_status
        from recsys.settings import get_settings

        ensure_schema(url)
        record = job_run(job_id, engine=get_engine(url))
        lost_after = lost_after_s(get_settings().task_heartbeat_s)
        run = {**asdict(record), "status": shown_status(record, after_s=lost_after)}
        typer.echo(json.dumps(run, indent=2, default=str))
        report = Path(str((record.result or {}).get("replay_report", "")))
        if not as_json and report.is_file():
            typer.echo(f"\n{report}:\n\n{report.read_text()}")

    app.add_typer(jobs, name="jobs")
