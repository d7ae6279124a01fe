"""`recsys simulate DATA --since DATE`: play a data set's held-out interactions as live
traffic against the serving policy (recsys.simulate), logging impressions and events."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("simulate")
    def simulate_cmd(
        data: Path = typer.Argument(..., help="the data set `recsys ingest --until` loaded"),
        since: datetime = typer.Option(
            ...,
            formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"],
            help="play the interactions at or after this UTC date (the ingest's --until)",
        ),
        fmt: str = typer.Option("auto", "--format", "-f", help="as for `recsys ingest`"),
        requests: int | None = typer.Option(None, min=1, help="at most this many requests"),
        users: int | None = typer.Option(None, min=1, help="a seeded sample of this many users"),
        per_user: int | None = typer.Option(
            None, "--per-user", min=1, help="at most this many requests per user (their first)"
        ),
        k: int = typer.Option(20, min=1, max=100, help="items per answer"),
        temperature: float = typer.Option(
            1.0, min=0, max=10, help="> 0: served rankings are draws (replay can reweight them)"
        ),
        clicks: str = typer.Option("next-item", help="click model: next-item | position"),
        mode: str = typer.Option("incremental", help="ranking mode"),
        deadline_ms: float | None = typer.Option(None, help="per-request deadline"),
        seed: int = typer.Option(7, help="seeds the user sample, the draws and the clicks"),
        concurrency: int = typer.Option(8, min=1, max=64, help="clients at once"),
        api: str | None = typer.Option(None, help="a running server's URL; default in process"),
        api_key: str | None = typer.Option(None, envvar="RECSYS_API_KEY", help="its API key"),
        report_json: Path | None = typer.Option(None, "--report", help="write the report here"),
        progress: bool = typer.Option(True, help="show a progress bar"),
    ) -> None:
        """Each held-out interaction becomes a /v1/recommend call (logged as impressions with
        its propensity) and, per the click model, a /v1/events call."""
        from recsys.simulate import SimulationConfig, held_out_interactions, simulate

        config = SimulationConfig(
            k=k,
            temperature=temperature,
            mode=mode,
            click_model=clicks,
            deadline_ms=deadline_ms,
            seed=seed,
            concurrency=concurrency,
        )
        traffic = held_out_interactions(
            data,
            since=since.replace(tzinfo=UTC),
            fmt=fmt,
            users=users,
            limit=requests,
            per_user=per_user,
            seed=seed,
        )
        typer.echo(
            f"{len(traffic)} held-out interactions of {len({h.user_id for h in traffic})} "
            f"users to play",
            err=True,
        )
        with _client(api, api_key) as client:
            report = simulate(client, traffic, config, progress=progress)
        typer.echo(report.summary())
        if report_json:
            report_json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")


def _client(api: str | None, api_key: str | None):  # type: ignore[no-untyped-def]
    """A client for a running server, or the app built from the settings, in process."""
    if api:
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        return httpx.Client(base_url=api, headers=headers, timeout=120)
    from fastapi.testclient import TestClient

    from recsys.api import create_app
    from recsys.db.migrate import ensure_schema
    from recsys.settings import get_settings

    settings = get_settings().model_copy(update={"require_api_key": False, "reload_poll_s": 0})
    ensure_schema(settings.resolved_database_url)
    return TestClient(create_app(settings=settings))
