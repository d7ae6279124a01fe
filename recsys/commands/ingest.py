"""`recsys ingest PATH --format F`: load interactions (and items) into the database."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("ingest")
    def ingest(
        path: Path = typer.Argument(
            ..., help="a CSV / Parquet file, or a MovieLens / RecBole folder"
        ),
        fmt: str = typer.Option(
            "auto", "--format", "-f", help="auto | csv | parquet | movielens | recbole | amazon-seq"
        ),
        user_col: str = typer.Option("user_id", help="column with the user id"),
        item_col: str = typer.Option("item_id", help="column with the item id"),
        timestamp_col: str = typer.Option("timestamp", help="epoch number or ISO-8601 date"),
        timestamp_unit: str = typer.Option("s", help="unit of numeric timestamps: s | ms | us"),
        rating_col: str | None = typer.Option(None, help="column with the value (rating, ...)"),
        event_col: str | None = typer.Option(None, help="column with the event type"),
        event: str | None = typer.Option(
            None, help="event type when there is no --event-col (default: rating or interaction)"
        ),
        title_col: str | None = typer.Option(None, help="column with the item title"),
        text_col: str | None = typer.Option(None, help="column with the item description"),
        items: Path | None = typer.Option(
            None, help="separate item catalogue (CSV/Parquet) keyed by --item-col"
        ),
        separator: str = typer.Option(",", help="CSV field separator ('\\t' for tabs)"),
        source: str | None = typer.Option(
            None, help="name of this data source (part of the event id); default the file name"
        ),
        skip_bad: bool = typer.Option(
            False, "--skip-bad", help="load the good rows and report the bad ones (default: refuse)"
        ),
        chunk_rows: int = typer.Option(50_000, help="rows per chunk (memory stays bounded)"),
        progress: bool = typer.Option(True, help="show a progress bar"),
        until: datetime | None = typer.Option(
            None,
            formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"],
            help="leave out interactions at or after this UTC date (`recsys simulate` plays them)",
        ),
        report_json: Path | None = typer.Option(None, "--report", help="write the report as JSON"),
        url: str | None = typer.Option(
            None, "--url", help="database URL; default RECSYS_DATABASE_URL"
        ),
    ) -> None:
        """Load a file; re-loading the same file adds nothing. A file with bad rows is refused
        whole (nothing written) unless --skip-bad."""
        from recsys.db.engine import get_engine
        from recsys.db.migrate import ensure_schema
        from recsys.ingest import ColumnMap
        from recsys.ingest import ingest as run_ingest

        columns = ColumnMap(
            user=user_col,
            item=item_col,
            timestamp=timestamp_col,
            rating=rating_col,
            event=event_col,
            title=title_col,
            text=text_col,
            default_event=event,
            timestamp_unit=timestamp_unit,
        )
        ensure_schema(url)
        report = run_ingest(
            path,
            fmt,
            columns=columns,
            items_path=items,
            skip_bad=skip_bad,
            source=source,
            separator="\t" if separator in ("\\t", "tab") else separator,
            chunk_rows=chunk_rows,
            progress=progress,
            until=until.replace(tzinfo=UTC) if until else None,
            engine=get_engine(url),
        )
        typer.echo(report.summary())
        if report_json:
            report_json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
