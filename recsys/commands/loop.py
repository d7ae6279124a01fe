"""`recsys loop`: one turn of the closed loop now (recsys.loop), as the schedule runs it."""

from __future__ import annotations

import json

import typer


def register(app: typer.Typer) -> None:
    @app.command("loop")
    def loop_cmd(
        min_requests: int | None = typer.Option(
            None, min=1, help="logged requests a turn needs (RECSYS_LOOP_MIN_REQUESTS)"
        ),
        steps: int | None = typer.Option(None, min=0, help="optimizer steps (RECSYS_LOOP_STEPS)"),
        lr: float | None = typer.Option(None, help="learning rate (RECSYS_LOOP_LR)"),
        promote: bool | None = typer.Option(
            None,
            "--promote/--no-promote",
            help="promote when the gate passes (RECSYS_AUTO_PROMOTE)",
        ),
        replay: bool = typer.Option(True, help="write a replay report of new vs old"),
        device: str | None = typer.Option(None, help="auto | cpu | cuda"),
        progress: bool = typer.Option(
            True, help="training and replay progress on stderr (bar, or a line every 30 s)"
        ),
    ) -> None:
        """Fine-tune on the traffic since the promoted version, gate the candidate, promote it
        when allowed and write the replay report; prints what each step did."""
        from recsys.db.engine import get_engine
        from recsys.db.migrate import ensure_schema
        from recsys.loop import LoopConfig, improve
        from recsys.settings import get_settings

        settings = get_settings()
        ensure_schema(settings.resolved_database_url)
        config = LoopConfig.from_settings(
            settings,
            min_requests=min_requests,
            steps=steps,
            lr=lr,
            auto_promote=promote,
            replay=replay,
            device=device,
            progress=progress,
        )
        result = improve(config, settings=settings, engine=get_engine())
        typer.echo(json.dumps(result, indent=2, default=str))
