"""`recsys replay`: offline A/B replay of two rankers on logged traffic, with a report."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("replay")
    def replay_cmd(
        a: str = typer.Option("logged", "--a", help="logged | retrieval | model spec"),
        b: str = typer.Option("default", "--b", help="logged | retrieval | model spec"),
        limit: int | None = typer.Option(None, help="at most this many logged requests"),
        window_days: float = typer.Option(7.0, help="an outcome counts within this many days"),
        mode: str = typer.Option("incremental", help="ranking mode for model policies"),
        off_policy: bool = typer.Option(
            True, help="IPS/SNIPS of B sampling at T=1 (needs logged propensities)"
        ),
        out: Path = typer.Option(Path("var/replay"), help="folder for report.md/json/png"),
        device: str | None = typer.Option(None, help="auto | cpu | cuda (RECSYS_DEVICE)"),
        url: str | None = typer.Option(None, "--url", help="database URL"),
    ) -> None:
        """Replay logged requests (impressions + the interaction that followed) through
        policies A and B; write a markdown report, JSON and a plot."""
        from datetime import timedelta

        from recsys.db.engine import get_engine
        from recsys.db.events import logged_requests
        from recsys.db.migrate import ensure_schema
        from recsys.replay.replay import (
            incremental_log_propensity,
            plot_report,
            rank_function,
            replay,
        )
        from recsys.training import episode_from_logged

        ensure_schema(url)
        records = logged_requests(
            window=timedelta(days=window_days), limit=limit, engine=get_engine(url)
        )
        logged = [episode_from_logged(r) for r in records]
        rank_a, _ = rank_function(a, logged, device=device, mode=mode)
        rank_b, backend_b = rank_function(b, logged, device=device, mode=mode)
        target = None
        if off_policy and backend_b is not None and hasattr(backend_b, "model"):
            target = incremental_log_propensity(backend_b)
        report = replay(logged, rank_a, rank_b, target_log_propensity=target)
        out.mkdir(parents=True, exist_ok=True)
        text = report.markdown(a, b)
        (out / "report.md").write_text(text + "\n\n![replay](replay.png)\n")
        (out / "report.json").write_text(
            json.dumps({"a": a, "b": b, **report.__dict__}, indent=2, default=str)
        )
        plot_report(report, a, b, str(out / "replay.png"))
        typer.echo(text)
        typer.echo(f"\nwritten: {out}/report.md, report.json, replay.png")
