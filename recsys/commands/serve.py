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
        """Serve the real-time API (docs/serving.md); the model loads once at start-up and a
        newly promoted version is picked up without a restart."""
        import logging

        import uvicorn

        from recsys.api import create_app
        from recsys.db.migrate import ensure_schema
        from recsys.logs import configure_logging
        from recsys.settings import get_settings

        settings = get_settings()
        update = {"host": host or settings.host, "port": port or settings.port}
        settings = settings.model_copy(update={**update, **({"model": model} if model else {})})
        configure_logging(settings)  # uvicorn's records go through it too (log_config=None)
        ensure_schema(settings.resolved_database_url)
        if not settings.api_keys_required():
            logging.getLogger("recsys.serve").warning(
                "API keys are off (bind %s; RECSYS_REQUIRE_API_KEY)", settings.host
            )
        uvicorn.run(
            create_app(settings=settings),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
            log_config=None,
            access_log=False,  # recsys.access logs each request instead (recsys.api.app)
            timeout_graceful_shutdown=30,  # in-flight requests finish; the batcher drains
        )
