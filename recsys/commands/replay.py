"""`recsys replay`: offline A/B replay of two rankers on logged traffic, with a report."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("replay")
    def replay_cmd(
        a: str | None = typer.Option(
            None,
            "--a",
            help="logged | retrieval | model spec (default: logged; retrieval with --episodes, "
            "whose built requests were never shown)",
        ),
        b: str = typer.Option("default", "--b", help="logged | retrieval | model spec"),
        limit: int | None = typer.Option(None, help="at most this many logged requests"),
        episodes: Path | None = typer.Option(
            None,
            "--episodes",
            help="replay this JSONL file of episodes (recsys index-episodes --users heldout) "
            "instead of the database's log",
        ),
        window_days: float = typer.Option(7.0, help="an outcome counts within this many days"),
        mode: str = typer.Option("incremental", help="ranking mode for model policies"),
        off_policy: bool = typer.Option(
            True, help="IPS/SNIPS of B sampling at T=1 (needs logged propensities)"
        ),
        slate_draws: int = typer.Option(
            16, min=0, max=1000, help="rankings sampled per policy for IIPS/RIPS (0: off)"
        ),
        logging_model: str | None = typer.Option(
            None, help="the policy that logged the traffic (default: A, or the settings' model)"
        ),
        out: Path = typer.Option(Path("var/replay"), help="folder for report.md/json/png"),
        device: str | None = typer.Option(None, help="auto | cpu | cuda (RECSYS_DEVICE)"),
        url: str | None = typer.Option(None, "--url", help="database URL"),
        progress: bool = typer.Option(
            True, help="ranking and sampling progress on stderr (bar, or a line every 30 s)"
        ),
    ) -> None:
        """Replay logged requests (impressions + the interaction that followed) through
        policies A and B; write a markdown report, JSON and a plot."""
        from recsys.db.engine import get_engine
        from recsys.db.migrate import ensure_schema
        from recsys.replay.run import ReplayConfig, run_replay

        ensure_schema(url)
        a = a or ("retrieval" if episodes is not None else "logged")
        config = ReplayConfig(a=a, b=b, limit=limit, episodes=episodes,
                              window_days=window_days, mode=mode,
                              off_policy=off_policy, slate_draws=slate_draws,
                              logging_model=logging_model, device=device, out=out,
                              progress=progress)  # fmt: skip
        report = run_replay(config, engine=get_engine(url))
        typer.echo(report.markdown(a, b))
        typer.echo(f"\nwritten: {out}/report.md, report.json, replay.png")
