"""`recsys serve`: the real-time ranking API (FastAPI under uvicorn)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        host: str | None = typer.Option(None, help="bind address (default RECSYS_HOST)"),
        port: int | None = typer.Option(None, help="port (default RECSYS_PORT)"),
        model: str | None = typer.Option(None, help="default | promoted | version | path"),
    ) -> None:
        """Serve POST /v1/rank; the model loads once at start-up."""
        import uvicorn

        from recsys.api import create_app
        from recsys.db.migrate import ensure_schema
        from recsys.settings import get_settings

        settings = get_settings()
        if model:
            settings = settings.model_copy(update={"model": model})
        ensure_schema()
        uvicorn.run(
            create_app(settings=settings),
            host=host or settings.host,
            port=port or settings.port,
            log_level=settings.log_level.lower(),
        )
